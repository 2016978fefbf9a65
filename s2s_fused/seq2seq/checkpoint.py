"""Checkpoints that ``torch.load(weights_only=True)`` reads: only tensors, strings, numbers, lists and dicts.

``<dir>/checkpoint.pt`` = {"format": "s2s_fused.seq2seq", "format_version": 1, "s2s_fused_version": str,
"config": {model config}, "src_vocab": [tokens], "tgt_vocab": [tokens], "model": state_dict (CPU tensors),
"info": {plain metadata}}.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .data import Vocab
from .errors import UserError
from .model import Seq2Seq

FORMAT = "s2s_fused.seq2seq"
FORMAT_VERSION = 1
FILENAME = "checkpoint.pt"


def save_checkpoint(out_dir, model, src_vocab: Vocab, tgt_vocab: Vocab, info: dict | None = None) -> Path:
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
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "info": dict(info or {}),
    }
    path = out_dir / FILENAME
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # a reader never sees a half-written checkpoint
    return path


def load_checkpoint(path, *, backend: str = "fused", device="cpu"):
    """``path``: a checkpoint directory or file. Returns ``(model in eval mode, src_vocab, tgt_vocab, obj)``."""
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
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
    model = Seq2Seq(obj["config"], backend=backend)
    try:
        model.load_state_dict(obj["model"], strict=True)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not match the model config ({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    return model, Vocab(obj["src_vocab"]), Vocab(obj["tgt_vocab"]), obj
