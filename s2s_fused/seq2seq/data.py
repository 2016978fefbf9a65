"""The parallel corpus: reading, d2l preprocessing, vocabularies, padding, the held-out split and batches.

File format (the manythings.org/Tatoeba one): one pair per line, ``source<TAB>target[<TAB>attribution]``.
Preprocessing follows d2l (``chapter_recurrent-modern/machine-translation-and-dataset``): non-breaking spaces become
spaces, text is lower-cased, a space is put before ``, . ! ?`` and tokens are split on spaces.
"""
from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path

import torch

from .errors import UserError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # their ids are 0, 1, 2, 3 in every vocabulary

DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "tatoeba-eng-fra-5k.txt"


def preprocess(text: str) -> str:
    """d2l's normalisation: NBSPs to spaces, lower case, a space before ``,.!?`` (unless one is there)."""
    text = text.replace("\u202f", " ").replace("\xa0", " ").lower()
    out = []
    for i, ch in enumerate(text):
        if ch in ",.!?" and i > 0 and text[i - 1] != " ":
            out.append(" ")
        out.append(ch)
    return "".join(out).strip()


def tokenize(text: str) -> list[str]:
    return [t for t in preprocess(text).split(" ") if t]


@dataclasses.dataclass
class BadLine:
    lineno: int
    reason: str
    text: str


def read_pairs(path, *, bad_lines: str = "error") -> tuple[list[tuple[str, str]], list[BadLine]]:
    """Read ``(source, target)`` pairs. A malformed line (fewer than 2 tab-separated fields, an empty source or
    target, text that is not UTF-8) is reported with its line number: ``bad_lines="error"`` raises
    :class:`UserError` naming the first ones, ``"skip"`` leaves them out and returns them in the second list."""
    if bad_lines not in ("error", "skip"):
        raise ValueError(f"bad_lines: expected 'error' or 'skip', got {bad_lines!r}")
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        raise UserError(f"data path is a directory, expected a file: {path}")
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError(f"data file is empty: {path}")
    pairs, bad = [], []
    for lineno, line_bytes in enumerate(raw.split(b"\n"), start=1):
        line_bytes = line_bytes.rstrip(b"\r")
        if not line_bytes.strip() and b"\t" not in line_bytes:
            continue  # blank lines (e.g. the file's last) carry nothing
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append(BadLine(lineno, f"not UTF-8 ({e.reason} at byte {e.start})", repr(line_bytes[:60])))
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            bad.append(BadLine(lineno, "expected 'source<TAB>target[<TAB>attribution]', found no tab", line[:60]))
            continue
        src, tgt = fields[0].strip(), fields[1].strip()
        if not tokenize(src) or not tokenize(tgt):
            bad.append(BadLine(lineno, f"empty {'source' if not tokenize(src) else 'target'}", line[:60]))
            continue
        pairs.append((src, tgt))
    if bad and bad_lines == "error":
        shown = "; ".join(f"line {b.lineno}: {b.reason}" for b in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(f"{path}: {len(bad)} malformed line(s): {shown}{more}; fix them or pass --bad-lines skip")
    if not pairs:
        raise UserError(f"{path}: no usable sentence pairs")
    return pairs, bad


class Vocab:
    """Token <-> id. Ids 0-3 are ``<pad> <bos> <eos> <unk>``; then tokens seen at least ``min_freq`` times, most
    frequent first (ties alphabetical, so the order is deterministic)."""

    def __init__(self, tokens: list[str]):
        if list(tokens[:len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"tokens: expected to start with {list(SPECIALS)}, got {list(tokens[:4])}")
        self.idx_to_token = list(tokens)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}

    @classmethod
    def build(cls, sentences: list[list[str]], min_freq: int = 2) -> "Vocab":
        counts = Counter(t for s in sentences for t in s)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))
        return cls(list(SPECIALS) + kept)

    def __len__(self):
        return len(self.idx_to_token)

    pad, bos, eos, unk = 0, 1, 2, 3

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.token_to_idx.get(t, self.unk) for t in tokens]

    def decode(self, ids) -> list[str]:
        """Ids to tokens, stopping at ``<eos>`` and dropping ``<bos>``/``<pad>``."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            out.append(self.idx_to_token[i] if 0 <= i < len(self.idx_to_token) else UNK)
        return out


def truncate_pad(ids: list[int], num_steps: int, pad: int) -> list[int]:
    return ids[:num_steps] if len(ids) > num_steps else ids + [pad] * (num_steps - len(ids))


def to_tensors(token_lists: list[list[str]], vocab: Vocab, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append ``<eos>``, truncate/pad to ``num_steps``: returns ids ``(N, num_steps)`` and valid lengths ``(N,)``."""
    rows = [truncate_pad(vocab.encode(t) + [vocab.eos], num_steps, vocab.pad) for t in token_lists]
    x = torch.tensor(rows, dtype=torch.long).reshape(len(rows), num_steps)
    return x, (x != vocab.pad).sum(1)


