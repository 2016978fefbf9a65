"""Every CUDA kernel of the package once, forward and backward, on small odd shapes: the program that
benchmarks/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck). Cells (fused small-batch step and the
GEMM + pointwise path), layers (per-step and persistent; LSTM, GRU, GRU reset_before), both
directions in one op (per-step and persistent), masked cross-entropy (warp- and block-per-row, vectorized or not)
and its linear variant, beam-search top-k (chunk + merge; the exact path above k = 64), in every dtype each takes.

Each case prints a line as it finishes, so a run cut short shows how far it got; any exception fails the run.
Outputs are only checked for what a sanitizer cannot see (finite, where they must be: not beam scores, -inf for
empty candidates); the tests compare them with the reference.

    python benchmarks/gpu_sanitize.py [--device cpu]     (cpu: the same sequence on the CPU kernels, a dry run)
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import s2s_fused  # noqa: E402
from s2s_fused.ops.rnn_layer import gru_layer_bidir, lstm_layer_bidir  # noqa: E402

FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


@contextlib.contextmanager
def compiled_switch(name: str):
    """A switch of the compiled library (read from the environment once per process) turned on for the block."""
    ext = s2s_fused.backend._extension()
    previous = ext._set_switch(name, True)
    try:
        yield
    finally:
        ext._set_switch(name, previous)


class Runner:
    def __init__(self, device: torch.device):
        self.device, self.backend = device, ("cuda" if device.type == "cuda" else "cpu")
        self.gen = torch.Generator().manual_seed(0)
        self.count = 0

    def randn(self, *shape, dtype=torch.float32, scale=1.0, grad=False):
        t = (torch.randn(*shape, generator=self.gen, dtype=torch.float64) * scale).to(self.device, dtype)
        return t.requires_grad_(grad)

    def case(self, name, fn, finite=True):
        t0 = time.perf_counter()
        outs = fn()
        loss = sum((o.float() * torch.randn(o.shape, generator=self.gen).to(self.device)).sum()
                   for o in outs if o.is_floating_point() and o.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        for o in outs if finite else ():
            if o.is_floating_point() and not torch.isfinite(o).all():
                raise RuntimeError(f"{name}: non-finite output")
        self.count += 1
        print(f"ok {time.perf_counter() - t0:6.2f} s  {name}", flush=True)

    # ------------------------------------------------------------------------------------------------- cells
    def cells(self):
        for dtype in FLOATS:
            for B in (3, 37):  # B <= 32: the fused step kernel (not float64); 37: cuBLAS + pointwise kernels
                for kind in ("lstm", "gru", "gru_rb"):
                    G, I, H = (4 if kind == "lstm" else 3), 7, 33
                    x, h, c = (self.randn(B, n, dtype=dtype, grad=True) for n in (I, H, H))
                    w_ih, w_hh = self.randn(G * H, I, dtype=dtype, scale=0.3, grad=True), \
                        self.randn(G * H, H, dtype=dtype, scale=0.3, grad=True)
                    b_ih, b_hh = self.randn(G * H, dtype=dtype, grad=True), self.randn(G * H, dtype=dtype, grad=True)
                    if kind == "lstm":
                        fn = lambda: s2s_fused.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh,  # noqa: E731
                                                         backend=self.backend)
                    else:
                        fn = lambda: (s2s_fused.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh,  # noqa: E731
                                                         reset_after=kind == "gru", backend=self.backend),)
                    self.case(f"{kind}_cell B={B} {dtype}", fn)

    # ------------------------------------------------------------------------------------------------ layers
    def _layer_args(self, kind, T, B, I, H, dtype, *, bidir=False):
        G, D = (4 if kind == "lstm" else 3), (2 if bidir else 1)
        x = self.randn(T, B, I, dtype=dtype, grad=True)
        h0 = self.randn(*([D] if bidir else []), B, H, dtype=dtype, grad=True)
        c0 = self.randn(*([D] if bidir else []), B, H, dtype=dtype, grad=True) if kind == "lstm" else None
        w = [[self.randn(G * H, I, dtype=dtype, scale=I ** -0.5, grad=True),
              self.randn(G * H, H, dtype=dtype, scale=H ** -0.5, grad=True),
              self.randn(G * H, dtype=dtype, scale=0.1, grad=True), self.randn(G * H, dtype=dtype, scale=0.1,
                                                                               grad=True)] for _ in range(D)]
        lengths = torch.tensor([T] + [1 + (5 * b) % T for b in range(1, B)])
        return x, h0, c0, w, lengths

    def _layer(self, kind, T, B, dtype, *, reverse=False):
        x, h0, c0, w, lengths = self._layer_args(kind.split("_")[0], T, B, 7, 33, dtype)
        if kind == "lstm":
            out, (hn, cn) = s2s_fused.lstm_layer(x, (h0, c0), *w[0], lengths=lengths, reverse=reverse,
                                                 backend=self.backend)
            return out, hn, cn
        return s2s_fused.gru_layer(x, h0, *w[0], lengths=lengths, reverse=reverse, reset_after=kind == "gru",
                                   backend=self.backend)

    def _bidir(self, kind, T, B, dtype):
        x, h0, c0, w, lengths = self._layer_args(kind.split("_")[0], T, B, 7, 33, dtype, bidir=True)
        if kind == "lstm":
            out, (hn, cn) = lstm_layer_bidir(x, (h0, c0), w[0], w[1], lengths=lengths, backend=self.backend)
            return out, hn, cn
        return gru_layer_bidir(x, h0, w[0], w[1], lengths=lengths, reset_after=kind == "gru", backend=self.backend)

    def layers(self):
        kinds = ("lstm", "gru", "gru_rb")
        for dtype in FLOATS:  # per-step path: cuBLAS + pointwise kernels, both time directions
            with compiled_switch("S2S_FUSED_NO_PERSISTENT"):
                for kind in kinds:
                    self.case(f"{kind}_layer per-step T=5 B=11 {dtype}", lambda: self._layer(kind, 5, 11, dtype))
                    self.case(f"{kind}_layer per-step reverse T=5 B=3 {dtype}",
                              lambda: self._layer(kind, 5, 3, dtype, reverse=True))
                    self.case(f"{kind} bidir per-step T=5 B=11 {dtype}", lambda: self._bidir(kind, 5, 11, dtype))
        for dtype in (torch.float32, torch.bfloat16, torch.float16):  # B <= 8: the persistent kernel
            for kind in ("lstm", "gru"):
                self.case(f"{kind}_layer persistent T=6 B=5 {dtype}", lambda: self._layer(kind, 6, 5, dtype))
                self.case(f"{kind} bidir persistent T=6 B=3 {dtype}", lambda: self._bidir(kind, 6, 3, dtype))

    # ---------------------------------------------------------------------------------------- cross-entropy
    def cross_entropy(self):
        # V <= 1024: a warp per row, else the block; V = 128 / 4096 allow 16-byte loads, 130 / 3001 do not
        for dtype in FLOATS:
            for V in (130, 128, 3001, 4096):
                logits = self.randn(3, 5, V, dtype=dtype, scale=3.0, grad=True)
                target = torch.randint(0, V, (3, 5), generator=self.gen).to(self.device)
                target[0, 1] = -100
                valid_len = torch.tensor([5, 2, 0], device=self.device)
                self.case(f"masked_ce V={V} {dtype}", lambda: (s2s_fused.masked_softmax_cross_entropy(
                    logits, target, valid_len, label_smoothing=0.1, reduction="none", backend=self.backend),))
        hidden, weight = self.randn(3, 5, 16, grad=True), self.randn(1001, 16, scale=0.25, grad=True)
        target = torch.randint(0, 1001, (3, 5), generator=self.gen).to(self.device)
        self.case("linear_masked_ce V=1001", lambda: (s2s_fused.linear_masked_cross_entropy(
            hidden, weight, target, torch.tensor([5, 3, 1], device=self.device), chunk_size=7,
            backend=self.backend),))

    # ------------------------------------------------------------------------------------------------- beam
    def beam(self):
        for dtype in FLOATS:
            for K, V, k in ((3, 5003, 6), (1, 7, 7), (4, 1001, 64), (3, 500, 65)):  # k > 64: the exact path
                logits = self.randn(5, K, V, dtype=dtype, scale=3.0)
                scores = -torch.rand(5, K, generator=self.gen).to(self.device)
                finished = (torch.rand(5, K, generator=self.gen) < 0.3).to(self.device)
                self.case(f"beam_search_topk K={K} V={V} k={k} {dtype}", lambda: s2s_fused.beam_search_topk(
                    logits, scores, k, finished=finished, eos_id=V - 1, backend=self.backend), finite=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--only", nargs="*", choices=["cells", "layers", "cross_entropy", "beam"],
                   default=["cells", "layers", "cross_entropy", "beam"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and "cuda" not in s2s_fused.available_backends():
        print(f"the cuda backend is not available: {s2s_fused.available_backends()}", file=sys.stderr)
        return 2
    run = Runner(device)
    t0 = time.perf_counter()
    for part in args.only:
        print(f"== {part}", flush=True)
        getattr(run, part)()
    print(f"done: {run.count} cases in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
