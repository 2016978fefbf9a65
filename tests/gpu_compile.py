"""Compile every Triton kernel the package launches for a GPU (sm_90), without one.

Tests run the Triton kernels under the interpreter (TRITON_INTERPRET=1), which accepts code the GPU compiler
rejects (a tensor and a scalar returned from one function; ``.to()`` on an integer argument the launcher turned
into a constexpr because it equals 1). Here each kernel goes through the whole pipeline down to cubin with the
ptxas Triton ships: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``.

The configurations are not listed by hand: each family's launchers run on CPU tensors with their kernels replaced
by recorders (``record_launches``), over the shapes, dtypes and optional arguments below, and the launches are
compiled with the signature the Triton launcher would give them: tensors as typed pointers (16-byte aligned ones
with the divisibility hint), integers as i32 / i64 (multiples of 16 with the hint), an integer equal to 1 as a
constexpr, floats as fp32, and the constexpr arguments with their values (checked against Triton's own
specialisation where it exposes it). By default a covering subset (:func:`covering`), with ``--all`` every distinct
launch.

Usage: ``python -m tests.gpu_compile [--all] [FAMILY...]`` (no TRITON_INTERPRET) prints ``compiled N`` or
``SKIP: why``; tests call :func:`check_families`, which runs that in a subprocess (this process's kernels are
interpreted). GPU_COMPILE_WORKERS (default 2) compiles in that many forked processes.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time

TARGET = ("cuda", 90, 32)  # sm_90, warp size 32

FAMILIES = ("rnn_cell", "rnn_layer", "cross_entropy", "beam", "attention")


# ------------------------------------------------------------------------------------------------ recording


def _triton_type(dtype) -> str:
    import torch
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
            torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
            torch.bool: "u1"}[dtype]


def specialize(value):
    """(type, divisible by 16) of a non-constexpr argument, as Triton's launcher specialises it."""
    import torch
    if value is None:
        return "constexpr", False
    if isinstance(value, torch.Tensor):
        return "*" + _triton_type(value.dtype), value.data_ptr() % 16 == 0
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if value == 1:
            return "constexpr", False
        if -2**31 <= value < 2**31:
            return "i32", value % 16 == 0
        if value < 2**63:
            return "i64", value % 16 == 0
        return "u64", value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"unexpected kernel argument {value!r}")


class Launch:
    """One kernel launch as the GPU launcher would compile it."""

    def __init__(self, fn, args, kwargs):
        import triton
        self.fn = fn
        names = fn.arg_names
        options = {k: v for k, v in kwargs.items() if k not in names}
        bound = dict(zip(names, args))
        bound.update({k: v for k, v in kwargs.items() if k in names})
        missing = [n for n in names if n not in bound]
        if missing:
            raise TypeError(f"{fn.__name__}: no value for {missing}")
        self.signature, self.constexprs, self.aligned = {}, {}, []
        for i, (p, name) in enumerate(zip(fn.params, names)):
            v = bound[name]
            if p.is_constexpr:
                ty, div = "constexpr", False
            else:
                ty, div = specialize(v)
            self.signature[name] = ty
            if ty == "constexpr":
                self.constexprs[(i,)] = v.value if isinstance(v, triton.language.constexpr) else v
            elif div:
                self.aligned.append(i)
        self.num_warps = options.pop("num_warps", 4)
        self.num_stages = options.pop("num_stages", 3)
        if options:
            raise TypeError(f"{fn.__name__}: unexpected launch options {sorted(options)}")
        self.args = bound

    def key(self):
        return (self.fn.__name__, tuple(self.signature.items()), tuple(sorted(map(repr, self.constexprs.items()))),
                tuple(self.aligned), self.num_warps, self.num_stages)

    def describe(self):
        ones = [n for n, t in self.signature.items() if t == "constexpr" and not self.fn.params[
            self.fn.arg_names.index(n)].is_constexpr]
        consts = {n: self.args[n] for n in self.fn.arg_names if self.fn.params[self.fn.arg_names.index(n)].is_constexpr}
        ptrs = sorted({t for t in self.signature.values() if t.startswith("*")})
        text = ", ".join(f"{k}={_short(v)}" for k, v in consts.items())
        return (f"{self.fn.__name__}[{text}] ptrs={'/'.join(ptrs)}"
                + (f" ==1: {','.join(ones)}" if ones else "") + f" warps={self.num_warps}")

    def compile(self):
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        attrs = {(i,): [["tt.divisibility", 16]] for i in self.aligned}
        src = ASTSource(fn=self.fn, signature=self.signature, constexprs=self.constexprs, attrs=attrs)
        return triton.compile(src, target=GPUTarget(*TARGET),
                              options=dict(num_warps=self.num_warps, num_stages=self.num_stages))