def split_by_source(pairs, *, heldout_fraction: float = 0.1, seed: int = 0):
    """Split pairs so that a held-out English source is never seen in training: ``heldout_fraction`` of the
    distinct (preprocessed) sources, drawn with a fixed seed, go to the held-out set with all their translations.
    Returns ``(train_pairs, heldout)`` where ``heldout`` is ``[(source, [references...]), ...]``."""
    by_src: dict[str, list[str]] = {}
    for src, tgt in pairs:
        by_src.setdefault(preprocess(src), []).append(tgt)
    sources = sorted(by_src)
    n_held = int(round(len(sources) * heldout_fraction)) if len(sources) > 1 else 0
    n_held = min(n_held, len(sources) - 1)
    held = set(random.Random(seed).sample(sources, n_held)) if n_held > 0 else set()
    train = [(s, t) for s, t in pairs if preprocess(s) not in held]
    heldout = [(s, by_src[s]) for s in sources if s in held]
    return train, heldout


@dataclasses.dataclass
class Corpus:
    src_vocab: Vocab
    tgt_vocab: Vocab
    src: torch.Tensor       # (N, num_steps) training sources
    src_len: torch.Tensor   # (N,)
    tgt: torch.Tensor       # (N, num_steps) training targets (ending with <eos> unless truncated)
    tgt_len: torch.Tensor   # (N,)
    heldout: list           # [(source text, [reference texts])]
    heldout_src: torch.Tensor
    heldout_src_len: torch.Tensor
    heldout_pairs: tuple    # (src, src_len, tgt, tgt_len) of every held-out pair, for the held-out perplexity
    bad_lines: list


def load_corpus(path=None, *, num_steps: int = 10, min_freq: int = 2, heldout_fraction: float = 0.1,
                seed: int = 0, bad_lines: str = "error", max_pairs: int | None = None) -> Corpus:
    pairs, bad = read_pairs(path or DEFAULT_DATA, bad_lines=bad_lines)
    if max_pairs:
        pairs = pairs[:max_pairs]
    train, heldout = split_by_source(pairs, heldout_fraction=heldout_fraction, seed=seed)
    src_tok = [tokenize(s) for s, _ in train]
    tgt_tok = [tokenize(t) for _, t in train]
    src_vocab, tgt_vocab = Vocab.build(src_tok, min_freq), Vocab.build(tgt_tok, min_freq)
    src, src_len = to_tensors(src_tok, src_vocab, num_steps)
    tgt, tgt_len = to_tensors(tgt_tok, tgt_vocab, num_steps)
    h_src, h_src_len = to_tensors([tokenize(s) for s, _ in heldout], src_vocab, num_steps)
    flat = [(s, r) for s, refs in heldout for r in refs]
    hp_src, hp_src_len = to_tensors([tokenize(s) for s, _ in flat], src_vocab, num_steps)
    hp_tgt, hp_tgt_len = to_tensors([tokenize(r) for _, r in flat], tgt_vocab, num_steps)
    return Corpus(src_vocab, tgt_vocab, src, src_len, tgt, tgt_len, heldout, h_src, h_src_len,
                  (hp_src, hp_src_len, hp_tgt, hp_tgt_len), bad)


def shard_batches(n: int, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                  lengths: torch.Tensor | None = None):
    """Index batches of one epoch for one rank: the same seeded permutation on every rank, rank ``r`` takes every
    ``world_size``-th example; every rank gets the same number of batches (DDP needs equal step counts), so the
    permutation is padded by wrapping around.

    With ``lengths`` (e.g. the target valid lengths), examples are bucketed: within pools of 16 batches, sorted by
    length, cut into batches, and the batches shuffled; a batch of short sentences then costs only as many decoder
    steps as its longest (the training loop trims the padding)."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = -(-n // world_size)
    total = per_rank * world_size
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    mine = perm[rank::world_size]
    if lengths is None:
        return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    pool = batch_size * 16
    batches = []
    for i in range(0, len(mine), pool):
        chunk = mine[i:i + pool]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[k] for k in order]
