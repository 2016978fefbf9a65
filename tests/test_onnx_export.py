"""Export of models using the drop-in modules: s2s_fused.onnx.export (torch.onnx's dynamo exporter with our ops'
ONNX translations) gives a model onnxruntime runs with our outputs; torch.export.export keeps working."""
from __future__ import annotations

import pytest
import torch

import s2s_fused
import s2s_fused.nn.rnn as snn_rnn
from s2s_fused import nn as snn
from tests.helpers import assert_close, device_for

import s2s_fused.onnx as s2s_onnx

ort = pytest.importorskip("onnxruntime")  # the test extra; s2s_fused.onnx itself needs only onnxscript


class Layers(torch.nn.Module):
    """Every module and layer op the package exports: 2-layer bidirectional LSTM (batch_first), a bidirectional
    GRU and a d2l one, the two cells (one unbatched), and a functional layer with lengths run in reverse."""

    def __init__(self, backend):
        super().__init__()
        self.lstm = snn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, backend=backend)
        self.gru = snn.GRU(8, 5, bidirectional=True, backend=backend)
        self.gru_d2l = snn.GRU(10, 5, bias=False, reset_after=False, backend=backend)
        self.gru_cell = snn.GRUCell(5, 4, backend=backend)
        self.gru_cell_d2l = snn.GRUCell(4, 4, reset_after=False, backend=backend)
        self.lstm_cell = snn.LSTMCell(4, 3, backend=backend)
        self.backend = backend

    def forward(self, x, lengths):
        y, (h, c) = self.lstm(x)  # (B, T, 8)
        y = y.transpose(0, 1)
        y2, h2 = self.gru(y)
        y3, h3 = self.gru_d2l(y2, h2[-1:])
        g = self.gru_cell_d2l(self.gru_cell(y3[-1]))
        hc, cc = self.lstm_cell(g)
        hu = self.lstm_cell(g[0], (hc[0], cc[0]))[0]  # unbatched
        m = self.lstm
        y4, (h4, c4) = s2s_fused.lstm_layer(y, (h[0], c[0]), m.weight_ih_l1, m.weight_hh_l1, m.bias_ih_l1,
                                            m.bias_hh_l1, lengths=lengths, reverse=True, backend=self.backend)
        return y, h, c, y3, h3, hc, cc, hu, y4, h4, c4


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 6, 3, generator=g), torch.tensor([6, 2, 4])


@pytest.mark.parametrize("backend,training,bidir_op", [("cpu", False, False), ("cpu", True, False),
                                                       ("cpu", False, True), ("reference", False, False),
                                                       ("triton", False, False)])
def test_onnx_export_runs_in_onnxruntime(backend, training, bidir_op, monkeypatch):
    """bidir_op: the bidirectional LSTM runs both directions in one op (lstm_layer_bidir_forward), as on CUDA."""
    if bidir_op:
        monkeypatch.setattr(snn_rnn, "BIDIR_FUSED_BACKENDS", frozenset({backend}))
    torch.manual_seed(0)
    device = device_for(backend)
    model = Layers(backend).train(training).to(device)  # no dropout: train mode only changes which ops run
    x, lengths = (t.to(device) for t in _inputs())
    program = s2s_onnx.export(model, (x, lengths))
    ops = {n.op_type for n in program.model_proto.graph.node}
    if bidir_op:
        graph = str(torch.export.export(model, (x, lengths)).graph)
        assert "lstm_layer_bidir_forward" in graph and "gru_layer_bidir_forward" in graph
    assert not any(n.domain.startswith("s2s_fused") for n in program.model_proto.graph.node), ops
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.cpu().numpy() for i, t in zip(session.get_inputs(), (x, lengths))}
    got = session.run(None, feeds)
    want = model(x, lengths)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(torch.from_numpy(a), b, 1e-5, f"output {k}")


def test_onnx_export_table_for_torch_onnx_export():
    """torch.onnx.export itself, given the table; a user's own entries are kept."""
    table = s2s_onnx.translation_table()
    assert torch.ops.s2s_fused.lstm_layer_forward.default in table
    assert torch.ops.s2s_fused.gru_cell_forward.default in table
    model = torch.nn.Sequential(snn.GRUCell(3, 4)).eval()
    x = torch.randn(2, 3)
    program = torch.onnx.export(model, (x,), dynamo=True, custom_translation_table=table)
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert_close(torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]), model(x),
                 1e-5, "torch.onnx.export")
    with pytest.raises(ValueError, match="dynamo"):
        s2s_onnx.export(model, (x,), dynamo=False)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_torch_export_export(backend):
    torch.manual_seed(0)
    model = Layers(backend)
    x, lengths = _inputs()
    ep = torch.export.export(model, (x, lengths))
    for k, (a, b) in enumerate(zip(ep.module()(x, lengths), model(x, lengths))):
        assert_close(a, b, 1e-6, f"torch.export output {k}")


def test_onnx_is_reachable_from_the_package():
    assert s2s_fused.onnx is s2s_onnx