def _short(v):
    s = getattr(v, "name", None) or str(v)
    return s.replace("triton.language.", "")


class _Recorder:
    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(Launch(self.fn, args, kwargs))
        return launch


@contextlib.contextmanager
def record_launches(module):
    """Within the block, every launch ``kernel[grid](...)`` of a @triton.jit function of ``module`` (looked up in
    its globals at call time, as the launchers do) is recorded instead of run; yields the list of Launch."""
    import triton
    log = []
    jitted = {n: v for n, v in vars(module).items() if isinstance(v, triton.runtime.JITFunction)}
    try:
        for n, v in jitted.items():
            setattr(module, n, _Recorder(v, log))
        yield log
    finally:
        for n, v in jitted.items():
            setattr(module, n, v)


# ------------------------------------------------------------------------------------------------ scenarios
# Each runs the family's launchers over the inputs whose launches differ in what they compile: every dtype the
# op accepts, optional operands present and absent, modes, and sizes / strides equal to 1 (constexprs).

FLOATS = ("float32", "bfloat16", "float16", "float64")


def _dt(name):
    import torch
    return getattr(torch, name)


def _rnn_cell():
    import torch
    from s2s_fused.triton import rnn_cell as tri
    ops = torch.ops.s2s_fused
    with record_launches(tri) as log:
        for dtype in map(_dt, FLOATS):
            for B, I, H, bias_options in ((3, 5, 7, (True, False)), (1, 1, 1, (True,))):
                if B == 1 and dtype != torch.float32:
                    continue  # the size-1 constexprs change no dtype-dependent code
                for strided in (False, True) if B > 1 and dtype == torch.float32 else (False,):
                    # strided: x, hx and the weights transposed in memory (the launcher passes their strides)
                    x = torch.randn(I, B, dtype=dtype).t() if strided else torch.randn(B, I, dtype=dtype)
                    h = torch.randn(H, B, dtype=dtype).t() if strided else torch.randn(B, H, dtype=dtype)
                    c = torch.randn(B, H, dtype=dtype)
                    for bias in bias_options:
                        for G, kind in ((4, "lstm"), (3, "gru")):
                            w_ih, w_hh = torch.randn(G * H, I, dtype=dtype), torch.randn(G * H, H, dtype=dtype)
                            if strided:
                                w_ih, w_hh = w_ih.t().contiguous().t(), w_hh.t().contiguous().t()
                            b = (torch.randn(G * H, dtype=dtype), torch.randn(G * H, dtype=dtype)) if bias \
                                else (None, None)
                            if kind == "lstm":
                                _, c1, ws = ops.lstm_cell_forward_triton(x, h, c, w_ih, w_hh, *b)
                                for gh, gc in ((h, c), (h, None), (None, c)):  # HAS_DH / HAS_DC
                                    ops.lstm_cell_backward_triton(gh, gc, x, h, c, w_ih, w_hh, ws, c1, [True] * 6)
                            else:
                                for ra in (True, False):
                                    _, ws = ops.gru_cell_forward_triton(x, h, w_ih, w_hh, *b, ra)
                                    ops.gru_cell_backward_triton(h, x, h, w_ih, w_hh, ws, ra, [True] * 6)
    return log


