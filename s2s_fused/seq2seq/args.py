"""The seq2seq commands' options, and the argparse ``type=`` validators that turn a mistyped value into argparse's
one-line usage error (exit status 2) before anything runs."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .model import ATTENTIONS, BACKENDS, CELLS, DEFAULT_CONFIG, SCORES

LR_SCHEDULES = ("constant", "plateau", "warmup-inverse-sqrt")
SUBWORDS = ("word", "sentencepiece")

# Chosen by measurement on the shipped corpus (README, "Results"): greedy dev BLEU (130 sources) still climbs until
# epoch ~35, in swings of up to 5 points from one epoch to the next (dev loss bottoms out at epoch ~7, but BLEU is
# what is kept). Halving the lr after 3 epochs without a better dev BLEU scored best. Patience 5 stopped that run at
# epoch 24 (a 5-epoch dip; test BLEU 19.1 / 22.1 beam-4 instead of 27.6 / 31.3), so it is 8.
DEFAULTS = dict(epochs=40, batch_size=64, lr=0.005, clip=1.0, min_freq=1, heldout=0.1, test_share=0.5, seed=0,
                beam=4, compare_steps=20, patience=8, lr_schedule="plateau", warmup_steps=200, label_smoothing=0.0)


def _number(kind, text, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def int_at_least(low: int):
    """An integer >= ``low``."""
    def check(text):
        v = _number(int, text, f"an integer >= {low}")
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return v
    check.__name__ = f"integer >= {low}"
    return check


def float_in(low: float, high: float | None = None, *, low_open=False, high_open=True):
    """A finite float in the interval [low, high) (bounds open or closed as asked; ``high=None``: unbounded)."""
    lo_b, hi_b = "(" if low_open else "[", ")" if high_open else "]"
    what = f"a finite number > {low}" if high is None and low_open else (
        f"a finite number >= {low}" if high is None else f"a number in {lo_b}{low}, {high}{hi_b}")

    def check(text):
        v = _number(float, text, what)
        if v < low or (low_open and v == low) or (high is not None and (v > high or (high_open and v == high))):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    check.__name__ = what
    return check


positive_int, nonneg_int = int_at_least(1), int_at_least(0)
positive_float, nonneg_float = float_in(0.0, low_open=True), float_in(0.0)
fraction = float_in(0.0, 1.0, low_open=True, high_open=True)   # (0, 1)
probability = float_in(0.0, 1.0)                               # [0, 1)


def existing_file(text):
    """A path to a readable file; ``-`` (stdin) is allowed where the caller says so."""
    p = Path(text)
    if text != "-" and not p.is_file():
        raise argparse.ArgumentTypeError(f"expected a file, got {text!r} ({'a folder' if p.is_dir() else 'not found'})")
    return p if text != "-" else text


# The options that --resume takes from the command line; every other one comes from the saved run and may only be
# repeated with the same value (a different one would silently not apply).
RESUMABLE_OVERRIDES = ("epochs", "patience", "keep_last", "no_progress", "compare_steps", "threads", "beam",
                       "resume", "out")


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
    p.add_argument("--tie-embeddings", action="store_true",
                   help="the decoder's output layer shares its input embedding matrix (needs --embed-size equal "
                        "to --hidden-size)")
    p.add_argument("--backend", choices=BACKENDS, default="fused",
                   help="fused: s2s_fused modules (op backend chosen automatically; or name one: cpu, cuda, "
                        "triton, reference); torch: torch.nn + eager loss and beam search (default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=DEFAULTS["epochs"],
                   help="most epochs to train (default: %(default)s)")
    p.add_argument("--patience", type=nonneg_int, default=DEFAULTS["patience"],
                   help="stop after this many epochs without a better dev BLEU (0: off; default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULTS["batch_size"])
    p.add_argument("--batch-tokens", type=positive_int, default=None,
                   help="batches of at most N source+target tokens (length-bucketed) instead of --batch-size")
    p.add_argument("--lr", type=positive_float, default=DEFAULTS["lr"])
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=DEFAULTS["lr_schedule"],
                   help="constant; plateau: halve the lr when dev BLEU does not improve for an epoch; "
                        "warmup-inverse-sqrt: linear warm-up over --warmup-steps, then lr*sqrt(warmup/step) "
                        "(default: %(default)s)")
    p.add_argument("--warmup-steps", type=positive_int, default=DEFAULTS["warmup_steps"],
                   help="warm-up steps of --lr-schedule warmup-inverse-sqrt (default: %(default)s)")
    p.add_argument("--label-smoothing", type=probability, default=DEFAULTS["label_smoothing"],
                   help="label smoothing of the training loss, in [0, 1) (default: %(default)s)")
    p.add_argument("--clip", type=nonneg_float, default=DEFAULTS["clip"], help="gradient-norm clipping (0: off)")
    p.add_argument("--embed-size", type=positive_int, default=c["embed_size"])
    p.add_argument("--hidden-size", type=positive_int, default=c["hidden_size"])
    p.add_argument("--num-layers", type=positive_int, default=c["num_layers"])
    p.add_argument("--dropout", type=probability, default=c["dropout"])
    p.add_argument("--num-steps", type=positive_int, default=c["num_steps"], help="truncate/pad length in tokens")
    p.add_argument("--min-freq", type=positive_int, default=DEFAULTS["min_freq"],
                   help="word vocabulary: keep tokens seen at least this often in training (default: %(default)s; "
                        "2, d2l's, turns many of this small corpus's words into <unk>: ~8 BLEU lower here)")
    p.add_argument("--subword", choices=SUBWORDS, default="word",
                   help="word: d2l's word tokens; sentencepiece: a unigram model trained on the training split "
                        "(needs the [subword] extra) (default: %(default)s)")
    p.add_argument("--vocab-size", type=int_at_least(8), default=None,
                   help="vocabulary size per language (sentencepiece: its model's size, default 1000; word: keep "
                        "the most frequent, default all)")
    p.add_argument("--shared-vocab", action="store_true",
                   help="sentencepiece: one model and vocabulary trained on both languages")
    p.add_argument("--heldout", type=fraction, default=DEFAULTS["heldout"],
                   help="fraction of distinct English sources held out, in (0, 1) (default: %(default)s)")
    p.add_argument("--test-share", type=probability, default=DEFAULTS["test_share"],
                   help="share of the held-out sources kept as the test set, never used for model selection; the "
                        "rest is the dev set (0: test on the dev set) (default: %(default)s)")
    p.add_argument("--seed", type=nonneg_int, default=DEFAULTS["seed"])
    p.add_argument("--beam", type=positive_int, default=DEFAULTS["beam"],
                   help="beam size for the test report (default: %(default)s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data", type=Path, default=None,
                   help="tab-separated source<TAB>target[<TAB>...] file (default: the shipped Tatoeba eng-fra 5k)")
    p.add_argument("--bad-lines", choices=("error", "skip"), default="error",
                   help="malformed data lines: reject the file (error) or skip them with a warning")
    p.add_argument("--max-pairs", type=positive_int, default=None, help="use only the first N pairs")
    p.add_argument("--out", type=Path, default=Path("runs/latest"),
                   help="output folder: checkpoint.pt (best), last.pt, report.json, loss.png (default: %(default)s)")
    p.add_argument("--resume", type=Path, default=None,
                   help="continue the run saved in DIR/last.pt (its options; --epochs, --patience may change); "
                        "writes to DIR unless --out is given")
    p.add_argument("--keep-last", type=nonneg_int, default=0,
                   help="also keep the last K epochs' weights as epoch-N.pt, e.g. for average (default: 0)")
    p.add_argument("--compare-steps", type=nonneg_int, default=DEFAULTS["compare_steps"],
                   help="timed training steps per backend for the fused vs torch comparison (0: skip)")
    p.add_argument("--threads", type=nonneg_int, default=0,
                   help="CPU threads for torch (default 0: 1 on CPU, as the per-step ops of this model are too "
                        "small to gain from intra-op threads and a shared machine makes them spin)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def explicit_options(parser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option of ``parser`` written out in ``argv`` (``--opt value`` or ``--opt=value``)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {a.dest for a in parser._actions if given & set(a.option_strings)}
