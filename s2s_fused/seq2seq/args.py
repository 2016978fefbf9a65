"""The ``python -m s2s_fused train`` command's options."""
from __future__ import annotations

import argparse
from pathlib import Path

from .model import ATTENTIONS, BACKENDS, CELLS, DEFAULT_CONFIG, SCORES

DEFAULTS = dict(epochs=20, batch_size=64, lr=0.005, clip=1.0, min_freq=1, heldout=0.1, seed=0, beam=4,
                compare_steps=20)


def add_arguments(p) -> None:
    c = DEFAULT_CONFIG
    p.add_argument("--cell", choices=CELLS, default=c["cell"], help="recurrent cell (default: %(default)s)")
    p.add_argument("--attention", choices=ATTENTIONS, default=c["attention"],
                   help="none: d2l context concatenation; bahdanau: additive; luong: dot/general "
                        "(default: %(default)s)")
    p.add_argument("--score", choices=SCORES, default=c["score"], help="Luong score (default: %(default)s)")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=c["bidirectional"],
                   help="bidirectional encoder, final states joined by a linear layer into the decoder's "
                        "(default: %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, default="fused",
                   help="fused: s2s_fused modules (op backend chosen automatically; or name one: cpu, cuda, "
                        "triton, reference); torch: torch.nn + eager loss and beam search (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--clip", type=float, default=DEFAULTS["clip"], help="gradient-norm clipping (0: off)")
    p.add_argument("--embed-size", type=int, default=c["embed_size"])
    p.add_argument("--hidden-size", type=int, default=c["hidden_size"])
    p.add_argument("--num-layers", type=int, default=c["num_layers"])
    p.add_argument("--dropout", type=float, default=c["dropout"])
    p.add_argument("--num-steps", type=int, default=c["num_steps"], help="truncate/pad length in tokens")
    p.add_argument("--min-freq", type=int, default=DEFAULTS["min_freq"],
                   help="keep tokens seen at least this often in training (default: %(default)s; 2, d2l's, turns "
                        "many of this small corpus's words into <unk>: ~8 BLEU lower here)")
    p.add_argument("--heldout", type=float, default=DEFAULTS["heldout"],
                   help="fraction of distinct English sources held out (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--beam", type=int, default=DEFAULTS["beam"], help="beam size for the beam-search report")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data", type=Path, default=None,
                   help="tab-separated source<TAB>target[<TAB>...] file (default: the shipped Tatoeba eng-fra 5k)")
    p.add_argument("--bad-lines", choices=("error", "skip"), default="error",
                   help="malformed data lines: reject the file (error) or skip them with a warning")
    p.add_argument("--max-pairs", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--out", type=Path, default=Path("runs/latest"), help="checkpoint/report folder")
    p.add_argument("--compare-steps", type=int, default=DEFAULTS["compare_steps"],
                   help="timed training steps per backend for the fused vs torch comparison (0: skip)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (default 0: 1 on CPU, as the per-step ops of this model are too "
                        "small to gain from intra-op threads and a shared machine makes them spin)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
