"""ONNX export of models that use s2s_fused's ops: ``s2s_fused.onnx.export(model, args, ...)``.

torch.onnx's exporter (``dynamo=True``: torch.export, then one ONNX function per op of the graph) has no ONNX
function for our ops; :func:`translation_table` gives one for each forward op the modules call, built from ONNX's
own ``LSTM`` / ``GRU`` operators (whole layers) or from MatMul and the pointwise ops (one cell step), so any ONNX
runtime runs the exported model. :func:`export` passes it to ``torch.onnx.export``; to call ``torch.onnx.export``
yourself, pass ``custom_translation_table=s2s_fused.onnx.translation_table()``.

Gate orders: torch's LSTM is (i, f, g, o) and ONNX's (i, o, f, c); torch's GRU is (r, z, n) and ONNX's (z, r, h).
ONNX's GRU ``linear_before_reset=1`` is torch's GRU (reset_after=True), ``0`` Cho et al. / d2l's (reset_after=False).
The training forward ops' extra outputs (what backward needs) are never used by an exported graph (it has no
backward), so their translations return only the outputs the graph reads.

Needs the ``onnxscript`` package (and ``onnx``; ``onnxruntime`` to run the result), imported with this module.
"""
from __future__ import annotations

import torch
from onnxscript import ir
from onnxscript.onnx_opset import opset18 as op

LSTM_TO_ONNX = (0, 3, 1, 2)  # ONNX's gate k is torch's gate LSTM_TO_ONNX[k]: (i, o, f, c) from (i, f, g, o)
GRU_TO_ONNX = (1, 0, 2)  # (z, r, h) from (r, z, n)


def _gate(w, k: int, H: int):
    """Rows k*H .. (k+1)*H of a weight (G*H, ...) or bias (G*H,): gate k."""
    return op.Slice(w, [k * H], [(k + 1) * H], [0])


def _reorder(w, order, H: int):
    return op.Concat(*[_gate(w, k, H) for k in order], axis=0)


def _onnx_weights(w_ih, w_hh, b_ih, b_hh, order):
    """ONNX's W (1, G*H, I), R (1, G*H, H) and B (1, 2*G*H) (None without biases; a missing one is zeros)."""
    H = w_hh.shape[1]
    W = op.Unsqueeze(_reorder(w_ih, order, H), [0])
    R = op.Unsqueeze(_reorder(w_hh, order, H), [0])
    if b_ih is None and b_hh is None:
        return W, R, None
    biases = [_reorder(b, order, H) if b is not None else None for b in (b_ih, b_hh)]
    zeros = op.ConstantOfShape(op.Constant(value_ints=[len(order) * H]),
                               value=ir.tensor([0.0], dtype=w_ih.dtype))
    B = op.Concat(*[b if b is not None else zeros for b in biases], axis=0)
    return W, R, op.Unsqueeze(B, [0])


def _lengths(lengths):
    return None if lengths is None else op.Cast(lengths, to=ir.DataType.INT32)


