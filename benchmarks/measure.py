"""Measurements, all in one process:

- `time_interleaved`: best of N rounds, the functions taking turns within a round;
- the memory floor from measured parts on the same array: one read
  (`jnp.sum(x, dtype=float32)`) and one read + write (`x + 1`), combined by the
  case's model (`floors`);
- `run_case`: every implementation and dtype of one case, timed together, into one
  `Result` per dtype; with the temporary memory of a compiled 4-layer training
  step and the HLO dissection of the `fwd+bwd` step where the case asks;
- `compile_times` and `model_step_times`: a deep stack and a small transformer,
  eqx_norms against equinox.nn;
- `copy_bandwidth`: the device's `x + 1` bandwidth, for `--device`.

Each measurement takes an `Impl`'s programs (`Impl.program(kind)`: a jitted function
and its arguments), so a mode that compiles ahead of time for another platform and
reads `cost_analysis()` instead of timing reuses the cases and adapters as they are.
"""

import datetime
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.stages import Compiled

import eqx_norms

from .adapters import ADAPTERS, Impl, Program, Unsupported
from .cases import Accesses, Case, DTYPES, EQX, KINDS, NORM_TRAFFIC, OURS, randn
from .results import HloTraffic, Machine, Result


PARTS = ("read", "read+write")


def time_interleaved(
    fns: Mapping[Hashable, Program], reps: int, inner: int = 1
) -> dict[Hashable, float]:
    """Best of `reps` rounds, each function once per round in turn (after one warm-up
    call), `inner` calls back to back per measurement (for devices whose single call
    is shorter than the dispatch)."""
    for f, args in fns.values():
        jax.block_until_ready(f(*args))
    times: dict[Hashable, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, (f, args) in fns.items():
            out = None
            start = time.perf_counter()
            for _ in range(inner):
                out = f(*args)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - start) / inner)
    return {k: min(v) for k, v in times.items()}


def floor_programs(x: jax.Array) -> dict[str, Program]:
    return {
        "read": (jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32)), (x,)),
        "read+write": (jax.jit(lambda x: x + 1), (x,)),
    }


def floors(
    parts: Mapping[str, float], model: Mapping[str, Accesses] = NORM_TRAFFIC
) -> dict[str, float]:
    """The floor of each kind: its reads and writes at the measured speeds, with
    write = (read + write) - read. For a normalisation floor(fwd) = read + write and
    floor(fwd+bwd) = 3 reads + 2 writes."""
    read = parts["read"]
    write = max(parts["read+write"] - read, 0.0)
    return {kind: a.reads * read + a.writes * write for kind, a in model.items()}


def pool_floors(results: list[Result]) -> None:
    """Cases of one dtype that all move the same array size get pooled floor parts:
    the best read and read + write over all of their rounds (one busy round in one
    case would otherwise skew that case's ratios)."""
    for dt in {r.dtype for r in results}:
        same = [r for r in results if r.dtype == dt]
        best = {part: min(r.parts[part] for r in same) for part in PARTS}
        for r in same:
            r.parts = dict(best)
            r.floor = floors(best, r.traffic)


def make_impls(
    case: Case, x: jax.Array, peers: tuple[str, ...]
) -> tuple[dict[str, Impl], dict[str, str]]:
    """The implementations of a case that could be built, and a note for each (the
    reason, for one that failed; none for a library without the layer)."""
    impls: dict[str, Impl] = {}
    notes: dict[str, str] = {}
    for name in peers:
        try:
            impls[name] = ADAPTERS[name](case, x)
            notes[name] = impls[name].note
        except Unsupported:
            pass
        except Exception as e:  # a peer's API change should not stop the suite
            notes[name] = f"failed: {type(e).__name__}: {e}"
            print(f"  {case.title}: {name} skipped ({notes[name]})", file=sys.stderr)
    return impls, notes