def _rnn_layer():
    import torch
    from s2s_fused import config
    from s2s_fused.triton import rnn_layer as tri
    ops = torch.ops.s2s_fused
    with record_launches(tri) as log:
        for persistent in (True, False):
            with config.override(TRITON_NO_PERSISTENT=not persistent):
                for dtype in map(_dt, FLOATS):
                    for T, B, I, H in ((3, 5, 4, 70), (1, 1, 1, 1)):
                        if B == 1 and dtype != torch.float32:
                            continue
                        for lengths, reverse, bias in ((True, True, True), (False, False, False)):
                            lens = torch.tensor([T] + [max(1, T - 1)] * (B - 1)) if lengths else None
                            x = torch.randn(T, B, I, dtype=dtype)
                            h0, c0 = torch.randn(B, H, dtype=dtype), torch.randn(B, H, dtype=dtype)
                            go = torch.randn(T, B, H, dtype=dtype)
                            for G, kind in ((4, "lstm"), (3, "gru")):
                                w_ih, w_hh = torch.randn(G * H, I, dtype=dtype), torch.randn(G * H, H, dtype=dtype)
                                b = ((torch.randn(G * H, dtype=dtype), torch.randn(G * H, dtype=dtype)) if bias
                                     else (None, None))
                                if kind == "lstm":
                                    _, _, _, hs, cs, ws = ops.lstm_layer_forward_triton(x, h0, c0, w_ih, w_hh, *b,
                                                                                        lens, reverse)
                                    if persistent:  # the backward has no persistent path
                                        ops.lstm_layer_backward_triton(go if bias else None, h0, c0, x, w_ih,
                                                                       w_hh, hs, cs, ws, lens, reverse)
                                        # projected (proj_size): its own per-step path either way
                                        P = max(1, H // 2)
                                        hp, w_hp = torch.randn(B, P, dtype=dtype), torch.randn(G * H, P, dtype=dtype)
                                        w_hr = torch.randn(P, H, dtype=dtype)
                                        _, _, _, hs, cs, ws = ops.lstm_layer_forward_triton(
                                            x, hp, c0, w_ih, w_hp, *b, lens, reverse, w_hr)
                                        ops.lstm_layer_backward_triton(go[..., :P] if bias else None, hp, c0, x,
                                                                       w_ih, w_hp, hs, cs, ws, lens, reverse, w_hr)
                                else:
                                    for ra in (True, False):
                                        _, _, hs, ws = ops.gru_layer_forward_triton(x, h0, w_ih, w_hh, *b, lens,
                                                                                    reverse, ra)
                                        if persistent:
                                            ops.gru_layer_backward_triton(go if bias else None, h0, x, w_ih, w_hh,
                                                                          hs, ws, lens, reverse, ra)
    return log


def _cross_entropy():
    import torch
    from s2s_fused.triton import cross_entropy as tri
    ops = torch.ops.s2s_fused
    with record_launches(tri) as log:
        for dtype in map(_dt, FLOATS):
            for B, T, V in ((2, 3, 37), (1, 1, 1)):
                if V == 1 and dtype != torch.float32:
                    continue
                for three_d, valid, smooth in ((True, True, 0.1), (False, False, 0.0)):
                    logits = torch.randn(B, T, V, dtype=dtype) if three_d else torch.randn(B * T, V, dtype=dtype)
                    target = torch.randint(0, V, logits.shape[:-1])
                    vl = torch.full((B,), T) if valid else None
                    ignore = 1 if V == 1 else -100  # an ignore_index of 1 (a common pad id) is a constexpr
                    loss, lse = ops.masked_ce_forward_triton(logits, target, vl, ignore, smooth)
                    ops.masked_ce_backward_triton(torch.ones_like(loss), logits, target, vl, lse, ignore, smooth)
    return log


# Large vocabularies with large k: the biggest tiles and the most selection rounds the launcher produces (with
# the rounds unrolled over a 16K-key tile, GPT-2's 50257 at k = 64 takes ptxas minutes; 256000 reads chunks of
# several tiles).
BEAM_LARGE = ((2, 5, 50257, 64), (1, 8, 256000, 64), (2, 4, 32000, 10))


def _beam():
    import torch
    from s2s_fused.triton import beam as tri
    with record_launches(tri) as log:
        for dtype in map(_dt, FLOATS[:3]):  # float64 logits take the torch path
            # sizes and eos_id equal to 1 are constexprs (eos_id < V, which the op checks)
            for B, K, V, k, eos in ((2, 3, 50, 4, 7), (2, 3, 50, 4, 1), (1, 1, 1, 1, 0)):
                if (B == 1 or eos == 1) and dtype != torch.float32:
                    continue
                logits = torch.randn(B, K, V, dtype=dtype)
                if B > 1 and eos != 1 and dtype == torch.float32:  # vocabulary not contiguous: stride_v an i32
                    logits = torch.randn(B, V, K, dtype=dtype).transpose(1, 2)
                scores = torch.randn(B, K)
                for fin in (torch.zeros(B, K, dtype=torch.bool), None):
                    tri.beam_search_topk(logits, scores, k, fin, eos if fin is not None else None)
        for B, K, V, k in BEAM_LARGE:
            logits, scores = torch.randn(B, K, V, dtype=torch.float16), torch.randn(B, K)
            for fin in (torch.zeros(B, K, dtype=torch.bool), None):
                tri.beam_search_topk(logits, scores, k, fin, 3 if fin is not None else None)
    return log


def _attention():
    import torch
    from s2s_fused.triton import attention as tri
    with record_launches(tri) as log:
        for dtype in map(_dt, FLOATS):
            # S, H, Dv equal to 1 are constexprs; S = 130 takes the widest score tile and the narrowest chunks; R > 1
            # query rows per source row: R a runtime argument, the backward's per-row grads in the accumulate type
            for B, S, H, Hq, Dv, R in ((3, 5, 17, 4, 33, 1), (1, 1, 1, 1, 1, 1), (2, 130, 40, 3, 20, 1),
                                       (3, 5, 17, 4, 33, 4)):
                args = [torch.randn(*shape, dtype=dtype)
                        for shape in ((R * B, Hq), (B, S, H), (B, S, Dv), (H, Hq), (H,))]
                args.append(torch.full((B,), S))
                ctx, w, qp = tri.additive_attention_forward(*args)
                for gw in (torch.ones_like(w), None):
                    tri.additive_attention_backward(torch.ones_like(ctx), gw, *args, qp)
                # the dot score: query as wide as the keys, no w_q or v
                dot_args = [torch.randn(R * B, H, dtype=dtype), args[1], args[2], args[5]]
                ctx, w = tri.dot_attention_forward(*dot_args)
                for gw in (torch.ones_like(w), None):
                    tri.dot_attention_backward(torch.ones_like(ctx), gw, *dot_args)
    return log


SCENARIOS = {"rnn_cell": _rnn_cell, "rnn_layer": _rnn_layer, "cross_entropy": _cross_entropy, "beam": _beam,
             "attention": _attention}


def unlaunched_kernels(family, found):
    """@triton.jit functions the family's module launches (``name[`` in its source) that its scenario never
    launched: a kernel added without a scenario here would otherwise go unchecked."""
    import importlib
    import inspect
    import re

    import triton
    module = importlib.import_module(f"s2s_fused.triton.{family}")
    jitted = {n for n, v in vars(module).items() if isinstance(v, triton.runtime.JITFunction)}
    launched = set(re.findall(r"\b(\w+)\[", inspect.getsource(module))) & jitted
    return sorted(launched - {launch.fn.__name__ for launch in found})


def launches(family):
    """The distinct launches of a family's launchers over its scenario, in first-seen order. Launches that differ
    only in which pointers / integers are 16-byte aligned (time slices of one buffer) count as one: alignment
    changes the vector width of loads and stores, not what the front end accepts."""
    seen = {}
    for launch in SCENARIOS[family]():
        seen.setdefault(launch.key()[:3] + launch.key()[4:], launch)
    return list(seen.values())


def covering(all_launches):
    """A subset of the launches that still shows every kernel with each value of each of its constexprs (flags,
    dtypes, blocks), each pointer type, each (floating pointer types, arguments specialised to 1) pair, and each of
    its modes (KIND / STAGE) with each of those: greedily the launch with the most features not yet covered.
    Compiling every distinct launch (``--all``) takes minutes."""
    def features(launch):
        name = launch.fn.__name__
        consts = {n: repr(v) for (i,), v in launch.constexprs.items() for n in [launch.fn.arg_names[i]]}
        ones = tuple(sorted(n for n, v in consts.items() if not launch.fn.params[launch.fn.arg_names.index(n)]
                            .is_constexpr))
        ptrs = {t for t in launch.signature.values() if t.startswith("*")}
        floats = tuple(sorted(t for t in ptrs if t[1:] in ("fp16", "bf16", "fp32", "fp64")))
        single = {(n, v) for n, v in consts.items()} | {("args", floats, ones), ("warps", launch.num_warps)}
        # and each mode (the constexpr that selects most of the code) with each of the other values
        modes = [(n, consts[n]) for n in ("KIND", "STAGE") if n in consts]
        return ({(name,) + f for f in single} | {(name,) + m + f for m in modes for f in single}
                | {(name, "ptr", t) for t in ptrs})
    todo = [(launch, features(launch)) for launch in all_launches]
    uncovered = set().union(*(f for _, f in todo)) if todo else set()
    chosen = []
    while uncovered:
        launch, f = max(todo, key=lambda lf: len(lf[1] & uncovered))
        chosen.append(launch)
        uncovered -= f
    order = {id(launch): i for i, launch in enumerate(all_launches)}
    return sorted(chosen, key=lambda launch: order[id(launch)])


# ------------------------------------------------------------------------------------------------ driver


def _api_problem():
    """Why this Triton cannot compile for sm_90 here (None when it can)."""
    try:
        import inspect

        import triton
        import triton.backends
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource
    except ImportError as e:
        return f"triton compile API not importable ({e})"
    if "nvidia" not in triton.backends.backends:
        return "no nvidia backend in this triton"
    params = inspect.signature(ASTSource).parameters
    if not {"fn", "signature", "constexprs", "attrs"} <= set(params):
        return f"ASTSource has another signature in triton {triton.__version__}: {list(params)}"

    @triton.jit
    def probe(x_ptr, n, K: triton.language.constexpr):
        pass
    if not (hasattr(probe, "arg_names") and [getattr(p, "is_constexpr", None) for p in getattr(probe, "params", [])]
            == [False, False, True]):
        return f"JITFunction has no arg_names / params[i].is_constexpr in triton {triton.__version__}"
    return None


def specialization_mismatches(launch):
    """Where :func:`specialize` disagrees with this Triton's own launcher specialisation (when the Triton has the
    native one, as 3.9 does; an empty list otherwise)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError:
        return []
    out = []
    for i, (p, name) in enumerate(zip(launch.fn.params, launch.fn.arg_names)):
        if p.is_constexpr:
            continue
        ty, attr = native_specialize_impl(BaseBackend, launch.args[name], False, True, True)[:2]
        ours = (launch.signature[name], i in launch.aligned)
        if ours != (ty, attr == "D"):
            out.append(f"{name}: ours {ours}, triton {(ty, attr)}")
    return out


# Checks of the compiled code, per kernel: the persistent program's block barriers must survive compilation.
CODE_CHECKS = {
    "_layer_persistent_forward_kernel": ("bar.sync", lambda k: "bar.sync" in k.asm["ptx"]),
}

# Seconds one configuration of a family may take to compile (front end to cubin, one core): a kernel whose
# unrolled code outgrows ptxas fails here, not on the GPU machine's clock. Generous, as a busy CI core is slow.
COMPILE_LIMIT_S = {"beam": 120}

_POOL_LAUNCHES = []


class _CompileTimeout(BaseException):  # not an Exception: nothing inside Triton's compile swallows it
    pass


def _on_alarm(signum, frame):
    raise _CompileTimeout


def _compile_one(i):
    family, launch = _POOL_LAUNCHES[i]
    limit = COMPILE_LIMIT_S.get(family)
    t0 = time.time()
    if limit:  # stop a runaway compile at its limit: ptxas is killed with it, Triton's own passes stop on return
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(limit)
    try:
        kernel = launch.compile()
        what, check = CODE_CHECKS.get(launch.fn.__name__, (None, None))
        if check is not None and not check(kernel):
            return f"compiled, but the code lacks {what}", time.time() - t0
        if limit and time.time() - t0 > limit:
            raise _CompileTimeout
        return None, time.time() - t0
    except _CompileTimeout:
        return f"compile took over the limit of {limit} s for {family}", time.time() - t0
    except Exception as e:  # noqa: BLE001  (report every failing configuration, not only the first)
        return _error_text(e), time.time() - t0
    finally:
        if limit:
            signal.alarm(0)


def _error_text(e):
    """The innermost cause of a compile error, with the function and source line of each level."""
    where = []
    while True:
        src, node = getattr(e, "src", None), getattr(e, "node", None)
        if src and node is not None and hasattr(node, "lineno"):
            line = src.split("\n")[node.lineno - 1].strip()
            where.append(f"{src.split('(')[0].replace('def ', '').strip()} line {node.lineno}: {line}")
        if e.__cause__ is None:
            break
        e = e.__cause__
    msg = getattr(e, "error_message", None) or (str(e).strip().splitlines() or [repr(e)])[-1]
    return f"{type(e).__name__}: {msg}" + "".join(f"\n       in {w}" for w in where)


def main(argv):
    everything = "--all" in argv
    families = [a for a in argv if not a.startswith("--")] or list(FAMILIES)
    problem = _api_problem()
    if problem:
        print(f"SKIP: {problem}")
        return 0
    t0 = time.time()
    for family in families:
        found = launches(family)
        chosen = found if everything else covering(found)
        print(f"{family}: {len(found)} distinct launches, compiling {len(chosen)}", flush=True)
        missing = unlaunched_kernels(family, found)
        if missing:
            print(f"FAIL {family}: kernels its scenario never launches: {missing}")
            return 1
        for launch in chosen:
            wrong = specialization_mismatches(launch)
            if wrong:
                print(f"FAIL {family}: {launch.describe()}\n     signature differs from triton's: {wrong}")
                return 1
        _POOL_LAUNCHES.extend((family, launch) for launch in chosen)
    jobs = list(_POOL_LAUNCHES)
    workers = max(1, min(int(os.environ.get("GPU_COMPILE_WORKERS", "2")), len(jobs)))
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_compile_one, range(len(jobs)), chunksize=1)
    else:
        results = [_compile_one(i) for i in range(len(jobs))]
    failures = 0
    for (family, launch), (err, secs) in zip(jobs, results):
        print(f"{'FAIL' if err else 'ok  '} {secs:5.1f} s {family}: {launch.describe()}")
        if err:
            failures += 1
            print(f"     {err}")
    print(f"{time.time() - t0:.1f} s with {workers} worker(s)")
    if failures:
        print(f"{failures} configuration(s) failed to compile")
        return 1
    print(f"compiled {len(jobs)}")
    return 0


def check_families(*families, timeout=600):
    """For tests: compile the families' kernels in a subprocess without TRITON_INTERPRET; skips (pytest.skip)
    without Triton, without its nvidia backend, or on a machine with a GPU (which runs the kernels for real, with
    a Triton that may have another API)."""
    import pytest
    import torch

    from s2s_fused.backend import is_available
    if not is_available("triton"):
        pytest.skip("triton not available")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: its tests compile and run the kernels for real")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "tests.gpu_compile", *families], env=env, cwd=root,
                       capture_output=True, text=True, timeout=timeout)
    if r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout.strip())
    fails = [line for line in r.stdout.splitlines() if line.startswith(("FAIL", "     "))]
    assert r.returncode == 0, "\n".join(fails) + "\n" + r.stderr[-3000:]
    assert "compiled" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
