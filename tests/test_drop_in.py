"""Adopting the drop-in modules in code written for torch.nn: convert / to_torch on a d2l-style encoder-decoder,
what isinstance and TorchScript say, and torch's contract at the edges (zero-length sequences, the exception types
torch raises for the same mistakes, autocast, backward in eval mode)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import parametrizations

from s2s_fused import nn as snn
from s2s_fused._checks import RNNDtypeError, RNNInputDtypeError, RNNShapeError
from tests.helpers import assert_close, torch_and_ours

KINDS = ["LSTM", "GRU", "LSTMCell", "GRUCell"]


# ------------------------------------------------------------------------- a model written the way d2l writes it


class Seq2SeqEncoder(torch.nn.Module):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers, dropout=0.0):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embed_size)
        self.rnn = torch.nn.GRU(embed_size, num_hiddens, num_layers, dropout=dropout)

    def forward(self, X):
        X = self.embedding(X).permute(1, 0, 2)  # (T, B, E)
        return self.rnn(X)


class Seq2SeqDecoder(torch.nn.Module):
    def __init__(self, vocab_size, embed_size, num_hiddens, num_layers, dropout=0.0):
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab_size, embed_size)
        self.rnn = torch.nn.GRU(embed_size + num_hiddens, num_hiddens, num_layers, dropout=dropout)
        self.dense = torch.nn.Linear(num_hiddens, vocab_size)

    def init_state(self, enc_outputs):
        return enc_outputs[1]

    def forward(self, X, state):
        X = self.embedding(X).permute(1, 0, 2)
        context = state[-1].repeat(X.shape[0], 1, 1)
        output, state = self.rnn(torch.cat((X, context), 2), state)
        return self.dense(output).permute(1, 0, 2), state


class EncoderDecoder(torch.nn.Module):
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, enc_X, dec_X):
        return self.decoder(dec_X, self.decoder.init_state(self.encoder(enc_X)))


class LSTMLanguageModel(torch.nn.Module):
    """d2l's RNNModel around an LSTM, with a cell-stepped head: begin_state tells an LSTM by its mode, which holds
    for torch's LSTM and ours (isinstance(m, nn.LSTM) does not: see the README)."""

    def __init__(self, vocab_size, num_hiddens):
        super().__init__()
        self.rnn = torch.nn.LSTM(vocab_size, num_hiddens, bidirectional=True)
        self.cell = torch.nn.LSTMCell(2 * num_hiddens, num_hiddens)
        self.linear = torch.nn.Linear(num_hiddens, vocab_size)

    def begin_state(self, batch_size):
        shape = (self.rnn.num_layers * 2, batch_size, self.rnn.hidden_size)
        dtype = self.linear.weight.dtype
        if self.rnn.mode == "LSTM":
            return torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
        return torch.zeros(shape, dtype=dtype)

    def forward(self, X, state):
        Y, state = self.rnn(X, state)
        h = c = X.new_zeros(X.shape[1], self.cell.hidden_size)
        for y in Y:
            h, c = self.cell(y, (h, c))
        return self.linear(h), state


def _seq2seq(dropout=0.0):
    torch.manual_seed(0)
    return EncoderDecoder(Seq2SeqEncoder(11, 6, 8, 2, dropout), Seq2SeqDecoder(13, 6, 8, 2, dropout))


def _run_seq2seq(model):
    g = torch.Generator().manual_seed(1)
    enc_X, dec_X = torch.randint(11, (3, 5), generator=g), torch.randint(13, (3, 4), generator=g)
    out, state = model(enc_X, dec_X)
    w = torch.randn(out.shape, generator=g)
    (out * w).sum().backward()
    return out, state, {n: p.grad for n, p in model.named_parameters()}


def _rnn_classes(model):
    return sorted({type(m).__module__ + "." + type(m).__name__ for m in model.modules()
                   if isinstance(m, (torch.nn.RNNBase, torch.nn.RNNCellBase))})


