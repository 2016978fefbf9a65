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
    def build(cls, sentences: list[list[str]], min_freq: int = 2, max_size: int | None = None) -> Vocab:
        """``max_size``: at most this many entries, the four specials included (the most frequent tokens)."""
        counts = Counter(t for s in sentences for t in s)
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIALS),
                      key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max(max_size - len(SPECIALS), 0)]
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
    if not 0.0 <= heldout_fraction < 1.0:
        raise UserError(f"heldout fraction: expected a number in [0, 1), got {heldout_fraction!r}")
    by_src = group_references(pairs)
    sources = sorted(by_src)
    n_held = int(round(len(sources) * heldout_fraction)) if len(sources) > 1 else 0
    n_held = min(n_held, len(sources) - 1)
    held = set(random.Random(seed).sample(sources, n_held)) if n_held > 0 else set()
    train = [(s, t) for s, t in pairs if preprocess(s) not in held]
    heldout = [(s, by_src[s]) for s in sources if s in held]
    return train, heldout


def group_references(pairs) -> dict[str, list[str]]:
    """``{preprocessed source: [its targets in file order]}``: the translations of one source are its references."""
    by_src: dict[str, list[str]] = {}
    for src, tgt in pairs:
        by_src.setdefault(preprocess(src), []).append(tgt)
    return by_src


class WordSegmenter:
    """d2l's word tokens; ``join`` gives the preprocessed text back (lower case, a space before ``,.!?``)."""

    kind = "word"

    def split(self, text: str) -> list[str]:
        return tokenize(text)

    def join(self, tokens: list[str]) -> str:
        return " ".join(tokens)


SUBWORD_EXTRA = "pip install sentencepiece (or the package's [subword] extra)"


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise UserError(f"--subword sentencepiece needs sentencepiece, which is not installed: {SUBWORD_EXTRA}") \
            from None
    return sentencepiece


class SentencePieceSegmenter:
    """A sentencepiece model over preprocessed text (the same normalisation as the word level, so BLEU is computed
    on the same plain text either way). Its ids 0-3 are ``<pad> <bos> <eos> <unk>``, so :class:`Vocab` over its
    pieces maps piece <-> id exactly as the model does."""

    kind = "sentencepiece"

    def __init__(self, proto: bytes):
        self.proto = bytes(proto)
        self.sp = _sentencepiece().SentencePieceProcessor(model_proto=self.proto)

    @classmethod
    def train(cls, sentences: list[str], vocab_size: int) -> SentencePieceSegmenter:
        """A unigram model trained in memory on ``sentences`` (the training split only). ``vocab_size`` is an upper
        bound: a tiny corpus gets the pieces it has."""
        import io

        spm = _sentencepiece()
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter([preprocess(s) for s in sentences]), model_writer=model,
                vocab_size=vocab_size, model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                normalization_rule_name="identity", pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece=PAD,
                bos_piece=BOS, eos_piece=EOS, unk_piece=UNK, num_threads=1, minloglevel=2)
        except RuntimeError as e:
            raise UserError(f"sentencepiece training failed: {str(e).splitlines()[0]}") from None
        return cls(model.getvalue())

    def vocab(self) -> Vocab:
        return Vocab([self.sp.id_to_piece(i) for i in range(self.sp.get_piece_size())])

    def split(self, text: str) -> list[str]:
        return self.sp.encode(preprocess(text), out_type=str)

    def join(self, tokens: list[str]) -> str:
        return self.sp.decode_pieces(list(tokens))


def build_segmenters(kind: str, train_pairs, *, vocab_size: int | None, shared: bool = False):
    """``(source, target)`` segmenters for ``--subword kind``; sentencepiece models are trained on ``train_pairs``."""
    if kind == "word":
        return WordSegmenter(), WordSegmenter()
    if kind != "sentencepiece":
        raise UserError(f"subword: expected word or sentencepiece, got {kind!r}")
    size = vocab_size or 1000
    if shared:
        seg = SentencePieceSegmenter.train([s for s, _ in train_pairs] + [t for _, t in train_pairs], size)
        return seg, seg
    return (SentencePieceSegmenter.train([s for s, _ in train_pairs], size),
            SentencePieceSegmenter.train([t for _, t in train_pairs], size))


