"""The d2l RNN encoder-decoder and its attention variants, buildable on two backends with identical weights.

``backend="torch"``: the recurrent parts are ``torch.nn.GRU/LSTM`` (cuDNN on GPU) and ``torch.nn.GRUCell/LSTMCell``,
the loss is the eager masked cross-entropy. Any other backend (``"fused"``, or one of s2s_fused's op backends
``"cpu"``, ``"cuda"``, ``"triton"``, ``"reference"``) builds the same modules from ``s2s_fused.nn``. Parameter names
and shapes are the same on both, so a ``state_dict`` loads across with ``strict=True``.

Models (``config["attention"]``):
- ``"none"``: d2l's ``Seq2SeqEncoder``/``Seq2SeqDecoder``: the decoder concatenates the context (the encoder's final
  top-layer state) to every input embedding; the whole target sequence runs through one multi-layer GRU/LSTM.
- ``"bahdanau"``: additive attention over the encoder outputs, queried with the decoder's previous top-layer state;
  the context is concatenated to the input embedding (d2l ``Seq2SeqAttentionDecoder``). With one GRU layer on an
  s2s_fused backend the steps run fused (same numbers): in decoding (:meth:`AttentionDecoder.fused_core`) the
  ``additive_attention`` op over the encoder outputs already multiplied by the GRU's context input weights, the
  embedding's input gates gathered from a per-token table; in teacher-forced training with fewer target steps than
  source positions (:meth:`AttentionDecoder.memory_core`) the op over the encoder outputs, feeding the fused GRU
  cell op.
- ``"luong"``: multiplicative attention (``score="dot"`` or ``"general"``) on the decoder's new top-layer state,
  attentional state ``tanh(W_c [context; h])`` feeding the output layer and the next step (input feeding). On an
  s2s_fused backend the attention is the ``dot_attention`` op (the general score's keys are projected once per
  source), which takes one copy of the source side per sentence, shared by its beams.
With ``bidirectional=True`` the encoder runs both ways; per layer, the final forward and backward states are joined
by a linear layer (``tanh`` for h) into the decoder's initial state.

Shapes: source/target ids ``(B, T)``, valid lengths ``(B,)``, logits ``(B, T, V)``. Decoding state (for
:meth:`Seq2Seq.step` and the beam search) is a dict of tensors with the batch dimension FIRST, so reordering
beams is ``index_select(0, index)`` on every entry.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import nn as fnn
from .._cpu_linear import linear as cpu_linear
from ..ops.attention import additive_attention, dot_attention
from .decode import check_live_rows

BACKENDS = ("fused", "torch", "auto", "cpu", "cuda", "triton", "reference")
CELLS = ("gru", "lstm")
ATTENTIONS = ("none", "bahdanau", "luong")
SCORES = ("general", "dot")

# The train command's model (its training defaults: seq2seq/args.py).
DEFAULT_CONFIG = dict(cell="gru", attention="bahdanau", score="general", bidirectional=True, embed_size=64,
                      hidden_size=128, num_layers=1, dropout=0.3, num_steps=10, tie_embeddings=False)


def op_backend(backend: str):
    """The ``backend=`` given to s2s_fused modules (None: the process default)."""
    return None if backend in ("fused", "auto") else backend


def check_config(config: dict) -> dict:
    from .errors import UserError

    cfg = dict(DEFAULT_CONFIG)
    cfg.update(config)
    for key, choices in (("cell", CELLS), ("attention", ATTENTIONS), ("score", SCORES)):
        if cfg[key] not in choices:
            raise UserError(f"{key}: expected one of {', '.join(choices)}, got {cfg[key]!r}")
    for key in ("embed_size", "hidden_size", "num_layers", "num_steps", "src_vocab_size", "tgt_vocab_size"):
        if key in cfg and (not isinstance(cfg[key], int) or cfg[key] < 1):
            raise UserError(f"{key}: expected a positive integer, got {cfg[key]!r}")
    if not 0.0 <= float(cfg["dropout"]) < 1.0:
        raise UserError(f"dropout: expected a value in [0, 1), got {cfg['dropout']!r}")
    if cfg["tie_embeddings"] and cfg["embed_size"] != cfg["hidden_size"]:
        # the output layer maps the hidden state (H) to the vocabulary, the embedding maps it to E: one matrix
        raise UserError(f"tie_embeddings: needs embed_size equal to hidden_size, got {cfg['embed_size']} and "
                        f"{cfg['hidden_size']}")
    return cfg


def make_layer(cell, input_size, hidden_size, num_layers, dropout, bidirectional, backend):
    """A batch-first multi-layer GRU/LSTM: torch.nn's for the ``"torch"`` backend, else s2s_fused.nn's."""
    kwargs = dict(num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0,
                  bidirectional=bidirectional)
    if backend == "torch":
        return (nn.GRU if cell == "gru" else nn.LSTM)(input_size, hidden_size, **kwargs)
    return (fnn.GRU if cell == "gru" else fnn.LSTM)(input_size, hidden_size, backend=op_backend(backend), **kwargs)


def make_cell(cell, input_size, hidden_size, backend):
    if backend == "torch":
        return (nn.GRUCell if cell == "gru" else nn.LSTMCell)(input_size, hidden_size)
    return (fnn.GRUCell if cell == "gru" else fnn.LSTMCell)(input_size, hidden_size, backend=op_backend(backend))


class CellStack(nn.Module):
    """``num_layers`` cells run one time step; dropout on the input of every layer above the first (torch.nn's
    multi-layer semantics). ``forward(x (N, I), h (N, L, H), c (N, L, H) or None) -> (h, c)``."""

    def __init__(self, cell, input_size, hidden_size, num_layers, dropout, backend):
        super().__init__()
        self.lstm = cell == "lstm"
        self.dropout = dropout
        self.cells = nn.ModuleList(
            make_cell(cell, input_size if i == 0 else hidden_size, hidden_size, backend) for i in range(num_layers))

    def forward(self, x, h, c=None):
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if i > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            if self.lstm:
                hi, ci = cell(x, (h[:, i], c[:, i]))
                cs.append(ci)
            else:
                hi = cell(x, h[:, i])
            hs.append(hi)
            x = hi
        return torch.stack(hs, 1), (torch.stack(cs, 1) if self.lstm else None)


def _scratch(buffers: dict, name: str, shape, like: torch.Tensor) -> torch.Tensor:
    buf = buffers.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = buffers[name] = like.new_empty(shape)
    return buf


def output_logits(dense: nn.Linear, out, live=None, buffers=None):
    """The output layer ``dense(out (N, H)) -> (N, V)`` of a decoding step.

    ``live`` (N,) bool (the decoders' ``live_rows``): when at least a quarter of the rows are not live, only the
    live rows go through the GEMM and the others are 0; else every row is computed. Late in a beam search most
    beams are finished or their sentence done (over a beam-4 decode of a trained default model, 40 % of the rows),
    and the (N, H) x (H, V) output GEMM is most of a step's time; but gathering the live rows and scattering their
    logits costs two more passes over them, more than a few dead rows' share of the GEMM.
    ``buffers``: a dict kept across the steps of one decode (without autograd), where the logits are written and
    reused by the next step: a fresh (N, V) tensor every step costs its first-touch page faults again (5 MB at
    N=512, V=2,516: its zero fill alone took 1.2 ms a step in the profile; reusing one buffer saved about 5 ms of
    a 68 ms beam-4 decode of 128 sentences, 1 thread)."""
    idx = None if live is None else live.nonzero()[:, 0]
    all_rows = idx is None or 4 * idx.shape[0] > 3 * out.shape[0]
    if torch.is_grad_enabled():  # out= ops record no gradient
        if all_rows:
            return dense(out)
        logits = out.new_zeros(out.shape[0], dense.out_features)
        return logits.index_copy(0, idx, dense(out.index_select(0, idx)))
    buffers = {} if buffers is None else buffers
    logits = _scratch(buffers, "logits", (out.shape[0], dense.out_features), out)
    if all_rows:
        return _linear_into(dense, out, logits)
    logits.index_fill_(0, (~live).nonzero()[:, 0], 0.0)
    if idx.shape[0]:
        part = _scratch(buffers, "live", logits.shape, out)[:idx.shape[0]]
        logits.index_copy_(0, idx, _linear_into(dense, out.index_select(0, idx), part))
    return logits


def _linear_into(dense: nn.Linear, x, out):
    """``dense(x)`` without autograd: in ``out``, or a new tensor where oneDNN runs the product faster on this CPU
    (s2s_fused/_cpu_linear.py); use the return value."""
    return cpu_linear(x, dense.weight, dense.bias, out=out)


def _project(memory, weight):
    """``F.linear(memory (B, S, D), weight)``, through the faster CPU library when no gradient is recorded."""
    if torch.is_grad_enabled():
        return F.linear(memory, weight)
    B, S, D = memory.shape
    # contiguous: the GRU's context weights are a column slice, which oneDNN multiplies very slowly
    return cpu_linear(memory.reshape(B * S, D), weight.contiguous()).view(B, S, weight.shape[0])


def masked_softmax(scores, valid_len):
    """Softmax over the last axis of ``scores (N, T)`` ignoring positions ``>= valid_len (N,)``."""
    mask = torch.arange(scores.shape[-1], device=scores.device)[None, :] < valid_len[:, None]
    return torch.softmax(scores.masked_fill(~mask, -1e6), dim=-1)


class Encoder(nn.Module):
    """Embedding + multi-layer (optionally bidirectional) GRU/LSTM. ``forward(src (B, T))`` ->
    ``(outputs (B, T, D*H), h (L*D, B, H), c or None)``."""

    def __init__(self, cfg, backend):
        super().__init__()
        self.embedding = nn.Embedding(cfg["src_vocab_size"], cfg["embed_size"])
        self.rnn = make_layer(cfg["cell"], cfg["embed_size"], cfg["hidden_size"], cfg["num_layers"],
                              cfg["dropout"], cfg["bidirectional"], backend)
        self.lstm = cfg["cell"] == "lstm"

    def forward(self, src):
        out, state = self.rnn(self.embedding(src))
        h, c = state if self.lstm else (state, None)
        return out, h, c


class PlainDecoder(nn.Module):
    """d2l's Seq2SeqDecoder: input = [embedding; context] at every step, context = initial top-layer state."""

    grouped_source = False  # no source-side entries in its state

    def __init__(self, cfg, backend):
        super().__init__()
        E, H = cfg["embed_size"], cfg["hidden_size"]
        self.lstm = cfg["cell"] == "lstm"
        self.embedding = nn.Embedding(cfg["tgt_vocab_size"], E)
        self.rnn = make_layer(cfg["cell"], E + H, H, cfg["num_layers"], cfg["dropout"], False, backend)
        self.dense = nn.Linear(H, cfg["tgt_vocab_size"])

    def init_state(self, memory, mem_len, h, c, steps=None):
        state = {"h": h.transpose(0, 1), "context": h[-1]}
        if self.lstm:
            state["c"] = c.transpose(0, 1)
        return state

    def _run(self, tokens, state):
        emb = self.embedding(tokens)                                       # (B, T, E)
        ctx = state["context"][:, None, :].expand(-1, emb.shape[1], -1)  # (B, T, H)
        h0 = state["h"].transpose(0, 1).contiguous()
        hx = (h0, state["c"].transpose(0, 1).contiguous()) if self.lstm else h0
        out, new = self.rnn(torch.cat([emb, ctx], -1), hx)
        state = dict(state)
        if self.lstm:
            state["h"], state["c"] = new[0].transpose(0, 1), new[1].transpose(0, 1)
        else:
            state["h"] = new.transpose(0, 1)
        return out, state

    def forward(self, tokens, state):
        return self.dense(self._run(tokens, state)[0])

    def step(self, tokens, state, live=None, buffers=None):
        out, state = self._run(tokens[:, None], state)
        return output_logits(self.dense, out[:, 0], live, buffers), state


class AttentionDecoder(nn.Module):
    """Bahdanau (additive, queried with the previous state, context concatenated to the input) or Luong (dot /
    general, queried with the new state, attentional state fed to the output and to the next input)."""

    def __init__(self, cfg, backend, memory_size):
        super().__init__()
        E, H, V = cfg["embed_size"], cfg["hidden_size"], cfg["tgt_vocab_size"]
        self.kind, self.lstm = cfg["attention"], cfg["cell"] == "lstm"
        self.embedding = nn.Embedding(V, E)
        if self.kind == "bahdanau":
            # score(q, k) = w_v . tanh(W_q q + W_k k); W_k k is computed once per source (state["keys"]).
            self.key_proj = nn.Linear(memory_size, H, bias=False)
            self.query_proj = nn.Linear(H, H, bias=False)
            self.score_v = nn.Linear(H, 1, bias=False)
            rnn_in = E + memory_size
        else:
            # general: score(h, m) = h . W_a m; dot: h . m (a projection only when memory is 2H wide).
            if cfg["score"] == "general" or memory_size != H:
                self.key_proj = nn.Linear(memory_size, H, bias=False)
            else:
                self.key_proj = nn.Identity()
            self.combine = nn.Linear(memory_size + H, H, bias=False)
            rnn_in = E + H
        self.dropout = cfg["dropout"]
        self.rnn = CellStack(cfg["cell"], rnn_in, H, cfg["num_layers"], cfg["dropout"], backend)
        self.dense = nn.Linear(H, V)
        self.memory_size, self.backend = memory_size, backend
        self._table_cache = None
        # The fused decoder step (fused_core / memory_core): Bahdanau attention feeding one GRU layer, on
        # s2s_fused's backends.
        cell = self.rnn.cells[0]
        self.fused = (backend != "torch" and self.kind == "bahdanau" and not self.lstm and cfg["num_layers"] == 1
                      and getattr(cell, "reset_after", False) and cell.bias_ih is not None)
        # Luong attention through the dot_attention op (one pass per query row where the eager step ran two bmm,
        # a masked softmax and their backward: ~1.3 ms a step at B=64 S=10 H=256, 1 thread, AMD EPYC Zen 3).
        self.dot_op = backend != "torch" and self.kind == "luong"
        # Whether the attention takes the source side with one row per sentence for its R hypotheses.
        self.grouped_source = self.fused or self.dot_op

    def init_state(self, memory, mem_len, h, c, steps=None):
        """``steps``: the number of decoder steps that will run from this state, when known (teacher forcing)."""
        if self.fused:
            # Per source, once: the keys W_k m_s and the values W_ih_ctx m_s (B, S, 3H). The GRU's input projection
            # of the context is linear in the attention weights, W_ih_ctx sum_s a_s m_s = sum_s a_s (W_ih_ctx m_s),
            # so a step attends over the projected values instead of running a (N, 2H) x (2H, 3H) GEMM. That pays
            # off over at least S steps (decoding); a teacher-forced target shorter than the source (most
            # batches: the target is trimmed to its longest sentence, the source is not) costs fewer FLOPs with
            # the context projected at each step: T (B, 2H) x (2H, 3H) GEMMs instead of one (B*S, 2H) x (2H, 3H),
            # and the same in the backward pass (memory_core, "memory" in the state).
            if not torch.is_grad_enabled() and not self.training:
                self._check_input_table()
            # One copy of the encoder's output in batch-first order (s2s_fused's layers return a time-major
            # tensor viewed batch first), read as it is by both projections and the attention; without it each
            # projection would copy it again.
            memory = memory.contiguous()
            state = {"h": h.transpose(0, 1), "keys": _project(memory, self.key_proj.weight), "mem_len": mem_len}
            if steps is not None and steps < memory.shape[1]:
                state["memory"] = memory
            else:
                state["values_proj"] = _project(memory, self._context_weight())
            return state
        if self.dot_op:
            # The op reads its operands contiguous: the encoder's time-major output, viewed batch first, would be
            # copied at every step's forward and backward (21 copies of (64, 10, 512) a training step at bench_seq2seq's
            # Luong shape: 9 ms of 180).
            memory = memory.contiguous()
        state = {"h": h.transpose(0, 1), "memory": memory, "keys": self.key_proj(memory), "mem_len": mem_len}
        if self.lstm:
            state["c"] = c.transpose(0, 1)
        if self.kind == "luong":
            state["feed"] = memory.new_zeros(memory.shape[0], h.shape[-1])
        return state

    def _attend(self, scores, state):
        weights = masked_softmax(scores, state["mem_len"])                       # (N, T)
        return torch.bmm(weights[:, None, :], state["memory"])[:, 0]             # (N, Dm)

    def _core(self, emb, state):
        """One step from the input embedding ``(N, E)``: returns the output-layer input ``(N, H)`` and the state."""
        state = dict(state)
        if self.kind == "bahdanau":
            q = self.query_proj(state["h"][:, -1])                                # (N, H)
            scores = self.score_v(torch.tanh(state["keys"] + q[:, None, :]))[..., 0]
            x = torch.cat([self._attend(scores, state), emb], -1)
            h, c = self.rnn(x, state["h"], state.get("c"))
            out = h[:, -1]
        else:
            h, c = self.rnn(torch.cat([emb, state["feed"]], -1), state["h"], state.get("c"))
            top = h[:, -1]
            if self.dot_op:
                ctx, _ = dot_attention(top, state["keys"], state["memory"], state["mem_len"],
                                       backend=op_backend(self.backend))
            else:
                ctx = self._attend(torch.bmm(state["keys"], top[:, :, None])[..., 0], state)
            out = torch.tanh(self.combine(torch.cat([ctx, top], -1)))
            state["feed"] = out
        state["h"] = h
        if self.lstm:
            state["c"] = c
        return out, state

    # ---- the fused decoder step (self.fused)

    def _context_weight(self):
        """The GRU's input weights for the context part of its input [context; embedding]: (3H, Dm)."""
        return self.rnn.cells[0].weight_ih[:, :self.memory_size]

    def _table_params(self):
        cell = self.rnn.cells[0]
        return self.embedding.weight, cell.weight_ih[:, self.memory_size:], cell.bias_ih

    def _check_input_table(self):
        """At each encode for decoding: keep the input-gate table only if the weights it was built from are still
        equal to the ones it copied. Version counters do not see every in-place update (torch's
        Adam(fused=True) writes the parameters without moving them, ``.data`` writes bypass them); comparing
        about 1 MB of weights costs far less than rebuilding the table at every encode (a (V, E) x (E, 3H) GEMM:
        3.4 ms of a 90 ms beam-4 decode of 128 sentences, default model, 1 thread)."""
        cached = self._table_cache
        if cached is not None and not all(a.shape == p.shape and a.dtype == p.dtype and a.device == p.device
                                          and torch.equal(a, p) for a, p in zip(cached[1], self._table_params())):
            self._table_cache = None

    def _input_table(self):
        """(V, 3H): every token's embedding through the GRU's input projection, bias included (Devlin et al.
        2017; OpenNMT's CPU decoder): a decoding step gathers rows instead of multiplying. Built when missing,
        when a weight's version counter moved, or when an encode found the weights changed otherwise
        (_check_input_table); used only where no gradient is recorded."""
        params = self._table_params()
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if self._table_cache is None or self._table_cache[0] != key:
            with torch.no_grad():
                table = F.linear(params[0], params[1], params[2])
                self._table_cache = (key, tuple(p.detach().clone() for p in params), table)
        return self._table_cache[2]

    def _embedding_gates(self, tokens):
        """The embedding part of the GRU's input projection, W_ih_emb dropout(E[tokens]) + b_ih: (..., 3H)."""
        if not torch.is_grad_enabled() and not self.training:
            table = self._input_table()
            return table.index_select(0, tokens.reshape(-1)).view(*tokens.shape, table.shape[1])
        cell = self.rnn.cells[0]
        emb = F.dropout(self.embedding(tokens), self.dropout, self.training)
        return F.linear(emb, cell.weight_ih[:, self.memory_size:], cell.bias_ih)

    def fused_core(self, gates_emb, state):
        """One fused step over projected values (``"values_proj"`` in the state): attention over them gives the
        context's input gates directly, plus the embedding's (``gates_emb`` (N, 3H)), then the GRU update (reset
        after W_hn h, as torch). Returns the new top-layer state (N, H) and the state."""
        cell = self.rnn.cells[0]
        h = state["h"][:, 0]
        ctx, _ = additive_attention(h, state["keys"], state["values_proj"], self.query_proj.weight,
                                    self.score_v.weight[0], state["mem_len"], backend=op_backend(self.backend))
        gh = F.linear(h, cell.weight_hh, cell.bias_hh)
        H = h.shape[-1]
        if torch.is_grad_enabled():
            gi = ctx + gates_emb
            r, z = torch.sigmoid(gi[:, :2 * H] + gh[:, :2 * H]).chunk(2, dim=-1)
            n = torch.tanh(torch.addcmul(gi[:, 2 * H:], r, gh[:, 2 * H:]))
        else:
            # The same operations in place on the op's fresh output: at beam-4 decoding sizes each fresh
            # temporary is 0.25-0.75 MB, which the allocator maps and page-faults anew at every step.
            gi = ctx.add_(gates_emb)
            rz = gi[:, :2 * H].add_(gh[:, :2 * H]).sigmoid_()
            r, z = rz[:, :H], rz[:, H:]
            n = gi[:, 2 * H:].addcmul_(r, gh[:, 2 * H:]).tanh_()
        h = torch.lerp(n, h, z)  # (1 - z) n + z h
        state = dict(state)
        state["h"] = h[:, None]
        return h, state

    def memory_core(self, emb, state):
        """One fused step over the encoder's output itself (``"memory"`` in the state: fewer decoder steps than
        source positions): the attention op's context and the (dropped-out) embedding ``emb`` (N, E) go through
        the GRU cell op, which runs both GEMMs and the update in one op with one backward node (the eager update
        it replaces was eight ops and their backward nodes a step; the default model's training step, three
        interleaved A/B runs, 1 thread, AMD EPYC: 38.2 -> 35.5, 34.8 -> 32.5 and 32.8 -> 32.5 ms).
        Returns the new top-layer state (N, H) and the state."""
        h = state["h"][:, 0]
        ctx, _ = additive_attention(h, state["keys"], state["memory"], self.query_proj.weight, self.score_v.weight[0],
                                    state["mem_len"], backend=op_backend(self.backend))
        h = self.rnn.cells[0](torch.cat([ctx, emb], -1), h)
        state = dict(state)
        state["h"] = h[:, None]
        return h, state

    # The steps' inputs come from unbind, not from indexing each step: the backward of x[:, t] is a zeroed copy of
    # all of x per step, summed up step by step; unbind's backward stacks the steps' gradients once. Same numbers;
    # the default model's training step 1-4 % faster (1 thread, AMD EPYC Zen 3: 197.6 -> 190.6, 154.1 -> 153.3 ms).
    def forward(self, tokens, state):
        if self.fused:
            outs = []
            if "values_proj" in state:
                gates_emb = self._embedding_gates(tokens)  # (B, T, 3H): one GEMM for every step
                for g_t in gates_emb.unbind(1):
                    out, state = self.fused_core(g_t, state)
                    outs.append(out)
            else:
                emb = F.dropout(self.embedding(tokens), self.dropout, self.training)
                for e_t in emb.unbind(1):
                    out, state = self.memory_core(e_t, state)
                    outs.append(out)
            return self.dense(F.dropout(torch.stack(outs, 1), self.dropout, self.training))
        emb = F.dropout(self.embedding(tokens), self.dropout, self.training)     # (B, T, E)
        outs = []
        for e_t in emb.unbind(1):
            out, state = self._core(e_t, state)
            outs.append(out)
        return self.dense(F.dropout(torch.stack(outs, 1), self.dropout, self.training))

    def step(self, tokens, state, live=None, buffers=None):
        if not self.fused:
            out, state = self._core(self.embedding(tokens), state)
        elif "values_proj" in state:
            out, state = self.fused_core(self._embedding_gates(tokens), state)
        else:
            out, state = self.memory_core(F.dropout(self.embedding(tokens), self.dropout, self.training), state)
        return output_logits(self.dense, out, live, buffers), state


class Seq2Seq(nn.Module):
    """Encoder-decoder. ``forward(src (B, S), src_len (B,), dec_in (B, T)) -> logits (B, T, V)`` with teacher
    forcing; ``encode`` + ``step`` for decoding."""

    def __init__(self, config: dict, backend: str = "fused"):
        super().__init__()
        if backend not in BACKENDS:
            from .errors import UserError

            raise UserError(f"backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        cfg = check_config(config)
        self.config, self.backend = cfg, backend
        H = cfg["hidden_size"]
        self.encoder = Encoder(cfg, backend)
        self.bidirectional = cfg["bidirectional"]
        self.lstm = cfg["cell"] == "lstm"
        if self.bidirectional:
            self.bridge_h = nn.Linear(2 * H, H)
            if self.lstm:
                self.bridge_c = nn.Linear(2 * H, H)
        memory_size = H * (2 if self.bidirectional else 1)
        if cfg["attention"] == "none":
            self.decoder = PlainDecoder(cfg, backend)
        else:
            self.decoder = AttentionDecoder(cfg, backend, memory_size)
        if cfg["tie_embeddings"]:  # one (V, E) matrix: input embedding and output projection
            self.decoder.dense.weight = self.decoder.embedding.weight
        init_weights(self, seed=0)

    def _join(self, s):
        """``(L*2, B, H)`` forward/backward final states -> ``(L, B, 2H)`` [forward; backward] per layer."""
        L2, B, H = s.shape
        s = s.view(L2 // 2, 2, B, H)
        return torch.cat([s[:, 0], s[:, 1]], -1)

    def encode(self, src, src_len, steps=None):
        """The decoder's initial state; ``steps``: how many decoder steps will run from it, if known."""
        memory, h, c = self.encoder(src)
        if self.bidirectional:
            h = torch.tanh(self.bridge_h(self._join(h)))
            if self.lstm:
                c = self.bridge_c(self._join(c))
        return self.decoder.init_state(memory, src_len, h, c, steps)

    def forward(self, src, src_len, dec_in):
        return self.decoder(dec_in, self.encode(src, src_len, steps=dec_in.shape[1]))

    def step(self, tokens, state, live=None, *, buffers=None):
        """``tokens (N,)``, batch-first ``state`` -> ``(logits (N, V), state)``. ``live`` (N,) bool or None: the
        rows whose logits are read (decode's ``live_rows``); the others come out 0 or as without ``live``.
        ``buffers``: None, or one dict passed to every step of a decode: without autograd the logits are then
        written into memory kept there, which the next step with that dict overwrites."""
        check_live_rows(live, tokens.shape[0])
        if buffers is not None and not isinstance(buffers, dict):
            raise TypeError(f"buffers: expected a dict or None, got {type(buffers).__name__}")
        return self.decoder.step(tokens, state, live, buffers)

    # The decoding state's source-side entries: one per source sentence, the same for each of its hypotheses.
    SOURCE_SIDE = ("memory", "keys", "values_proj", "mem_len")

    def reorder_state(self, state, index):
        """Beam search's reorder (decode.beam_search's ``reorder_state``): rows ``index`` of every entry. Beam search
        first expands B rows to B*K, then reorders hypotheses among the K beams of each sentence only, which leaves
        the source-side entries as they are: those are not copied again (at the default model's beam-4 shape they
        are most of the state: (N, S, 3H) projected values, (N, S, H) keys). The fused decoder step's attention
        (and the Luong decoder's, on an s2s_fused backend) takes them with B rows for N = R*B hypotheses (R
        consecutive rows per sentence), so for it they are not expanded either: one copy per sentence, where an
        expansion copied 5.7 ms worth of a beam-4 decode.
        An ``index`` with as many rows as the state must keep each row among its sentence's rows (beam search's
        reorders do); one that changes the number of rows may take any rows."""
        rows = state["h"].shape[0]
        grouped = None
        out = {}
        for key, value in state.items():
            if key not in self.SOURCE_SIDE:
                out[key] = value.index_select(0, index)
                continue
            if index.shape[0] == rows:  # as many hypotheses: beam search's reorder within each sentence's rows
                out[key] = value
                continue
            per_source = rows // value.shape[0]  # the rows sharing one source row now
            if grouped is None:
                grouped = self._keeps_source_rows(index, per_source, value.shape[0])
            out[key] = value if grouped else value.index_select(0, index // per_source)
        return out

    def _keeps_source_rows(self, index, per_source, sources):
        """Whether the new rows ``index`` keep the grouped layout over ``sources`` source rows: new row j comes from
        a row of source row j // R' (R' = len(index) / sources), as beam search's expansion does; only the fused
        decoder step and the dot attention op take source rows grouped."""
        n = index.shape[0]
        if not self.decoder.grouped_source or n % sources:
            return False
        want = torch.arange(n, device=index.device) // (n // sources)
        return bool(torch.equal(index // per_source, want))


def init_weights(model: nn.Module, seed: int = 0) -> None:
    """Deterministic initialisation by parameter name, independent of the backend's module classes: Xavier-uniform
    for weight matrices (as d2l), N(0, 1) for embeddings, U(-1/sqrt(H), 1/sqrt(H)) for biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embedding" in name:
                w = torch.randn(p.shape, generator=g)
            elif p.dim() >= 2:
                fan_out, fan_in = p.shape[0], p.shape[1]
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                w = torch.empty(p.shape).uniform_(-bound, bound, generator=g)
            else:
                bound = 1.0 / math.sqrt(p.shape[0] if p.shape[0] > 0 else 1)
                w = torch.empty(p.shape).uniform_(-bound, bound, generator=g)
            p.copy_(w.to(p.dtype))


class EagerMaskedSoftmaxCELoss(nn.Module):
    """d2l's MaskedSoftmaxCELoss in plain torch: ``forward(pred (B, T, V), label (B, T), valid_len (B,)) -> (B,)``,
    the cross-entropy of the first ``valid_len`` steps of each row, summed and divided by T."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, pred, label, valid_len):
        mask = torch.arange(label.shape[1], device=label.device)[None, :] < valid_len[:, None]
        ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), label.reshape(-1), reduction="none",
                             label_smoothing=self.label_smoothing)
        return (ce.view_as(label) * mask).mean(dim=1)


def make_loss(backend: str, label_smoothing: float = 0.0) -> nn.Module:
    """d2l's masked cross-entropy: eager for the ``"torch"`` backend, else s2s_fused.nn's fused one."""
    if backend == "torch":
        return EagerMaskedSoftmaxCELoss(label_smoothing)
    return fnn.MaskedSoftmaxCELoss(label_smoothing=label_smoothing, backend=op_backend(backend))
