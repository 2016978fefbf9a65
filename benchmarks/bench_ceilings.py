"""The device's two ceilings, measured in the same run as the op benchmarks (METHOD.md: "measure the two ceilings
once on the device machine"): copy bandwidth (a large device-to-device copy, bytes read + written over time) and
the bf16 (and fp32) matrix-product rate of the library torch calls, on random data (zeros run faster).

GPU: a 2 GiB copy, 8192^3 matmuls. CPU: a 256 MiB copy, 2048^3 matmuls at torch's thread count.

    python benchmarks/bench_ceilings.py [--device cuda] [--smoke] [--out DIR]
"""
from __future__ import annotations

import torch

from common import base_parser, parse_args, markdown_table, measure, write_results


def main(argv=None) -> int:
    args = parse_args(base_parser(__doc__.splitlines()[0]), argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    copy_mib = 1 if args.smoke else (2048 if gpu else 256)
    n = 64 if args.smoke else (8192 if gpu else 2048)
    repeats = args.repeats or (3 if args.smoke else (50 if gpu else 10))
    rows = []

    src = torch.randn(copy_mib * 2**18, device=device)  # fp32: copy_mib MiB
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel() * src.element_size()  # read + write
    rows.append(measure("copy", "torch-eager", f"{copy_mib} MiB", src.dtype, "device-to-device",
                        lambda: dst.copy_(src), device, repeats=repeats,
                        throughput_fn=lambda ms: f"{nbytes / ms / 1e6:.4g} GB/s (read + write)"))
    del src, dst

    flops = 2 * n ** 3
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        rows.append(measure("matmul", "torch-eager", f"{n}x{n}x{n}", dtype, "fwd",
                            lambda: torch.matmul(a, b, out=out), device, repeats=repeats,
                            throughput_fn=lambda ms: f"{flops / ms / 1e9:.3g} TFLOP/s"))
        del a, b, out

    print(markdown_table(rows))
    write_results(rows, "ceilings", args.out, plot=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
