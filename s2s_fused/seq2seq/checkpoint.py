"""Checkpoints that ``torch.load(weights_only=True)`` reads: only tensors, strings, numbers, lists, tuples and dicts.

``<dir>/checkpoint.pt`` (the best model by dev BLEU) = {"format": "s2s_fused.seq2seq", "format_version": 2,
"s2s_fused_version": str, "config": {model config}, "src_vocab": [tokens], "tgt_vocab": [tokens],
"segmenter": {"kind": "word"} or {"kind": "sentencepiece", "shared": bool, "src": uint8 tensor (the model proto),
"tgt": uint8 tensor}, "model": state_dict (CPU tensors), "info": {plain metadata}, "checksum": sha256 hex}.
``<dir>/last.pt`` has the same entries plus "train_state" (optimizer, scheduler, RNG states, epoch and position
in it, history, best weights, the run's options), which :mod:`.train` writes and reads.

The checksum is a sha256 over everything else in the file, tensors' bytes included, walked in a fixed order; a
file whose content differs from what was saved (a flipped byte in a tensor, a truncated copy) is refused.
Every file is written to a temporary file in the same folder and renamed over the old one, so a reader (or a run
killed while saving) never sees a half-written checkpoint.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch

from .data import SentencePieceSegmenter, Vocab, WordSegmenter
from .errors import UserError
from .model import Seq2Seq

FORMAT = "s2s_fused.seq2seq"
FORMAT_VERSION = 2
FILENAME = "checkpoint.pt"
LAST = "last.pt"
REQUIRED = ("config", "src_vocab", "tgt_vocab", "segmenter", "model", "checksum")


def _digest_into(h, obj) -> None:
    """Feed ``obj`` to ``h`` in a fixed order: dicts by key (as text), sequences in order, tensors as dtype, shape
    and raw bytes; types are part of the digest, so 1 and 1.0 or a list and a tuple differ."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{type(k).__name__}:{k!s}".encode())
            _digest_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _digest_into(h, v)
    elif isinstance(obj, float) and math.isnan(obj):
        h.update(b"Fnan")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def checksum(obj: dict) -> str:
    """sha256 of a checkpoint's entries other than "checksum" itself."""
    h = hashlib.sha256()
    _digest_into(h, {k: v for k, v in obj.items() if k != "checksum"})
    return h.hexdigest()


def atomic_save(obj, path: Path) -> Path:
    """``torch.save`` to a temporary file in ``path``'s folder, flushed to disk, then renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _proto_tensor(seg) -> torch.Tensor:
    return torch.frombuffer(bytearray(seg.proto), dtype=torch.uint8)


def segmenter_entry(segmenters) -> dict:
    src, tgt = segmenters or (WordSegmenter(), WordSegmenter())
    if src.kind == "word":
        return {"kind": "word"}
    return {"kind": "sentencepiece", "shared": src is tgt, "src": _proto_tensor(src), "tgt": _proto_tensor(tgt)}


def segmenters_of(obj: dict, path="checkpoint"):
    """The ``(source, target)`` segmenters a checkpoint was trained with."""
    entry = obj["segmenter"]
    kind = entry.get("kind") if isinstance(entry, dict) else None
    if kind == "word":
        return WordSegmenter(), WordSegmenter()
    if kind != "sentencepiece" or not all(isinstance(entry.get(k), torch.Tensor) for k in ("src", "tgt")):
        raise UserError(f"{path}: unknown or incomplete 'segmenter' entry (kind {kind!r})")
    src = SentencePieceSegmenter(entry["src"].numpy().tobytes())
    return (src, src) if entry.get("shared") else (src, SentencePieceSegmenter(entry["tgt"].numpy().tobytes()))


def save_checkpoint(out_dir, model, src_vocab: Vocab, tgt_vocab: Vocab, info: dict | None = None, *,
                    segmenters=None, train_state: dict | None = None, filename: str = FILENAME) -> Path:
    """Write ``out_dir/filename`` atomically, with its checksum; returns its path."""
    from .. import __version__

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "s2s_fused_version": __version__,
        "config": dict(model.config),
        "src_vocab": list(src_vocab.idx_to_token),
        "tgt_vocab": list(tgt_vocab.idx_to_token),
        "segmenter": segmenter_entry(segmenters),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "info": dict(info or {}),
    }
    if train_state is not None:
        obj["train_state"] = train_state
    obj["checksum"] = checksum(obj)
    return atomic_save(obj, out_dir / filename)


def read_checkpoint(path, *, default_name: str = FILENAME) -> tuple[dict, Path]:
    """Load and check a checkpoint file (or ``default_name`` in a folder): format, version, the entries a model
    needs and their types, and the checksum. Returns ``(obj, file path)``; any problem is a one-line UserError
    naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise UserError(f"{path} is not a readable s2s_fused checkpoint ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not an s2s_fused seq2seq checkpoint")
    if obj.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format version {obj.get('format_version')!r} (written by s2s_fused "
                        f"{obj.get('s2s_fused_version', '?')}), this version reads format {FORMAT_VERSION}; "
                        "retrain with this version")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise UserError(f"{path}: incomplete checkpoint, missing {', '.join(repr(k) for k in missing)}")
    if obj["checksum"] != checksum(obj):
        raise UserError(f"{path}: checksum mismatch, the file is corrupted (its content differs from what was "
                        "saved); use another checkpoint")
    kinds = {"config": dict, "src_vocab": list, "tgt_vocab": list, "model": dict, "segmenter": dict}
    for key, kind in kinds.items():
        if not isinstance(obj[key], kind):
            raise UserError(f"{path}: '{key}' is a {type(obj[key]).__name__}, expected a {kind.__name__}")
    return obj, path


