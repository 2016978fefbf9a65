"""Masked softmax cross-entropy (and linear + cross-entropy), forward and forward+backward, side by side with the
eager baseline measured in the same run.

Baselines:
- masked CE: d2l's pattern, ``(F.cross_entropy(pred.permute(0, 2, 1), label, reduction="none") * mask).mean(1)``
  then ``.sum().backward()`` (provider ``torch-eager``; on GPU at V=32000 also ``torch.compile``d,
  ``torch-compile``); ours: ``s2s_fused.masked_softmax_cross_entropy(..., reduction="per_sequence")``, the same
  value.
- linear + CE ("mean" over valid tokens; masked targets set to ignore_index for the torch baselines):
  ``F.linear`` + eager ``F.cross_entropy`` (``torch-eager``) and ``F.linear_cross_entropy`` with its chunked path
  (``LinearCrossEntropyOptions()``) where this torch has it (``torch-linear_cross_entropy``).

Peak memory: on CUDA the allocator's peak above what was allocated before the call; on CPU the process's resident
high-water mark (VmHWM, reset through /proc/self/clear_refs just before) above its resident size before one call,
each provider in a fresh process, the second call of the shape measured (the first call's
gradients dropped before it) (the logits and inputs are allocated before; the
gradient the call leaves in .grad counts). Reported in MB and as a
multiple of the logits' size ("×P").

    PYTHONPATH=. python benchmarks/bench_cross_entropy.py [--smoke] [--device cuda] [--out DIR]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

from common import ROOT, Row, base_parser, parse_args, fill_ratios, measure, markdown_table, threads_note, write_results

import s2s_fused  # noqa: E402


def make_inputs(B, T, V, dtype, device, seed=0, H=None):
    g = torch.Generator(device="cpu").manual_seed(seed)
    target = torch.randint(0, V, (B, T), generator=g).to(device)
    # d2l-like lengths: uniform in [1, T]
    valid_len = torch.randint(1, T + 1, (B,), generator=g).to(device)
    if H is None:
        logits = torch.randn(B, T, V, dtype=dtype, device=device, requires_grad=True)
        return logits, target, valid_len
    hidden = torch.randn(B, T, H, dtype=dtype, device=device, requires_grad=True)
    weight = (torch.randn(V, H, dtype=dtype, device=device) / H ** 0.5).requires_grad_()
    bias = torch.zeros(V, dtype=dtype, device=device, requires_grad=True)
    return hidden, weight, bias, target, valid_len


# ----------------------------------------------------------------------------------------- the providers


def ce_fns(provider, logits, target, valid_len):
    """(forward fn, forward+backward fn) for one provider of the masked CE."""
    T = logits.shape[1]

    if provider in ("torch-eager", "torch-compile"):
        def fwd():
            mask = (torch.arange(T, device=logits.device) < valid_len[:, None]).to(logits.dtype)
            return (F.cross_entropy(logits.permute(0, 2, 1), target, reduction="none") * mask).mean(dim=1)
        if provider == "torch-compile":
            fwd = torch.compile(fwd)
    else:
        backend = provider.split("-", 1)[1]

        def fwd():
            return s2s_fused.masked_softmax_cross_entropy(logits, target, valid_len, reduction="per_sequence",
                                                          backend=backend)

    def fwd_nograd():
        with torch.no_grad():
            return fwd()

    def fwd_bwd():
        logits.grad = None
        fwd().sum().backward()

    return fwd_nograd, fwd_bwd


def linear_fns(provider, hidden, weight, bias, target, valid_len):
    T = hidden.shape[1]
    params = (hidden, weight, bias)

    def masked_target():
        mask = torch.arange(T, device=target.device) < valid_len[:, None]
        return torch.where(mask, target, torch.full_like(target, -100))

    if provider == "torch-eager":
        def fwd():
            return F.cross_entropy(F.linear(hidden, weight, bias).flatten(0, 1), masked_target().flatten())
    elif provider == "torch-linear_cross_entropy":
        # its chunked path (options given); options=None is linear + cross_entropy, the eager row
        opts = torch.nn.LinearCrossEntropyOptions() if hasattr(torch.nn, "LinearCrossEntropyOptions") else None

        def fwd():
            return F.linear_cross_entropy(hidden.flatten(0, 1), weight, masked_target().flatten(), linear_bias=bias,
                                          ignore_index=-100, options=opts)
    else:
        backend = provider.split("-", 1)[1]

        def fwd():
            return s2s_fused.linear_masked_cross_entropy(hidden, weight, target, valid_len, bias=bias,
                                                         reduction="mean", backend=backend)

    def fwd_nograd():
        with torch.no_grad():
            return fwd()

    def fwd_bwd():
        for p in params:
            p.grad = None
        fwd().backward()

    return fwd_nograd, fwd_bwd


# ------------------------------------------------------------------------------------------ CPU peak memory


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss():
    """Reset the kernel's resident high-water mark (VmHWM) to the current size (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _cpu_peak_child(spec):
    """Run in a fresh process: build the inputs, warm the code paths on a tiny shape, run one call, report."""
    kind, provider, B, T, V, H, mode = (spec[k] for k in ("kind", "provider", "B", "T", "V", "H", "mode"))
    dtype = getattr(torch, spec["dtype"])
    for shape in ((2, 3, 5), (B, T, V)):
        b, t, v = shape
        tensors = make_inputs(b, t, v, dtype, "cpu", H=None if kind == "ce" else H)
        fns = (ce_fns if kind == "ce" else linear_fns)(provider, *tensors)
        fn = fns[0] if mode == "fwd" else fns[1]
        fn()  # warm-up: a steady-state call is measured (allocator arenas, lazy initialisation)
        if shape == (2, 3, 5):
            continue
        for t in tensors:  # drop the warm-up's gradients, so the measured call's count
            if isinstance(t, torch.Tensor):
                t.grad = None
        _reset_peak_rss()
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
    print(json.dumps({"extra_mb": max(0, peak - before) / 1024}))