@dataclasses.dataclass
class HeldOut:
    """Held-out sources with all their references: ``items`` [(source text, [reference texts])], ``src`` / ``src_len``
    their ids (one row per source), ``pairs`` (src, src_len, tgt, tgt_len) one row per (source, reference)."""
    items: list
    src: torch.Tensor
    src_len: torch.Tensor
    pairs: tuple

    def __len__(self):
        return len(self.items)

    @classmethod
    def build(cls, items, src_seg, tgt_seg, src_vocab, tgt_vocab, num_steps) -> HeldOut:
        src, src_len = to_tensors([src_seg.split(s) for s, _ in items], src_vocab, num_steps)
        flat = [(s, r) for s, refs in items for r in refs]
        p_src, p_src_len = to_tensors([src_seg.split(s) for s, _ in flat], src_vocab, num_steps)
        p_tgt, p_tgt_len = to_tensors([tgt_seg.split(r) for _, r in flat], tgt_vocab, num_steps)
        return cls(list(items), src, src_len, (p_src, p_src_len, p_tgt, p_tgt_len))


@dataclasses.dataclass
class Corpus:
    src_vocab: Vocab
    tgt_vocab: Vocab
    src: torch.Tensor       # (N, num_steps) training sources
    src_len: torch.Tensor   # (N,)
    tgt: torch.Tensor       # (N, num_steps) training targets (ending with <eos> unless truncated)
    tgt_len: torch.Tensor   # (N,)
    dev: HeldOut            # validation every epoch, early stopping, the best checkpoint
    test: HeldOut           # the final report only (the dev set when the held-out set is not split)
    bad_lines: list
    src_seg: object = dataclasses.field(default_factory=WordSegmenter)
    tgt_seg: object = dataclasses.field(default_factory=WordSegmenter)
    fingerprint: str = ""   # sha256 of the pairs read, so a resumed run can tell the data changed


def _fingerprint(pairs) -> str:
    import hashlib

    h = hashlib.sha256()
    for s, t in pairs:
        h.update(s.encode() + b"\t" + t.encode() + b"\n")
    return h.hexdigest()


def load_corpus(path=None, *, num_steps: int = 10, min_freq: int = 2, heldout_fraction: float = 0.1,
                test_share: float = 0.0, seed: int = 0, bad_lines: str = "error", max_pairs: int | None = None,
                subword: str = "word", vocab_size: int | None = None, shared_vocab: bool = False,
                segmenters=None) -> Corpus:
    """Read, split and encode the corpus. ``test_share`` of the held-out sources (drawn with ``seed``) form the test
    set, the rest the dev set; 0 makes both the whole held-out set. ``segmenters``: ``(source, target)`` to reuse
    (a resumed run's), else built by ``subword`` on the training split."""
    if max_pairs is not None and max_pairs < 1:
        raise UserError(f"max_pairs: expected a positive number of pairs, got {max_pairs!r}")
    if not 0.0 <= test_share < 1.0:
        raise UserError(f"test_share: expected a number in [0, 1), got {test_share!r}")
    pairs, bad = read_pairs(path or DEFAULT_DATA, bad_lines=bad_lines)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    train, heldout = split_by_source(pairs, heldout_fraction=heldout_fraction, seed=seed)
    src_seg, tgt_seg = segmenters or build_segmenters(subword, train, vocab_size=vocab_size, shared=shared_vocab)
    src_tok = [src_seg.split(s) for s, _ in train]
    tgt_tok = [tgt_seg.split(t) for _, t in train]
    if src_seg.kind == "word":
        src_vocab = Vocab.build(src_tok, min_freq, vocab_size)
        tgt_vocab = Vocab.build(tgt_tok, min_freq, vocab_size)
    else:
        src_vocab, tgt_vocab = src_seg.vocab(), tgt_seg.vocab()
    src, src_len = to_tensors(src_tok, src_vocab, num_steps)
    tgt, tgt_len = to_tensors(tgt_tok, tgt_vocab, num_steps)
    n_test = round(len(heldout) * test_share) if len(heldout) > 1 else 0
    test_idx = set(random.Random(seed + 1).sample(range(len(heldout)), n_test)) if n_test else set()
    dev_items = [h for i, h in enumerate(heldout) if i not in test_idx]
    test_items = [h for i, h in enumerate(heldout) if i in test_idx] or dev_items
    dev = HeldOut.build(dev_items, src_seg, tgt_seg, src_vocab, tgt_vocab, num_steps)
    test = dev if test_items is dev_items else HeldOut.build(test_items, src_seg, tgt_seg, src_vocab, tgt_vocab,
                                                             num_steps)
    return Corpus(src_vocab, tgt_vocab, src, src_len, tgt, tgt_len, dev, test, bad, src_seg, tgt_seg,
                  _fingerprint(pairs))