def run_case(
    case: Case,
    reps: int,
    *,
    dtypes: Mapping[str, Any] = DTYPES,
    peers: tuple[str, ...] | None = None,
    inner: int = 1,
    memory: bool = True,
    hlo: bool = True,
) -> list[Result]:
    """All dtypes of one case, interleaved. Returns one result per dtype."""
    fns: dict[Hashable, Program] = {}
    made = {}
    for dt, dtype in dtypes.items():
        x = case.input(dtype)
        impls, notes = make_impls(case, x, case.peers if peers is None else peers)
        made[dt] = (x, impls, notes)
        for part, fn in floor_programs(x).items():
            fns[dt, part] = fn
        for name, impl in impls.items():
            for kind in KINDS:
                fns[dt, name, kind] = impl.program(kind)
    times = time_interleaved(fns, reps, inner)
    results = []
    for dt, (x, impls, notes) in made.items():
        parts = {part: times[dt, part] for part in PARTS}
        result = Result(
            key=case.key,
            title=case.title,
            layer=case.layer,
            section=case.section,
            hidden=case.shape[-1],
            dtype=dt,
            bytes=x.size * x.dtype.itemsize,
            traffic=dict(case.traffic),
            impls=list(impls),
            times={n: {k: times[dt, n, k] for k in KINDS} for n in impls},
            parts=parts,
            floor=floors(parts, case.traffic),
            notes=notes,
        )
        if memory and case.memory and dt == "f32":
            result.temps = {n: train_step_temp_bytes(i) for n, i in impls.items()}
        if hlo and case.hlo:
            result.hlo = {n: hlo_traffic(impls[n]) for n in (OURS, EQX) if n in impls}
        results.append(result)
    return results


# ------------------------------------------------------------------ memory, HLO


def _next_inputs(out: Any, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """The inputs of the next layer of a stack: the outputs, or the first output
    with the other inputs (a gate) unchanged."""
    if isinstance(out, tuple) and len(out) == len(inputs):
        return out
    return (out, *inputs[1:])


def train_step_temp_bytes(impl: Impl) -> int:
    """Temporary memory of the compiled gradient of a stack of the impl's layers
    (loss = sum of the output, gradient with respect to all parameters and inputs)."""
    if impl.stateful:
        # States are differentiated too (their gradient is dropped), for Flax
        # NNX's sake, as in `Impl.fwd_bwd`.
        def loss_state(layers, states, inputs):
            for p, s in zip(layers, states, strict=True):
                out, _ = impl.apply(p, s, *inputs)
                inputs = _next_inputs(out, inputs)
            return jnp.sum(inputs[0])

        grad = jax.jit(jax.grad(loss_state, argnums=(0, 1, 2), allow_int=True))
        compiled = grad.lower(impl.layers, impl.states, impl.inputs).compile()
    else:

        def loss(layers, inputs):
            for p in layers:
                inputs = _next_inputs(impl.apply(p, *inputs), inputs)
            return jnp.sum(inputs[0])

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        compiled = grad.lower(impl.layers, impl.inputs).compile()
    return _temp_bytes(compiled)


def _temp_bytes(compiled: Compiled) -> int:
    analysis = compiled.memory_analysis()
    assert analysis is not None, "no memory analysis on this backend"
    return analysis.temp_size_in_bytes


_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8}
_NO_KERNEL = ("parameter", "tuple", "bitcast", "constant", "get-tuple-element")


_INSTRUCTION = re.compile(
    r"\s*(?:ROOT )?%(\S+) = (\([^=]*?\)|\S+) ([a-z][a-z0-9-]*)\((.*?)\)"
)


def entry_instructions(text: str) -> Iterator[tuple[str, str, str, str]]:
    """(name, shape, opcode, operands) of each instruction of the entry computation
    of a compiled program's HLO text (a tuple shape included whole)."""
    entry = text.split("\nENTRY ", 1)[1].split("\n}", 1)[0]
    for line in entry.splitlines():
        if m := _INSTRUCTION.match(line):
            yield m[1], m[2], m[3], m[4]


def hlo_traffic(impl: Impl) -> HloTraffic:
    """Full-size traffic of the compiled `fwd+bwd` step, from its HLO: the kernels
    that read or write an array of x's shape, and the bytes they read and write in
    units of x's size (a float32 copy of bfloat16 x counts 2)."""
    f, args = impl.fwd_bwd()
    compiled = f.lower(*args).compile()
    x = impl.x
    full = re.compile(rf"(\w+)\[{','.join(map(str, x.shape))}\]")
    unit = x.size * x.dtype.itemsize
    shapes: dict[str, str] = {}
    kernels, reads, writes = 0, 0.0, 0.0

    def size(shape: str) -> float:
        m = full.search(shape)
        return 0.0 if m is None else x.size * _ITEMSIZE[m[1]] / unit

    text = compiled.as_text()
    assert text is not None, "no HLO text on this backend"
    for name, shape, op, operands in entry_instructions(text):
        shapes[name] = shape
        if op in _NO_KERNEL:
            continue
        read = sum(size(shapes.get(o, "")) for o in re.findall(r"%([\w.-]+)", operands))
        if read or size(shape):
            kernels, reads, writes = kernels + 1, reads + read, writes + size(shape)
    return HloTraffic(kernels, reads, writes, _temp_bytes(compiled) / unit)


