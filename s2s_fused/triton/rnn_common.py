"""Pieces shared by the Triton LSTM/GRU kernels of the cells (rnn_cell.py) and the layers (rnn_layer.py)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..backend import triton_interpret

# Kernel modes: LSTM, GRU reset_after, GRU reset_before in two stages (r, z then n).
LSTM, GRU_AFTER, GRU_BEFORE_1, GRU_BEFORE_2 = 0, 1, 2, 3


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # sign(x) (1 - e) / (1 + e), e = exp(-2|x|) <= 1: no overflow for any x.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def gate_dot(acc, a_ptr, s_ab, s_ak, w_ptr, s_wn, s_wk, row0, offs_b, offs_h, B, H, K,
              BLOCK_K: tl.constexpr, PREC: tl.constexpr):
    """acc += a[offs_b, :] @ w[row0 + offs_h, :]^T over k, masked at the edges. PREC "f32" upcasts the tiles
    first (the Triton interpreter's bf16 dot is wrong); otherwise it is tl.dot's input_precision."""
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + offs_b[:, None].to(tl.int64) * s_ab + offs_k[None, :] * s_ak,
                    mask=(offs_b[:, None] < B) & (offs_k[None, :] < K), other=0.0)
        w = tl.load(w_ptr + (row0 + offs_h)[None, :].to(tl.int64) * s_wn + offs_k[:, None] * s_wk,
                    mask=(offs_h[None, :] < H) & (offs_k[:, None] < K), other=0.0)
        # out_dtype names the accumulator's dtype: Triton 3.6 defaults it to fp32 whatever acc is (an fp64 acc
        # then fails its assertion), Triton 3.9 to acc's dtype.
        if PREC == "f32":
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
        else:
            acc = tl.dot(a, w, acc, input_precision=PREC, out_dtype=acc.dtype)
    return acc


def acc_dtype(dtype):
    """fp64 accumulates in fp64, everything else in fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def dot_precision(dtype):
    """tl.dot's input_precision. fp32/fp64: full-precision products ("ieee"), so results match the reference at
    fp32 tolerance (TF32 would cost ~1e-3 relative error). fp16/bf16: the tensor-core default, except bf16
    under the interpreter, whose bf16 tl.dot returns garbage (Triton 3.9): "f32" makes the kernels upcast."""
    if dtype == torch.bfloat16 and triton_interpret():
        return "f32"
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def tile_sizes(B, H):
    """(BLOCK_B, BLOCK_H, BLOCK_K) for a (B, H) tile grid."""
    return (16 if B <= 16 else 32), (32 if H <= 32 else 64), 32