def model_from(obj: dict, path, *, backend: str = "fused", device="cpu"):
    """``(model in eval mode, src_vocab, tgt_vocab)`` from a checked checkpoint object."""
    try:
        src_vocab, tgt_vocab = Vocab(obj["src_vocab"]), Vocab(obj["tgt_vocab"])
    except (ValueError, TypeError) as e:
        raise UserError(f"{path}: bad vocabulary ({e})") from None
    cfg = obj["config"]
    for key, vocab in (("src_vocab_size", src_vocab), ("tgt_vocab_size", tgt_vocab)):
        if cfg.get(key) != len(vocab):
            raise UserError(f"{path}: config {key} {cfg.get(key)!r} does not match its vocabulary of {len(vocab)}")
    try:
        model = Seq2Seq(cfg, backend=backend)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: bad model config ({type(e).__name__}: {e})") from None
    try:
        model.load_state_dict(obj["model"], strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the model config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), src_vocab, tgt_vocab


def load_checkpoint(path, *, backend: str = "fused", device="cpu"):
    """``path``: a checkpoint directory or file. Returns ``(model in eval mode, src_vocab, tgt_vocab, obj)``; the
    segmenters are :func:`segmenters_of` ``(obj)``."""
    obj, path = read_checkpoint(path)
    segmenters_of(obj, path)  # a bad segmenter entry is refused now, not at the first sentence
    return (*model_from(obj, path, backend=backend, device=device), obj)


def average_checkpoints(paths, out_dir) -> Path:
    """Average the weights of checkpoints of one model (same config, vocabularies and segmenters), in float64, into
    ``out_dir/checkpoint.pt``."""
    if len(paths) < 1:
        raise UserError("average: expected at least one checkpoint")
    objs = [read_checkpoint(p) for p in paths]
    first, first_path = objs[0]
    for obj, path in objs[1:]:
        for key in ("config", "src_vocab", "tgt_vocab"):
            if obj[key] != first[key]:
                raise UserError(f"{path}: its {key} differs from {first_path}'s; only checkpoints of one model "
                                "can be averaged")
        if checksum({"s": obj["segmenter"]}) != checksum({"s": first["segmenter"]}):
            raise UserError(f"{path}: its segmenter differs from {first_path}'s")
        if list(obj["model"]) != list(first["model"]):
            raise UserError(f"{path}: its weights have other names than {first_path}'s")
    model, src_vocab, tgt_vocab = model_from(first, first_path)
    avg = {}
    for k, v in first["model"].items():
        if v.is_floating_point():
            total = sum(obj["model"][k].double() for obj, _ in objs)
            avg[k] = (total / len(objs)).to(v.dtype)
        else:
            avg[k] = v
    model.load_state_dict(avg, strict=True)
    info = {"averaged": [str(p) for _, p in objs]}
    return save_checkpoint(out_dir, model, src_vocab, tgt_vocab, info, segmenters=segmenters_of(first, first_path))