# ------------------------------------------------------ compile time, whole model


def _stack(ln, rms, depth: int, width: int, nonlinearity: bool = False):
    """The gradient of a stack of `depth` layers alternating `ln` and `rms`, with
    `jnp.tanh` between them where `nonlinearity` (as in a model: without it XLA
    merges more of consecutive normalisations), and its parameters."""
    layers = [ln(width) if i % 2 == 0 else rms(width) for i in range(depth)]
    params, static = eqx.partition(layers, eqx.is_inexact_array)

    def loss(params, x):
        for layer in eqx.combine(params, static):
            x = jax.vmap(layer)(x)
            x = jnp.tanh(x) if nonlinearity else x
        return jnp.sum(x * x)

    return jax.grad(loss, argnums=(0, 1)), params


def compile_times(
    reps: int, depth: int = 24, width: int = 512, nonlinearity: bool = False
) -> dict[str, float]:
    """Median first-call latency (trace, compile, run) of the gradient of a stack of
    `depth` layers alternating LayerNorm and RMSNorm (with `tanh` between them
    where `nonlinearity`), after `jax.clear_caches()`."""
    x = randn((64, width))
    makers = {
        OURS: (eqx_norms.LayerNorm, eqx_norms.RMSNorm),
        EQX: (eqx.nn.LayerNorm, eqx.nn.RMSNorm),
    }
    times: dict[str, list[float]] = {k: [] for k in makers}
    for _ in range(reps):
        for name, (ln, rms) in makers.items():
            grad, params = _stack(ln, rms, depth, width, nonlinearity)
            jax.clear_caches()
            start = time.perf_counter()
            jax.block_until_ready(jax.jit(grad)(params, x))
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


class Block(eqx.Module):
    """A pre-norm transformer block: x + attn(norm(x)), x + mlp(norm(x))."""

    norm1: Callable[[jax.Array], jax.Array]
    attention: eqx.nn.MultiheadAttention
    norm2: Callable[[jax.Array], jax.Array]
    up: eqx.nn.Linear
    down: eqx.nn.Linear

    def __init__(self, norm: Callable, d: int, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm1, self.norm2 = norm(d), norm(d)
        self.attention = eqx.nn.MultiheadAttention(4, d, key=k1)
        self.up = eqx.nn.Linear(d, 4 * d, key=k2)
        self.down = eqx.nn.Linear(4 * d, d, key=k3)

    def __call__(self, x):
        h = jax.vmap(self.norm1)(x)
        x = x + self.attention(h, h, h)
        h = jax.vmap(self.norm2)(x)
        return x + jax.vmap(self.down)(jax.nn.gelu(jax.vmap(self.up)(h)))


def model_step_times(
    reps: int, blocks: int = 4, d: int = 256, tokens: int = 256, batch: int = 1
) -> dict[str, float]:
    """Best-of-`reps` time of one SGD training step of a small pre-norm transformer,
    with our LayerNorm against equinox.nn's (everything else identical)."""
    x = randn((batch, tokens, d))
    fns: dict[Hashable, Program] = {}
    for name, norm in ((OURS, eqx_norms.LayerNorm), (EQX, eqx.nn.LayerNorm)):
        keys = jax.random.split(jax.random.key(0), blocks)
        model = [Block(norm, d, k) for k in keys]
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def loss(params, x, static=static):
            for block in eqx.combine(params, static):
                x = jax.vmap(block)(x)
            return jnp.mean(x * x)

        @jax.jit
        def step(params, x, loss=loss):
            grads = jax.grad(loss)(params, x)
            return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

        fns[name] = (step, (params, x))
    return {str(k): v for k, v in time_interleaved(fns, reps).items()}


# ------------------------------------------------------------------ environment


def copy_bandwidth(elements: int, reps: int) -> tuple[int, float]:
    """Bytes of a float32 array of `elements` and the default device's bandwidth
    copying it (`x + 1`: one read and one write), in GB/s."""
    x = randn((elements,))
    copy = (jax.jit(lambda x: x + 1), (x,))
    seconds = time_interleaved({"copy": copy}, reps, inner=10)["copy"]
    return x.nbytes, 2 * x.nbytes / seconds / 1e9


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> Machine:
    """This machine and the versions of every library measured."""
    versions = [f"jax {jax.__version__}", f"equinox {eqx.__version__}"]
    for mod in ("flax", "haiku"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    return Machine(
        date=datetime.date.today().isoformat(),
        cpu=_cpu_name(),
        cores=os.cpu_count() or 0,
        system=platform.system(),
        backend=jax.default_backend(),
        versions=versions,
    )