def cpu_peak_mb(kind, provider, B, T, V, dtype, mode, H=None):
    spec = dict(kind=kind, provider=provider, B=B, T=T, V=V, H=H, mode=mode, dtype=str(dtype).split(".")[-1])
    # glibc: every block >= 64 KB its own mapping, returned on free (no dynamic threshold, no arena reuse), so the
    # resident size follows the live tensors
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MALLOC_MMAP_THRESHOLD_="65536")
    r = subprocess.run([sys.executable, __file__, "--_peak", json.dumps(spec)], capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
        return float("nan")
    return json.loads(r.stdout.strip().splitlines()[-1])["extra_mb"]


# ------------------------------------------------------------------------------------------------- main


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--no-mem", action="store_true", help="skip the CPU peak-memory subprocesses")
    args = parse_args(p)
    device = torch.device(args.device)
    repeats = args.repeats or (3 if args.smoke else 15)
    on_gpu = device.type == "cuda"

    if args.smoke:
        ce_shapes = [(4, 5, 50, torch.float32)]
        lin_shapes = [(4, 5, 50, 16, torch.float32)]
    elif on_gpu:
        ce_shapes = [(256, 32, 32000, torch.bfloat16), (256, 32, 32000, torch.float32),
                     (128, 9, 200, torch.float32), (64, 10, 10000, torch.float32)]
        lin_shapes = [(256, 32, 32000, 512, torch.bfloat16), (64, 32, 8000, 256, torch.float32)]
    else:
        ce_shapes = [(64, 32, 8000, torch.float32), (128, 9, 200, torch.float32), (64, 10, 10000, torch.bfloat16)]
        lin_shapes = [(64, 32, 8000, 256, torch.float32)]

    ours = ["s2s_fused-cuda", "s2s_fused-triton"] if on_gpu else ["s2s_fused-cpu"]
    ours = [o for o in ours if o.split("-", 1)[1] in s2s_fused.available_backends()]
    rows: list[Row] = []

    for B, T, V, dtype in ce_shapes:
        logits, target, valid_len = make_inputs(B, T, V, dtype, device)
        P = logits.numel() * logits.element_size()
        shape = f"B={B} T={T} V={V}"
        compiled = ["torch-compile"] if on_gpu and V >= 32000 else []
        for provider in ["torch-eager"] + compiled + ours:
            fwd, fwd_bwd = ce_fns(provider, logits, target, valid_len)
            for mode, fn, passes in (("fwd", fwd, 1), ("fwd+bwd", fwd_bwd, 3)):
                # throughput by the fused design's traffic: fwd 1 read, fwd+bwd 2 reads + 1 write of the logits
                r = measure("masked_ce", provider, shape, dtype, mode, fn, device, repeats=repeats,
                            throughput_fn=lambda ms, k=passes: f"{k * P / ms / 1e6:.1f} GB/s ({k}P)")
                if not on_gpu and not args.no_mem and not args.smoke:
                    r.peak_mem_mb = cpu_peak_mb("ce", provider, B, T, V, dtype, mode)
                if r.peak_mem_mb == r.peak_mem_mb:
                    r.throughput += f", peak {r.peak_mem_mb * 2**20 / P:.2f}×P"
                rows.append(r)
        del logits

    lin_providers = ["torch-eager"] + (["torch-linear_cross_entropy"] if hasattr(F, "linear_cross_entropy")
                                       else []) + ours
    for B, T, V, H, dtype in lin_shapes:
        tensors = make_inputs(B, T, V, dtype, device, H=H)
        P = B * T * V * torch.empty((), dtype=dtype).element_size()
        shape = f"B={B} T={T} V={V} H={H}"
        for provider in lin_providers:
            fwd, fwd_bwd = linear_fns(provider, *tensors)
            for mode, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                r = measure("linear_masked_ce", provider, shape, dtype, mode, fn, device, repeats=repeats)
                if not on_gpu and not args.no_mem and not args.smoke:
                    r.peak_mem_mb = cpu_peak_mb("linear", provider, B, T, V, dtype, mode, H=H)
                if r.peak_mem_mb == r.peak_mem_mb:
                    r.throughput = f"peak {r.peak_mem_mb * 2**20 / P:.2f}×P (P = logits size)"
                rows.append(r)

    fill_ratios(rows, "torch-eager")
    print(f"# cross_entropy on {rows[0].device} ({threads_note() if not on_gpu else ''})")
    print(markdown_table(rows))
    write_results(rows, "cross_entropy", args.out, plot=not args.no_plot)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_peak":
        _cpu_peak_child(json.loads(sys.argv[2]))
    else:
        main()