def _even_shards(batches: list, rank: int, world_size: int) -> list:
    """Rank ``rank``'s share of ``batches`` (every ``world_size``-th); all ranks get the same number of batches
    (DDP needs equal step counts), the short ones wrapping round to the first batches."""
    per_rank = -(-len(batches) // world_size)
    padded = batches + batches[:per_rank * world_size - len(batches)]
    return padded[rank::world_size]


def shard_batches(n: int, batch_size: int, *, epoch: int, seed: int, rank: int = 0, world_size: int = 1,
                  lengths: torch.Tensor | None = None, batch_tokens: int | None = None):
    """Index batches of one epoch for one rank: the same seeded permutation on every rank, rank ``r`` takes every
    ``world_size``-th example; every rank gets the same number of batches (DDP needs equal step counts), so the
    permutation is padded by wrapping around.

    With ``lengths`` (e.g. the target valid lengths), examples are bucketed: within pools of 16 batches, sorted by
    length, cut into batches, and the batches shuffled; a batch of short sentences then costs only as many decoder
    steps as its longest (the training loop trims the padding).

    With ``batch_tokens`` (needs ``lengths``: the tokens an example costs), a batch holds as many examples as fit in
    ``batch_tokens`` counted as rows x its longest example (the padded size; at least one example a batch); the
    pools are sorted by length the same way, then the batches are dealt out to the ranks."""
    if batch_tokens is None and batch_size < 1:
        raise ValueError(f"shard_batches: batch_size: expected an integer >= 1, got {batch_size!r}")
    if batch_tokens is not None and (batch_tokens < 1 or lengths is None):
        raise ValueError(f"shard_batches: batch_tokens: expected an integer >= 1 with lengths, got {batch_tokens!r}"
                         f"{' and no lengths' if lengths is None else ''}")
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(n, generator=g)
    if batch_tokens is not None:
        batches = []
        pool = max(batch_tokens // max(int(lengths.float().mean()), 1), 1) * 16
        for i in range(0, n, pool):
            chunk = perm[i:i + pool]
            chunk = chunk[torch.argsort(lengths[chunk], stable=True)].tolist()
            start = 0
            for j in range(1, len(chunk) + 1):  # sorted ascending: the last example is the longest
                if j == len(chunk) or (j + 1 - start) * int(lengths[chunk[j]]) > batch_tokens:
                    batches.append(torch.tensor(chunk[start:j], dtype=torch.long))
                    start = j
        order = torch.randperm(len(batches), generator=g).tolist()
        return _even_shards([batches[k] for k in order], rank, world_size)
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