@pytest.mark.parametrize("backend", [None, "reference", "cpu"])
def test_convert_seq2seq_matches_torch(backend):
    theirs = _seq2seq()
    before = copy.deepcopy(theirs.state_dict())
    ours = snn.convert(theirs, backend=backend)
    assert _rnn_classes(theirs) == ["torch.nn.modules.rnn.GRU"]  # the original untouched
    assert _rnn_classes(ours) == ["s2s_fused.nn.rnn.GRU"]
    assert ours.encoder.rnn.backend == backend
    assert all(torch.equal(before[k], v) for k, v in theirs.state_dict().items())
    out_t, state_t, grads_t = _run_seq2seq(theirs)
    out_o, state_o, grads_o = _run_seq2seq(ours)
    assert_close(out_o, out_t, 1e-5, "output")
    assert_close(state_o, state_t, 1e-5, "state")
    assert grads_o.keys() == grads_t.keys()
    for n in grads_t:
        assert_close(grads_o[n], grads_t[n], 1e-4, f"grad {n}")
    back = snn.to_torch(ours)
    assert _rnn_classes(back) == ["torch.nn.modules.rnn.GRU"]
    assert _rnn_classes(ours) == ["s2s_fused.nn.rnn.GRU"]
    sd_b, sd_t = back.state_dict(), theirs.state_dict()
    assert list(sd_b) == list(sd_t) and all(torch.equal(sd_b[k], sd_t[k]) for k in sd_t)
    assert not hasattr(back.encoder.rnn, "backend") and not hasattr(back.decoder.rnn, "reset_after")


def test_converted_model_compiles_fullgraph():
    """The reason the layers are RNNBase and not nn.GRU: a converted model compiles with fullgraph=True (torch's
    own nn.GRU would be refused by Dynamo)."""
    ours = snn.convert(_seq2seq())
    g = torch.Generator().manual_seed(1)
    enc_X, dec_X = torch.randint(11, (3, 5), generator=g), torch.randint(13, (3, 4), generator=g)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    out_c, state_c = compiled(enc_X, dec_X)
    out_e, state_e = ours(enc_X, dec_X)
    assert_close(out_c, out_e, 1e-6, "compiled output")
    assert_close(state_c, state_e, 1e-6, "compiled state")
    torch._dynamo.reset()
    with pytest.raises(Exception, match="LSTM"):  # Dynamo's refusal names "RNN, GRU, or LSTM"
        torch.compile(_seq2seq(), fullgraph=True, backend="aot_eager")(enc_X, dec_X)


def test_convert_lstm_model_and_cells():
    torch.manual_seed(0)
    theirs = LSTMLanguageModel(7, 5).double()
    ours = snn.convert(theirs)
    assert _rnn_classes(ours) == ["s2s_fused.nn.rnn.LSTM", "s2s_fused.nn.rnn.LSTMCell"]
    X = torch.randn(4, 3, 7, dtype=torch.float64)
    out_t, (h_t, c_t) = theirs(X, theirs.begin_state(3))
    out_o, (h_o, c_o) = ours(X, ours.begin_state(3))
    for a, b, what in ((out_o, out_t, "out"), (h_o, h_t, "h"), (c_o, c_t, "c")):
        assert_close(a, b, 1e-10, what)
    g_t = torch.autograd.grad(out_t.sum(), list(theirs.parameters()))
    g_o = torch.autograd.grad(out_o.sum(), list(ours.parameters()))
    for (n, _), a, b in zip(theirs.named_parameters(), g_o, g_t):
        assert_close(a, b, 1e-10, f"grad {n}")


def test_convert_keeps_parametrizations_hooks_mode_dtype_and_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.GRU(4, 5, dtype=torch.float64), torch.nn.GRUCell(5, 5, dtype=torch.float64))
    parametrizations.weight_norm(model[0], "weight_hh_l0")
    model.eval()
    seen = []
    model[0].register_forward_hook(lambda m, args, out: seen.append("fwd"))
    model[1].register_full_backward_hook(lambda m, gin, gout: seen.append("bwd"))
    x = torch.randn(3, 2, 4, dtype=torch.float64)

    def run(m):
        h = m[1](m[0](x)[0][-1])
        h.sum().backward()
        return h

    ref = run(copy.deepcopy(model))
    params = list(model.parameters())
    ours = snn.convert(model, inplace=True)
    assert ours is model and not ours.training
    assert isinstance(ours[0], snn.GRU) and isinstance(ours[1], snn.GRUCell)
    assert torch.nn.utils.parametrize.is_parametrized(ours[0], "weight_hh_l0")
    assert [p is q for p, q in zip(ours.parameters(), params)] == [True] * len(params)  # an optimizer's stay valid
    seen.clear()
    assert_close(run(ours), ref, 1e-10, "parametrized, hooked")
    assert seen == ["fwd", "bwd"]
    back = snn.to_torch(ours)
    assert type(back[0]).__bases__ == (torch.nn.GRU,) and type(back[1]) is torch.nn.GRUCell
    torch.nn.utils.parametrize.remove_parametrizations(back[0], "weight_hh_l0")
    assert type(back[0]) is torch.nn.GRU


