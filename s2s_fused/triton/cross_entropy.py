"""Triton masked softmax cross-entropy: one program per row (see csrc/cross_entropy.h for the layout and masking).

The kernels of the ops torch.ops.s2s_fused.masked_ce_{forward,backward}_triton (defined, with their fake kernels
and autograd, in s2s_fused/ops/cross_entropy.py):
  masked_ce_forward(logits, target, valid_len, ignore_index, label_smoothing) -> (loss, lse)
  masked_ce_backward(grad_loss, logits, target, valid_len, lse, ignore_index, label_smoothing) -> grad

logits (N, V) or (B, T, V) with classes contiguous (else copied), any row strides; target int64 shaped as logits
without V; valid_len int64 (B,) or None; loss, lse float32 (float64 for float64 logits) shaped as target;
grad_loss shaped as target, any strides (stride 0 included); grad contiguous in the logits' dtype.

Forward: one read of an unmasked row (per-lane online max / sum-exp, merged at the end). Backward: one read and
one write. Masked rows are never read (the loop bound is 0). A target outside [0, V) (not ignore_index) or a
valid_len outside [0, T] cannot raise on a GPU without a device sync: the row (every row of that sequence) gets NaN
loss, lse and gradient instead, and nothing is read out of bounds. On CPU tensors (the interpreter) they raise before
any launch, as the CPU op does. Argument checks: s2s_fused/_op_checks.py (the C++ ops' messages).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import _op_checks as _check


@triton.jit
def _row_state(n, target_ptr, valid_len_ptr, V, T, ignore_index, HAS_VALID_LEN: tl.constexpr):
    """(b, t, y, masked, bad) of row n; y is clamped into [0, V) so that no load can go out of bounds."""
    b = n // T
    t = n % T
    y = tl.load(target_ptr + n)
    masked = y == ignore_index
    bad = False
    if HAS_VALID_LEN:
        vl = tl.load(valid_len_ptr + b)
        bad = (vl < 0) | (vl > T)
        masked = masked | (t >= vl)
    bad = bad | ((~masked) & ((y < 0) | (y >= V)))
    y = tl.minimum(tl.maximum(y, 0), V - 1)
    return b, t, y, masked, bad


@triton.jit
def masked_ce_forward_kernel(logits_ptr, target_ptr, valid_len_ptr, loss_ptr, lse_ptr, V, T, stride_b, stride_t,
                             ignore_index, eps, eps_ptr, HAS_VALID_LEN: tl.constexpr, SMOOTH: tl.constexpr,
                             EPS_IN_MEMORY: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    if EPS_IN_MEMORY:
        eps = tl.load(eps_ptr)  # a float scalar argument is fp32: read the fp64 value from memory
    b, t, y, masked, bad = _row_state(n, target_ptr, valid_len_ptr, V, T, ignore_index, HAS_VALID_LEN)
    row = logits_ptr + b * stride_b + t * stride_t
    cols = tl.arange(0, BLOCK)
    m_vec = tl.full([BLOCK], float("-inf"), ACC)
    s_vec = tl.zeros([BLOCK], ACC)
    sx_vec = tl.zeros([BLOCK], ACC)
    n_cols = tl.where(masked | bad, 0, V)  # masked and bad rows read nothing
    for j0 in range(0, n_cols, BLOCK):
        c = j0 + cols
        x = tl.load(row + c, mask=c < V, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m_vec, x)
        # lanes still at -inf (no finite logit yet) keep sum 0 instead of exp(-inf + inf) = NaN
        alpha = tl.where(m_new == float("-inf"), 0.0, tl.exp(m_vec - m_new))
        s_vec = s_vec * alpha + tl.where(m_new == float("-inf"), 0.0, tl.exp(x - m_new))
        m_vec = m_new
        if SMOOTH:
            sx_vec += tl.where(c < V, x, 0.0)
    m = tl.max(m_vec, axis=0)
    s = tl.sum(tl.where(m_vec == float("-inf"), 0.0, s_vec * tl.exp(m_vec - m)), axis=0)
    lse = m + tl.log(s)
    xy = tl.load(row + y, mask=(~masked) & (~bad), other=0.0).to(ACC)
    loss = lse - xy
    if SMOOTH:
        loss = (1.0 - eps) * loss + eps * (lse - tl.sum(sx_vec, axis=0) / V)
    loss = tl.where(masked, 0.0, loss)
    lse = tl.where(masked, 0.0, lse)
    loss = tl.where(bad, float("nan"), loss)
    lse = tl.where(bad, float("nan"), lse)
    tl.store(loss_ptr + n, loss)
    tl.store(lse_ptr + n, lse)


@triton.jit
def masked_ce_backward_kernel(grad_loss_ptr, logits_ptr, target_ptr, valid_len_ptr, lse_ptr, grad_ptr, V, T,
                              stride_b, stride_t, grad_stride_b, grad_stride_t, ignore_index, eps, eps_ptr,
                              HAS_VALID_LEN: tl.constexpr, EPS_IN_MEMORY: tl.constexpr, ACC: tl.constexpr,
                              BLOCK: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    if EPS_IN_MEMORY:
        eps = tl.load(eps_ptr)  # a float scalar argument is fp32: read the fp64 value from memory
    b, t, y, masked, bad = _row_state(n, target_ptr, valid_len_ptr, V, T, ignore_index, HAS_VALID_LEN)
    row = logits_ptr + b * stride_b + t * stride_t
    out = grad_ptr + n * V
    cols = tl.arange(0, BLOCK)
    live = (~masked) & (~bad)
    g = tl.load(grad_loss_ptr + b * grad_stride_b + t * grad_stride_t, mask=live, other=0.0).to(ACC)
    lse = tl.load(lse_ptr + n, mask=live, other=0.0).to(ACC)
    off = eps / V
    hit = 1.0 - eps
    n_live = tl.where(live, V, 0)
    for j0 in range(0, n_live, BLOCK):
        c = j0 + cols
        x = tl.load(row + c, mask=c < V, other=float("-inf")).to(ACC)
        d = g * (tl.exp(x - lse) - off - tl.where(c == y, hit, 0.0))
        tl.store(out + c, d.to(grad_ptr.dtype.element_ty), mask=c < V)
    # masked rows: a zero row, bad rows a NaN row, and no logits read
    fill = tl.where(bad, float("nan"), 0.0)
    n_dead = V - n_live
    for j0 in range(0, n_dead, BLOCK):
        c = j0 + cols
        tl.store(out + c, (tl.zeros([BLOCK], ACC) + fill).to(grad_ptr.dtype.element_ty), mask=c < V)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _eps_ptr(label_smoothing, dtype, device, placeholder):
    """float64 kernels read label_smoothing from memory (a fill kernel, no host-device copy); others get a
    placeholder pointer they never read."""
    if dtype == torch.float64:
        return torch.full((1,), label_smoothing, dtype=torch.float64, device=device)
    return placeholder


def _block(V: int) -> int:
    return min(triton.next_power_of_2(max(V, 1)), 4096)


def _layout(logits):
    """(logits with contiguous classes, T, stride_b, stride_t)."""
    if logits.stride(-1) != 1 and logits.shape[-1] > 1:
        logits = logits.contiguous()
    if logits.dim() == 3:
        return logits, logits.shape[1], logits.stride(0), logits.stride(1)
    return logits, logits.shape[0], 0, logits.stride(0)


def _check_values_on_cpu(logits, target, valid_len, ignore_index):
    """On CPU tensors (the interpreter) out-of-range valid_len and targets raise, as the CPU op's do: reading them
    costs no device sync there. On a GPU the kernels write NaN instead (s2s_fused/ops/cross_entropy.py)."""
    if logits.device.type == "cpu":
        T = logits.shape[1] if logits.dim() == 3 else logits.shape[0]
        _check.ce_values(target, valid_len, T, logits.shape[-1], ignore_index)


def masked_ce_forward(logits: torch.Tensor, target: torch.Tensor, valid_len: Optional[torch.Tensor],
                      ignore_index: int, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    _check.masked_ce_forward(logits, target, valid_len, ignore_index, label_smoothing)
    _check_values_on_cpu(logits, target, valid_len, ignore_index)
    logits, T, sb, st = _layout(logits)
    target = target.contiguous()
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = torch.empty(target.shape, dtype=acc, device=logits.device)
    lse = torch.empty(target.shape, dtype=acc, device=logits.device)
    R = target.numel()
    if R > 0:
        V = logits.shape[-1]
        vl = valid_len.contiguous() if valid_len is not None else target
        masked_ce_forward_kernel[(R,)](
            logits, target, vl, loss, lse, V, max(T, 1), sb, st, ignore_index, float(label_smoothing),
            _eps_ptr(label_smoothing, logits.dtype, logits.device, loss),
            HAS_VALID_LEN=valid_len is not None, SMOOTH=label_smoothing != 0.0,
            EPS_IN_MEMORY=logits.dtype == torch.float64, ACC=_acc(logits.dtype),
            BLOCK=_block(V))
    return loss, lse



def masked_ce_backward(grad_loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                       valid_len: Optional[torch.Tensor], lse: torch.Tensor, ignore_index: int,
                       label_smoothing: float) -> torch.Tensor:
    _check.masked_ce_backward(grad_loss, logits, target, valid_len, lse, ignore_index, label_smoothing)
    _check_values_on_cpu(logits, target, valid_len, ignore_index)
    logits, T, sb, st = _layout(logits)
    target = target.contiguous()
    lse = lse.contiguous()
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    R = target.numel()
    if R > 0:
        V = logits.shape[-1]
        gsb, gst = (grad_loss.stride(0), grad_loss.stride(1)) if logits.dim() == 3 else (0, grad_loss.stride(0))
        vl = valid_len.contiguous() if valid_len is not None else target
        masked_ce_backward_kernel[(R,)](
            grad_loss, logits, target, vl, lse, grad, V, max(T, 1), sb, st, gsb, gst, ignore_index,
            float(label_smoothing), _eps_ptr(label_smoothing, logits.dtype, logits.device, lse),
            HAS_VALID_LEN=valid_len is not None, EPS_IN_MEMORY=logits.dtype == torch.float64,
            ACC=_acc(logits.dtype), BLOCK=_block(V))
    return grad