def lstm_layer(input, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    """s2s_fused::lstm_layer_{forward,inference}: input (T, B, I), h0, c0 (B, H) -> output (T, B, H), h_n, c_n."""
    W, R, B = _onnx_weights(w_ih, w_hh, b_ih, b_hh, LSTM_TO_ONNX)
    Y, Y_h, Y_c = op.LSTM(input, W, R, B, _lengths(lengths), op.Unsqueeze(h0, [0]), op.Unsqueeze(c0, [0]),
                          direction="reverse" if reverse else "forward", hidden_size=w_hh.shape[1])
    return op.Squeeze(Y, [1]), op.Squeeze(Y_h, [0]), op.Squeeze(Y_c, [0])


def gru_layer(input, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after):
    """s2s_fused::gru_layer_{forward,inference}: input (T, B, I), h0 (B, H) -> output (T, B, H), h_n."""
    W, R, B = _onnx_weights(w_ih, w_hh, b_ih, b_hh, GRU_TO_ONNX)
    Y, Y_h = op.GRU(input, W, R, B, _lengths(lengths), op.Unsqueeze(h0, [0]),
                    direction="reverse" if reverse else "forward", hidden_size=w_hh.shape[1],
                    linear_before_reset=int(reset_after))
    return op.Squeeze(Y, [1]), op.Squeeze(Y_h, [0])


def _bidir(layer, input, h0, weights, weights_r, lengths, **kw):
    """Both directions as two single-direction layers: output (T, B, 2H), states (2, B, H) direction-major."""
    outs = [layer(input, *[op.Gather(h, d, axis=0) for h in h0], *w, lengths, d == 1, **kw)
            for d, w in enumerate((weights, weights_r))]
    return (op.Concat(outs[0][0], outs[1][0], axis=-1),
            *[op.Concat(op.Unsqueeze(a, [0]), op.Unsqueeze(b, [0]), axis=0) for a, b in zip(outs[0][1:], outs[1][1:])])


def lstm_layer_bidir(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths):
    return _bidir(lstm_layer, input, (h0, c0), (w_ih, w_hh, b_ih, b_hh), (w_ih_r, w_hh_r, b_ih_r, b_hh_r), lengths)


def gru_layer_bidir(input, h0, w_ih, w_hh, b_ih, b_hh, w_ih_r, w_hh_r, b_ih_r, b_hh_r, lengths, reset_after):
    return _bidir(gru_layer, input, (h0,), (w_ih, w_hh, b_ih, b_hh), (w_ih_r, w_hh_r, b_ih_r, b_hh_r), lengths,
                  reset_after=reset_after)


def _linear(x, w, b):
    y = op.MatMul(x, op.Transpose(w, perm=[1, 0]))
    return y if b is None else op.Add(y, b)


def _chunks(y, n: int, H: int):
    return [op.Slice(y, [k * H], [(k + 1) * H], [-1]) for k in range(n)]


def lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    """s2s_fused::lstm_cell_forward: input (B, I) or (I,) -> h1, c1 and the workspace (i, f, g, o) activated."""
    H = w_hh.shape[1]
    gi, gf, gg, go = _chunks(op.Add(_linear(input, w_ih, b_ih), _linear(hx, w_hh, b_hh)), 4, H)
    i, f, g, o = op.Sigmoid(gi), op.Sigmoid(gf), op.Tanh(gg), op.Sigmoid(go)
    c1 = op.Add(op.Mul(f, cx), op.Mul(i, g))
    return op.Mul(o, op.Tanh(c1)), c1, op.Concat(i, f, g, o, axis=-1)


def gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, reset_after):
    """s2s_fused::gru_cell_forward: h1 and the workspace ((r, z, n, W_hn h + b_hn) or (r, z, n))."""
    H = w_hh.shape[1]
    i_r, i_z, i_n = _chunks(_linear(input, w_ih, b_ih), 3, H)
    b = [None] * 3 if b_hh is None else [_gate(b_hh, k, H) for k in range(3)]
    h_r, h_z = (_linear(hx, _gate(w_hh, k, H), b[k]) for k in range(2))
    r, z = op.Sigmoid(op.Add(i_r, h_r)), op.Sigmoid(op.Add(i_z, h_z))
    if reset_after:  # r scales W_hn h + b_hn
        h_n = _linear(hx, _gate(w_hh, 2, H), b[2])
        n = op.Tanh(op.Add(i_n, op.Mul(r, h_n)))
        extra = [h_n]
    else:  # r scales h before W_hn
        n = op.Tanh(op.Add(i_n, _linear(op.Mul(r, hx), _gate(w_hh, 2, H), b[2])))
        extra = []
    h1 = op.Add(op.Mul(op.Sub(op.CastLike(1.0, z), z), n), op.Mul(z, hx))
    return h1, op.Concat(r, z, n, *extra, axis=-1)


def translation_table() -> dict:
    """{our forward op (and its Triton twin): its ONNX function} for torch.onnx.export's
    ``custom_translation_table``."""
    ops = torch.ops.s2s_fused
    table = {}
    for names, fn in ((("lstm_layer_forward", "lstm_layer_inference"), lstm_layer),
                      (("gru_layer_forward", "gru_layer_inference"), gru_layer),
                      (("lstm_layer_bidir_forward",), lstm_layer_bidir),
                      (("gru_layer_bidir_forward",), gru_layer_bidir),
                      (("lstm_cell_forward",), lstm_cell), (("gru_cell_forward",), gru_cell)):
        for name in names:
            for n in (name, name + "_triton"):
                if hasattr(ops, n):
                    table[getattr(ops, n).default] = fn
    return table


def export(model, args=(), kwargs=None, **options):
    """``torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, **options)`` with our ops' translations
    added to ``options``' ``custom_translation_table`` (its entries win). Returns torch's ONNXProgram
    (``.save(path)``, ``.model_proto``)."""
    if options.pop("dynamo", True) is not True:
        raise ValueError("dynamo: s2s_fused.onnx.export needs torch.onnx's dynamo=True exporter, got False")
    table = {**translation_table(), **(options.pop("custom_translation_table", None) or {})}
    return torch.onnx.export(model, args, kwargs=kwargs, dynamo=True, custom_translation_table=table, **options)