def test_convert_module_itself_and_bad_arguments():
    lstm = torch.nn.LSTM(3, 4)
    assert type(snn.convert(lstm)) is snn.LSTM and type(lstm) is torch.nn.LSTM
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module"):
        snn.convert(lstm.weight_ih_l0)
    with pytest.raises(ValueError, match="backend"):
        snn.convert(lstm, backend="nope")
    with pytest.raises(ValueError, match="reset_after=False has no torch.nn counterpart"):
        snn.to_torch(torch.nn.Sequential(snn.GRU(3, 4, reset_after=False)))

    class MyLSTM(torch.nn.LSTM):  # a subclass may have its own forward: left alone
        pass

    assert type(snn.convert(MyLSTM(3, 4))) is MyLSTM


def test_convert_projected_lstm():
    theirs = torch.nn.LSTM(3, 6, proj_size=2, dtype=torch.float64)
    ours = snn.convert(theirs)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert_close(ours(x)[0], theirs(x)[0], 1e-10, "proj_size")


# ---------------------------------------------------------------------------------- isinstance, TorchScript


def test_isinstance_and_mode():
    """The trade-off the README documents: ours are RNNBase / RNNCellBase with torch's mode, not nn.LSTM / GRU
    (Dynamo refuses those); the cells are torch's cell classes."""
    lstm, gru = snn.LSTM(2, 3), snn.GRU(2, 3)
    assert isinstance(lstm, torch.nn.RNNBase) and lstm.mode == "LSTM"
    assert isinstance(gru, torch.nn.RNNBase) and gru.mode == "GRU"
    assert not isinstance(lstm, (torch.nn.LSTM, torch.nn.GRU))
    assert isinstance(snn.LSTMCell(2, 3), torch.nn.LSTMCell) and isinstance(snn.GRUCell(2, 3), torch.nn.GRUCell)


@pytest.mark.parametrize("kind", KINDS)
def test_jit_script_says_what_works(kind):
    model = torch.nn.Sequential(getattr(snn, kind)(2, 3))
    with pytest.raises(RuntimeError, match=rf"^s2s_fused.nn.{kind}: torch.jit.script .*torch.jit.trace.*"
                                           r"torch.compile.*s2s_fused.nn.to_torch"):
        torch.jit.script(model)
    scripted = torch.jit.script(snn.to_torch(model))
    x = torch.randn(4, 2) if kind.endswith("Cell") else torch.randn(5, 4, 2)
    first = (lambda o: o if isinstance(o, torch.Tensor) else first(o[0]))
    assert_close(first(scripted(x)), first(model(x)), 1e-5, "scripted to_torch")


# --------------------------------------------------------------------------------------- torch's contract


def _pair(kind, dtype=torch.float32, **kw):
    return torch_and_ours(kind, 10, 20, dtype=dtype, **kw)


def _both_raise(theirs, ours, call, exc_ours, match):
    """torch raises some exception type for the call; ours raises one that is also that type, naming `match`."""
    with pytest.raises(Exception) as t:
        call(theirs)
    with pytest.raises(exc_ours, match=match) as o:
        call(ours)
    assert isinstance(o.value, type(t.value)), f"torch raises {type(t.value).__name__}, ours {type(o.value)}"


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_zero_length_sequence_raises_like_torch(kind):
    theirs, ours = _pair(kind)
    _both_raise(theirs, ours, lambda m: m(torch.randn(0, 3, 10)), RuntimeError, "sequence length larger than 0")
    _both_raise(theirs, ours, lambda m: m(torch.randn(0, 10)), RuntimeError, "sequence length larger than 0")


def _states(kind, *shape, dtype=torch.float32):
    h = torch.randn(*shape, dtype=dtype)
    return (h, torch.randn(*shape)) if kind.startswith("LSTM") else h


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_layer_errors_are_torchs_types(kind):
    theirs, ours = _pair(kind)
    x = torch.randn(5, 3, 10)
    hname = r"hx\[0\]" if kind == "LSTM" else "hx"
    _both_raise(theirs, ours, lambda m: m(torch.randn(5, 3, 11)), RNNShapeError, "input: expected input_size 10")
    _both_raise(theirs, ours, lambda m: m(x, _states(kind, 1, 3, 21)), RNNShapeError,
                rf"{hname}: expected shape \(1, 3, 20\), got \(1, 3, 21\)")
    _both_raise(theirs, ours, lambda m: m(x, _states(kind, 3, 20)), RNNShapeError, hname)
    _both_raise(theirs, ours, lambda m: m(x.double()), RNNInputDtypeError, "input: expected dtype torch.float32")
    _both_raise(theirs, ours, lambda m: m(x, _states(kind, 1, 3, 20, dtype=torch.float64)), RNNDtypeError,
                rf"{hname}: expected dtype torch.float32")
    _both_raise(theirs, ours, lambda m: m(torch.randn(5, 3, 10, 1)), ValueError, "2-D")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_cell_errors_are_torchs_types_and_name_the_state(kind):
    theirs, ours = _pair(kind)
    x = torch.randn(3, 10)
    hname = r"hx\[0\]" if kind == "LSTMCell" else "hx"
    _both_raise(theirs, ours, lambda m: m(x, _states(kind, 3, 21)), RNNShapeError,
                rf"{kind}: {hname}: expected shape \(3, 20\).*got \(3, 21\)")
    _both_raise(theirs, ours, lambda m: m(x, _states(kind, 4, 20)), RNNShapeError, hname)
    _both_raise(theirs, ours, lambda m: m(torch.randn(3, 11)), RNNShapeError, "input: expected input_size 10")
    _both_raise(theirs, ours, lambda m: m(x.double()), RNNDtypeError, "input: expected dtype torch.float32")
    _both_raise(theirs, ours, lambda m: m(x, _states(kind, 3, 20, dtype=torch.float64)), RNNDtypeError,
                rf"{hname}: expected dtype")
    _both_raise(theirs, ours, lambda m: m(torch.randn(3, 1, 10)), ValueError, "1-D or 2-D")


@pytest.mark.parametrize("fn", ["gru_cell", "gru_layer"])
def test_functional_state_size_names_the_state(fn):
    import s2s_fused

    w_ih, w_hh = torch.randn(60, 10), torch.randn(60, 20)
    x = torch.randn(3, 10) if fn == "gru_cell" else torch.randn(4, 3, 10)
    with pytest.raises(ValueError, match=r"^hx: expected hidden size 20 .*got 21"):
        getattr(s2s_fused, fn)(x, torch.randn(3, 21), w_ih, w_hh)


def test_gru_proj_size_is_a_value_error_as_torch():
    for proj in (0, 3):
        with pytest.raises(ValueError, match="proj_size"):
            torch.nn.GRU(4, 5, proj_size=proj)
        with pytest.raises(ValueError, match="proj_size: only supported for LSTM"):
            snn.GRU(4, 5, proj_size=proj)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        snn.GRU(4, 5, nope=1)


@pytest.mark.parametrize("kind", KINDS)
def test_cpu_autocast_bfloat16_dtype_as_torch(kind):
    theirs, ours = _pair(kind)
    x = torch.randn(3, 10) if kind.endswith("Cell") else torch.randn(5, 3, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_o = ours(x)
        try:
            out_t, dtypes = theirs(x), None
        except RuntimeError as e:
            # torch.nn.LSTM runs autocast's bf16 through a oneDNN primitive that needs AVX-512: on an AVX2-only CPU
            # (an AMD EPYC Zen 3) it raises "could not create a primitive descriptor". Ours gives what torch gives
            # where it runs (every output bf16), checked against torch's fp32 numbers.
            if kind != "LSTM" or "primitive descriptor" not in str(e):
                raise
            dtypes = torch.bfloat16
    if dtypes is not None:
        out_t = theirs(x)
    flat_t = [out_t] if isinstance(out_t, torch.Tensor) else [out_t[0], *([out_t[1]] if kind == "GRU" else out_t[1])]
    flat_o = [out_o] if isinstance(out_o, torch.Tensor) else [out_o[0], *([out_o[1]] if kind == "GRU" else out_o[1])]
    for a, b in zip(flat_o, flat_t):
        assert a.dtype == (dtypes or b.dtype), f"{kind} under autocast: {a.dtype}, torch {dtypes or b.dtype}"
        assert_close(a, b, 3e-2, "autocast")
    if kind == "LSTM":  # gradients reach the float32 parameters through the casts
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours(x)[0].float().sum().backward()
        assert ours.weight_ih_l0.grad.dtype == torch.float32


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_backward_in_eval_mode(kind, backend):
    """Users ask cuDNN for backward in eval mode (e.g. adversarial inputs): it works and matches torch's."""
    theirs, ours = _pair(kind, dtype=torch.float64, **({"num_layers": 2, "dropout": 0.5}
                                                      if not kind.endswith("Cell") else {}))
    ours.backend = backend
    theirs.eval(), ours.eval()
    x = torch.randn(3, 10) if kind.endswith("Cell") else torch.randn(5, 3, 10)
    x = x.double().requires_grad_()
    out_t, out_o = theirs(x), ours(x)
    first = (lambda o: o if isinstance(o, torch.Tensor) else first(o[0]))
    g_t = torch.autograd.grad(first(out_t).sum(), [x, *theirs.parameters()])
    g_o = torch.autograd.grad(first(out_o).sum(), [x, *ours.parameters()])
    for a, b in zip(g_o, g_t):
        assert_close(a, b, 1e-10, "eval backward")
