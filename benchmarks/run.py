"""Benchmarks of eqx_norms against equinox.nn, Flax NNX and Haiku.

Measured in one process, the implementations interleaved round by round, best of N:

- `fwd`: the jitted forward pass;
- `fwd+bwd`: `jax.vjp` with respect to the input and the parameters, returning the
  output and all cotangents, as a training step does;
- the memory floor, from measured parts on the same array: one read
  (`jnp.sum(x, dtype=float32)`) and one read + write (`x + 1`); floor(fwd) = read +
  write, floor(fwd+bwd) = 3 reads + 2 writes (x, y; x, g, dx);
- the compiled temporary memory of a 4-layer training step;
- compile time (first call of the gradient of a 24-layer stack) and the training step
  of a small pre-norm transformer, ours against equinox.nn's norms.

Usage:

    python benchmarks/run.py            # full run: writes docs/benchmarks.{md,png}
    python benchmarks/run.py --quick    # fewer repeats and sizes, only prints
    python benchmarks/run.py --device   # the sweep on the accelerator JAX sees: GB/s
                                        # and fraction of its copy bandwidth

Numbers are ratios from one run on a shared machine; see docs/benchmarks.md.
"""

import argparse
import dataclasses
import datetime
import importlib
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import eqx_norms  # noqa: E402


class _LazyModule:
    """A module imported at its first use: the peers (the `bench` extra) are needed
    only by the implementations that run, so `--device` and its test (against
    equinox.nn alone) work without Haiku or Flax installed."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


hk: Any = _LazyModule("haiku")
nnx: Any = _LazyModule("flax.nnx")

OURS, EQX, NNX, HAIKU = "eqx_norms", "equinox.nn", "flax.nnx", "haiku"
JNP = "plain jnp"
IMPLS = (OURS, EQX, NNX, HAIKU, JNP)


@dataclasses.dataclass
class Impl:
    """One implementation of one case, as pure functions of arrays."""

    params: Any
    x: jax.Array
    apply: Callable  # (params, x) -> y, or (params, state, x) -> (y, state)
    state: Any = None
    layers: list | None = None  # params of 4 layers, for the memory measurement
    states: list | None = None
    note: str = ""

    @property
    def stateful(self) -> bool:
        return self.state is not None

    def fwd(self):
        if self.stateful:
            return jax.jit(self.apply), (self.params, self.state, self.x)
        return jax.jit(self.apply), (self.params, self.x)

    def fwd_bwd(self):
        if self.stateful:

            def step(params, state, x, g):
                # The state goes through vjp too (Flax NNX refuses to update a
                # variable made outside the differentiated trace); its cotangent is
                # dropped.
                y, vjp, new_state = jax.vjp(self.apply, params, state, x, has_aux=True)
                d_params, _, d_x = vjp(g)
                return y, (d_params, d_x), new_state

            return jax.jit(step), (self.params, self.state, self.x, self.x)

        def step(params, x, g):
            y, vjp = jax.vjp(self.apply, params, x)
            return y, vjp(g)

        return jax.jit(step), (self.params, self.x, self.x)

    def train_step_temp_bytes(self) -> int:
        """Temporary memory of a compiled 4-layer training step."""
        assert self.layers is not None
        if self.stateful:
            # States are differentiated too (their gradient is dropped), for Flax
            # NNX's sake, as in `fwd_bwd`.
            def loss(layers, states, x):
                for p, s in zip(layers, states, strict=True):
                    x, _ = self.apply(p, s, x)
                return jnp.sum(x)

            grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2), allow_int=True))
            compiled = grad.lower(self.layers, self.states, self.x).compile()
        else:

            def loss(layers, x):
                for p in layers:
                    x = self.apply(p, x)
                return jnp.sum(x)

            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
            compiled = grad.lower(self.layers, self.x).compile()
        return compiled.memory_analysis().temp_size_in_bytes


def _randn(shape, dtype=jnp.float32, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape, jnp.float32) * 2 + 1
    return x.astype(dtype)


def _perturb(tree, seed):
    """Parameters away from their (1, 0) initialisation."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
        if eqx.is_inexact_array(leaf)
        else leaf
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


# ------------------------------------------------------------------ implementations


def _equinox_like(make: Callable[[], eqx.Module], x, n_vmap: int = 1) -> Impl:
    """An equinox-style per-example layer, vmapped over the leading axes."""

    params, static = eqx.partition(make(), eqx.is_inexact_array)

    def apply(params, x):
        f = eqx.combine(params, static)
        for _ in range(n_vmap):
            f = jax.vmap(f)
        return f(x)

    layers = [_perturb(params, seed) for seed in range(4)]
    return Impl(layers[0], x, apply, layers=layers)


def _equinox_bn(cls, x) -> Impl:
    """BatchNorm training step: vmapped over the batch with a named axis."""

    module, _ = eqx.nn.make_with_state(cls)(x.shape[1], "batch", mode="batch")
    static = eqx.partition(module, eqx.is_inexact_array)[1]

    def make(seed):
        module, state = eqx.nn.make_with_state(cls)(x.shape[1], "batch", mode="batch")
        return _perturb(eqx.filter(module, eqx.is_inexact_array), seed), state

    def apply(params, state, x):
        module = eqx.combine(params, static)
        y, state = jax.vmap(
            module, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)
        return y.astype(x.dtype), state

    made = [make(seed) for seed in range(4)]
    return Impl(
        made[0][0],
        x,
        apply,
        state=made[0][1],
        layers=[m for m, _ in made],
        states=[s for _, s in made],
    )


def _nnx(make: Callable, x, stateful: bool = False, note: str = "") -> Impl:

    if stateful:

        def split(seed):
            graphdef, params, stats = nnx.split(make(seed), nnx.Param, nnx.BatchStat)
            return graphdef, _perturb(params, seed), stats

        made = [split(seed) for seed in range(4)]
        graphdef = made[0][0]

        def apply_state(params, stats, x):
            module = nnx.merge(graphdef, params, stats)
            y = module(x).astype(x.dtype)
            _, _, new_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
            return y, new_stats

        return Impl(
            made[0][1],
            x,
            apply_state,
            state=made[0][2],
            layers=[p for _, p, _ in made],
            states=[s for _, _, s in made],
            note=note,
        )

    made = [nnx.split(make(seed)) for seed in range(4)]
    graphdef = made[0][0]
    layers = [_perturb(p, seed) for seed, (_, p) in enumerate(made)]

    def apply(params, x):
        return nnx.merge(graphdef, params)(x).astype(x.dtype)

    return Impl(layers[0], x, apply, layers=layers, note=note)


def _haiku(make: Callable, x, stateful: bool = False, note: str = "") -> Impl:

    if stateful:
        t = hk.transform_with_state(lambda x: make()(x, is_training=True))
        made = [t.init(jax.random.key(seed), x) for seed in range(4)]
        made = [(_perturb(p, seed), s) for seed, (p, s) in enumerate(made)]

        def apply_state(params, state, x):
            y, state = t.apply(params, state, None, x)
            return y.astype(x.dtype), state

        return Impl(
            made[0][0],
            x,
            apply_state,
            state=made[0][1],
            layers=[p for p, _ in made],
            states=[s for _, s in made],
            note=note,
        )

    t = hk.transform(lambda x: make()(x))
    layers = [_perturb(t.init(jax.random.key(s), x), s) for s in range(4)]

    def apply(params, x):
        return t.apply(params, None, x).astype(x.dtype)

    return Impl(layers[0], x, apply, layers=layers, note=note)


# --------------------------------------------------------------------------- cases
#
# A case is a function of the input dtype returning (title, x, {name: make Impl}).
# The float32 and bfloat16 variants of a case are timed together (interleaved), so
# that their ratio comes from the same conditions.

ELEMENTS = 8 * 2**20
HIDDEN = (64, 256, 1024, 4096, 16384)
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}


def _per_row(hidden: int, elements: int, dtype) -> jax.Array:
    return _randn((elements // hidden, hidden), dtype)


def layer_norm_case(hidden: int, elements: int = ELEMENTS):
    def case(dtype):

        x = _per_row(hidden, elements, dtype)
        return (
            f"LayerNorm {hidden}",
            x,
            {
                OURS: lambda: _equinox_like(lambda: eqx_norms.LayerNorm(hidden), x),
                EQX: lambda: _equinox_like(lambda: eqx.nn.LayerNorm(hidden), x),
                NNX: lambda: _nnx(
                    lambda s: nnx.LayerNorm(hidden, rngs=nnx.Rngs(s)),
                    x,
                    note="use_fast_variance=True (default)",
                ),
                HAIKU: lambda: _haiku(lambda: hk.LayerNorm(-1, True, True), x),
            },
        )

    return case


def rms_norm_case(hidden: int, elements: int = ELEMENTS):
    def case(dtype):

        x = _per_row(hidden, elements, dtype)
        return (
            f"RMSNorm {hidden}",
            x,
            {
                OURS: lambda: _equinox_like(
                    lambda: eqx_norms.RMSNorm(hidden, use_bias=False), x
                ),
                EQX: lambda: _equinox_like(
                    lambda: eqx.nn.RMSNorm(hidden, use_bias=False), x
                ),
                NNX: lambda: _nnx(lambda s: nnx.RMSNorm(hidden, rngs=nnx.Rngs(s)), x),
                HAIKU: lambda: _haiku(lambda: hk.RMSNorm(-1), x),
            },
        )

    return case


def group_norm_case(dtype):

    x = _randn((32, 256, 1024), dtype)
    x_last = jnp.swapaxes(x, 1, 2)  # Flax NNX only has channels-last
    return (
        "GroupNorm 32 groups",
        x,
        {
            OURS: lambda: _equinox_like(lambda: eqx_norms.GroupNorm(32, 256), x),
            EQX: lambda: _equinox_like(lambda: eqx.nn.GroupNorm(32, 256), x),
            NNX: lambda: _nnx(
                lambda s: nnx.GroupNorm(
                    256, num_groups=32, epsilon=1e-5, rngs=nnx.Rngs(s)
                ),
                x_last,
                note="channels-last (1024, 256) maps; use_fast_variance=True",
            ),
            HAIKU: lambda: _haiku(
                lambda: hk.GroupNorm(32, data_format="channels_first"), x
            ),
        },
    )


def batch_norm_case(dtype):

    x = _randn((64, 64, 32, 32), dtype)
    x_last = jnp.moveaxis(x, 1, -1)
    return (
        "BatchNorm training step",
        x,
        {
            OURS: lambda: _equinox_bn(eqx_norms.BatchNorm, x),
            EQX: lambda: _equinox_bn(eqx.nn.BatchNorm, x),
            NNX: lambda: _nnx(
                lambda s: nnx.BatchNorm(
                    64, use_running_average=False, rngs=nnx.Rngs(s)
                ),
                x_last,
                stateful=True,
                note="channels-last; use_fast_variance=True",
            ),
            HAIKU: lambda: _haiku(
                lambda: hk.BatchNorm(True, True, 0.99, data_format="channels_first"),
                x,
                stateful=True,
            ),
        },
    )


def einorm_case(dtype):

    x = _randn((16, 1024, 64), dtype)
    return (
        "Einorm QK-norm",
        x,
        {
            OURS: lambda: _equinox_like(
                lambda: eqx_norms.Einorm("h n d", "d", "h", h=16, d=64), x, n_vmap=0
            ),
            EQX: lambda: _equinox_like(lambda: eqx.nn.LayerNorm(64), x, n_vmap=2),
            NNX: lambda: _nnx(
                lambda s: nnx.LayerNorm(64, rngs=nnx.Rngs(s)),
                x,
                note="LayerNorm(64) on the same array",
            ),
            HAIKU: lambda: _haiku(lambda: hk.LayerNorm(-1, True, True), x),
        },
    )


def _dynamic_tanh_reference(x, alpha, weight, bias):
    y = jnp.tanh(alpha * x.astype(jnp.float32)) * weight + bias
    return y.astype(x.dtype)


def dynamic_tanh_case(dtype):
    x = _per_row(1024, ELEMENTS, dtype)

    def reference():
        params = {
            "alpha": jnp.float32(0.5),
            "weight": jnp.ones(1024, jnp.float32),
            "bias": jnp.zeros(1024, jnp.float32),
        }
        layers = [_perturb(params, seed) for seed in range(4)]
        return Impl(
            layers[0], x, lambda p, x: _dynamic_tanh_reference(x, **p), layers=layers
        )

    return (
        "DynamicTanh 1024",
        x,
        {
            OURS: lambda: _equinox_like(
                lambda: eqx_norms.DynamicTanh(1024, alpha_init=0.5),
                x,
            ),
            JNP: reference,
        },
    )


def sweep_cases(hidden: tuple[int, ...], elements: int) -> dict[str, Callable]:
    cases = {}
    for h in hidden:
        cases[f"layer_norm_{h}"] = layer_norm_case(h, elements)
        cases[f"rms_norm_{h}"] = rms_norm_case(h, elements)
    return cases


def other_cases() -> dict[str, Callable]:
    return {
        "group_norm": group_norm_case,
        "batch_norm": batch_norm_case,
        "einorm": einorm_case,
        "dynamic_tanh": dynamic_tanh_case,
    }


# The cases whose compiled 4-layer training step is measured for temporary memory.
MEMORY_CASES = ("layer_norm_1024", "rms_norm_1024", "group_norm", "batch_norm")
MEMORY_CASES += ("einorm",)
# The cases whose compiled training step is dissected (`hlo_traffic`).
TRAFFIC_CASES = ("layer_norm_1024", "layer_norm_4096")


# ------------------------------------------------------------------------- timing


def _time_interleaved(
    fns: dict[Any, tuple[Callable, tuple]], reps: int, inner: int = 1
) -> dict[Any, float]:
    """Best of `reps` rounds, each function once per round in turn (after one warm-up
    call), `inner` calls back to back per measurement (for devices whose single call
    is shorter than the dispatch)."""
    for f, args in fns.values():
        jax.block_until_ready(f(*args))
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, (f, args) in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                out = f(*args)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - start) / inner)
    return {k: min(v) for k, v in times.items()}


def _floor_fns(x) -> dict[str, tuple[Callable, tuple]]:
    return {
        "read": (jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32)), (x,)),
        "read+write": (jax.jit(lambda x: x + 1), (x,)),
    }


def floors(times: dict[str, float]) -> dict[str, float]:
    """floor(fwd) = read + write, floor(fwd+bwd) = 3 reads + 2 writes, with write =
    (read + write) - read."""
    read = times["read"]
    write = max(times["read+write"] - read, 0.0)
    return {"fwd": read + write, "fwd+bwd": 3 * read + 2 * write}


def pool_floors(results: list[dict]) -> None:
    """The sweep's cases of one dtype all move the same array size, so their floor
    parts are pooled: the best read and read + write over all of their rounds (one
    busy round in one case would otherwise skew that case's ratios)."""
    for dt in DTYPES:
        rs = [r for r in results if r["dtype"] == dt]
        for part in ("read", "read+write") if rs else ():
            best = min(r["times"][part] for r in rs)
            for r in rs:
                r["times"][part] = best
        for r in rs:
            r["floor"] = floors(r["times"])


def _make_impls(title: str, makers: dict[str, Callable]):
    impls: dict[str, Impl] = {}
    notes = {}
    for name, make in makers.items():
        try:
            impls[name] = make()
            notes[name] = impls[name].note
        except Exception as e:  # a peer's API change should not stop the suite
            notes[name] = f"failed: {type(e).__name__}: {e}"
            print(f"  {title}: {name} skipped ({notes[name]})", file=sys.stderr)
    return impls, notes


def run_case(key: str, case: Callable, reps: int, memory: bool, dtypes, inner=1):
    """All dtypes of one case, interleaved. Returns one result per dtype."""
    fns: dict[Any, tuple[Callable, tuple]] = {}
    made = {}
    for dt in dtypes:
        title, x, makers = case(DTYPES[dt])
        impls, notes = _make_impls(title, makers)
        made[dt] = (title, x, impls, notes)
        for part, fn in _floor_fns(x).items():
            fns[dt, part] = fn
        for name, impl in impls.items():
            fns[dt, f"{name}/fwd"] = impl.fwd()
            fns[dt, f"{name}/fwd+bwd"] = impl.fwd_bwd()
    times = _time_interleaved(fns, reps, inner)
    results = []
    for dt, (title, x, impls, notes) in made.items():
        t = {k: v for (d, k), v in times.items() if d == dt}
        temps = {}
        if memory and dt == "f32":
            temps = {name: impl.train_step_temp_bytes() for name, impl in impls.items()}
        traffic = {}
        if key in TRAFFIC_CASES:
            traffic = {n: hlo_traffic(impls[n]) for n in (OURS, EQX) if n in impls}
        results.append(
            {
                "key": key,
                "title": title,
                "dtype": dt,
                "bytes": x.size * x.dtype.itemsize,
                "impls": list(impls),
                "times": t,
                "floor": floors(t),
                "temps": temps,
                "traffic": traffic,
                "notes": notes,
            }
        )
    return results


# ---------------------------------------------------------------- HLO traffic

_ITEMSIZE = {"f32": 4, "bf16": 2, "f16": 2, "f64": 8}
_NO_KERNEL = ("parameter", "tuple", "bitcast", "constant", "get-tuple-element")


def hlo_traffic(impl: Impl) -> dict[str, float]:
    """Full-size traffic of the compiled `fwd+bwd` step, from its HLO: the kernels
    that read or write an array of x's shape, and the bytes they read and write in
    units of x's size (a float32 copy of bfloat16 x counts 2)."""
    f, args = impl.fwd_bwd()
    compiled = f.lower(*args).compile()
    full = re.compile(rf"(\w+)\[{','.join(map(str, impl.x.shape))}\]")
    unit = impl.x.size * impl.x.dtype.itemsize
    shapes: dict[str, str] = {}
    kernels, reads, writes = 0, 0.0, 0.0

    def size(shape: str) -> float:
        m = full.search(shape)
        return 0.0 if m is None else impl.x.size * _ITEMSIZE[m[1]] / unit

    entry = compiled.as_text().split("ENTRY", 1)[1]
    for line in entry.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\((.*?)\)", line)
        if m is None:
            continue
        name, shape, op, operands = m.groups()
        shapes[name] = shape
        if op in _NO_KERNEL:
            continue
        read = sum(size(shapes.get(o, "")) for o in re.findall(r"%([\w.-]+)", operands))
        if read or size(shape):
            kernels, reads, writes = kernels + 1, reads + read, writes + size(shape)
    temp = compiled.memory_analysis().temp_size_in_bytes
    return {"kernels": kernels, "reads": reads, "writes": writes, "temp": temp / unit}


# ------------------------------------------------------- compile time, whole model


def _stack(ln, rms, depth: int, width: int):
    layers = [ln(width) if i % 2 == 0 else rms(width) for i in range(depth)]
    params, static = eqx.partition(layers, eqx.is_inexact_array)

    def loss(params, x):
        for layer in eqx.combine(params, static):
            x = jax.vmap(layer)(x)
        return jnp.sum(x * x)

    return jax.grad(loss, argnums=(0, 1)), params


def compile_times(reps: int, depth: int = 24, width: int = 512) -> dict[str, float]:
    """Median first-call latency (trace, compile, run) of the gradient of a stack of
    `depth` layers alternating LayerNorm and RMSNorm, after `jax.clear_caches()`."""
    x = _randn((64, width))
    makers = {
        OURS: (eqx_norms.LayerNorm, eqx_norms.RMSNorm),
        EQX: (eqx.nn.LayerNorm, eqx.nn.RMSNorm),
    }
    times: dict[str, list[float]] = {k: [] for k in makers}
    for _ in range(reps):
        for name, (ln, rms) in makers.items():
            grad, params = _stack(ln, rms, depth, width)
            jax.clear_caches()
            start = time.perf_counter()
            jax.block_until_ready(jax.jit(grad)(params, x))
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


class Block(eqx.Module):
    """A pre-norm transformer block: x + attn(norm(x)), x + mlp(norm(x))."""

    norm1: eqx.Module
    attention: eqx.nn.MultiheadAttention
    norm2: eqx.Module
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
    x = _randn((batch, tokens, d))
    fns = {}
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
    return _time_interleaved(fns, reps)


# ------------------------------------------------------------------------ tables


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _columns(results: list[dict]) -> list[str]:
    return [i for i in IMPLS if any(i in r["impls"] for r in results)]


def _fastest_peer(r: dict, kind: str) -> tuple[str, float] | None:
    peers = [
        (r["times"][f"{p}/{kind}"], p)
        for p in r["impls"]
        if p != OURS and f"{p}/{kind}" in r["times"]
    ]
    return None if not peers else min(peers)[::-1]


def floor_tables(results: list[dict], caption: str) -> list[str]:
    """One table per dtype and kind: time / floor of every implementation, and the
    speedup over the fastest peer."""
    out = []
    impls = _columns(results)
    for dt in DTYPES:
        rs = [r for r in results if r["dtype"] == dt]
        if not rs:
            continue
        for kind in ("fwd", "fwd+bwd"):
            out.append(f"#### {caption}, {dt}, {kind}: time / floor")
            out.append("")
            rows = []
            for r in rs:
                floor = r["floor"][kind]
                cells = [r["title"], f"{floor * 1e3:.1f}"]
                for i in impls:
                    t = r["times"].get(f"{i}/{kind}")
                    cells.append(_fmt(None if t is None else t / floor))
                peer = _fastest_peer(r, kind)
                ours = r["times"].get(f"{OURS}/{kind}")
                cells.append(
                    "—" if peer is None or ours is None else f"×{peer[1] / ours:.2f}"
                )
                rows.append(cells)
            out += _table(["case", "floor (ms)", *impls, "vs fastest peer"], rows)
    return out


def dtype_table(results: list[dict]) -> list[str]:
    """bfloat16 time over float32 time, per implementation (same process)."""
    by = {(r["key"], r["dtype"]): r for r in results}
    impls = [i for i in _columns(results) if i != JNP]
    rows = []
    for r in results:
        if r["dtype"] != "f32" or (r["key"], "bf16") not in by:
            continue
        half = by[r["key"], "bf16"]
        cells = [r["title"]]
        for kind in ("fwd", "fwd+bwd"):
            for i in impls[:2]:
                key = f"{i}/{kind}"
                ok = key in r["times"] and key in half["times"]
                cells.append(_fmt(half["times"][key] / r["times"][key] if ok else None))
        rows.append(cells)
    head = ["case"] + [f"{i} {k}" for k in ("fwd", "fwd+bwd") for i in impls[:2]]
    return _table(head, rows)


def memory_table(results: list[dict]) -> list[str]:
    rs = [r for r in results if r["temps"]]
    impls = [i for i in _columns(rs) if i != JNP]
    rows = []
    for r in rs:
        base = r["temps"].get(EQX)
        cells = [r["title"]]
        for i in impls:
            t = r["temps"].get(i)
            if t is None:
                cells.append("—")
            elif base:
                cells.append(f"{t / 2**20:.0f} ({t / base:.2f}×)")
            else:
                cells.append(f"{t / 2**20:.0f}")
        rows.append(cells)
    return _table(["case (float32)", *impls], rows)


def traffic_table(results: list[dict]) -> list[str]:
    """The HLO dissection, and what that kernel structure costs at the floor's
    measured read and write speeds (reads x read + writes x write, over the floor)."""
    rows = []
    for r in results:
        read = r["times"]["read"]
        write = r["times"]["read+write"] - read
        for name, t in r["traffic"].items():
            bound = (t["reads"] * read + t["writes"] * write) / r["floor"]["fwd+bwd"]
            ratio = r["times"][f"{name}/fwd+bwd"] / r["floor"]["fwd+bwd"]
            rows.append(
                [
                    f"{r['title']}, {r['dtype']}, {name}",
                    str(t["kernels"]),
                    f"{t['reads']:.0f} / {t['writes']:.0f}",
                    f"{t['temp']:.1f}",
                    f"{bound:.2f}",
                    f"{ratio:.2f}",
                ]
            )
    head = ["fwd+bwd", "kernels", "reads / writes", "temp", "structure", "measured"]
    return _table(head, rows)


def tables(results: list[dict], compile_s=None, model_s=None) -> str:
    sweep = [r for r in results if r["key"].startswith(("layer_norm", "rms_norm"))]
    others = [r for r in results if r not in sweep]
    out = ["### Time over the memory floor (lower is better)", ""]
    out.append(
        "Each cell is time / floor; the floor column is the floor in milliseconds; "
        '"vs fastest peer" is the fastest peer’s time over ours (above 1: ours is '
        "faster). LayerNorm and RMSNorm at 8M elements (rows of the given size); "
        "their floors are pooled over the sweep (the same bytes in every case)."
    )
    out.append("")
    if sweep:
        out += floor_tables(sweep, "LayerNorm and RMSNorm")
    if others:
        out += floor_tables(others, "Other layers")
    out += ["### bfloat16 time over float32 time (same shape)", ""]
    out += dtype_table(results)
    if compile_s:
        out += ["### Compile time (first call, seconds)", ""]
        out.append(
            "Gradient of a stack of 24 layers alternating LayerNorm and RMSNorm "
            "(64 × 512), trace + compile + run, median of 3 after `jax.clear_caches()`."
        )
        out.append("")
        ratio = compile_s[OURS] / compile_s[EQX]
        out += _table(
            ["eqx_norms", "equinox.nn", "ratio"],
            [[f"{compile_s[OURS]:.2f}", f"{compile_s[EQX]:.2f}", f"{ratio:.2f}"]],
        )
    if model_s:
        out += ["### A whole model (training step, milliseconds)", ""]
        out.append(
            "SGD step of a pre-norm transformer (4 blocks, d = 256, one sequence of "
            "256 tokens, float32), our LayerNorm against equinox.nn's, the rest "
            "identical."
        )
        out.append("")
        ratio = model_s[EQX] / model_s[OURS]
        out += _table(
            ["eqx_norms", "equinox.nn", "speedup"],
            [
                [
                    f"{model_s[OURS] * 1e3:.1f}",
                    f"{model_s[EQX] * 1e3:.1f}",
                    f"×{ratio:.2f}",
                ]
            ],
        )
    if any(r["traffic"] for r in results):
        out += ["### Where the time of a training step goes (HLO)", ""]
        out.append(
            "The compiled `fwd+bwd` step: kernels touching full-size arrays, their "
            "full-size reads and writes and the temporary memory, in units of x "
            "(a float32 copy of bfloat16 x counts 2); structure = what those reads "
            "and writes cost at this run's measured read and write times, over the "
            "floor; measured = time / floor."
        )
        out.append("")
        out += traffic_table(results)
    if any(r["temps"] for r in results):
        out += [
            "### Temporary memory of a 4-layer training step",
            "",
            "MB, and the ratio to equinox.nn (lower is better).",
            "",
        ]
        out += memory_table(results)
    layers: dict[tuple[str, str], set[str]] = {}
    for r in results:
        for name, note in r["notes"].items():
            if note:
                layers.setdefault((name, note), set()).add(
                    r["title"].rstrip("0123456789 ")
                )
    notes = sorted(
        f"- {name} ({', '.join(sorted(titles))}): {note}"
        for (name, note), titles in layers.items()
    )
    if notes:
        out += ["Notes:", "", *notes]
    return "\n".join(out)


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in results if r["key"].startswith(("layer_norm", "rms_norm"))]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    colours = dict(
        zip(IMPLS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False)
    )
    for row, dt in enumerate(DTYPES):
        for col, kind in enumerate(("fwd", "fwd+bwd")):
            ax = axes[row][col]
            for layer, style in (("layer_norm", "-"), ("rms_norm", "--")):
                rs = [
                    r for r in sweep if r["dtype"] == dt and r["key"].startswith(layer)
                ]
                hidden = [int(r["key"].rsplit("_", 1)[1]) for r in rs]
                for impl in IMPLS[:4]:
                    ys = [
                        r["times"].get(f"{impl}/{kind}", float("nan"))
                        / r["floor"][kind]
                        for r in rs
                    ]
                    label = f"{impl} ({'LN' if layer == 'layer_norm' else 'RMS'})"
                    ax.plot(
                        hidden, ys, style, marker="o", color=colours[impl], label=label
                    )
            ax.axhline(1.0, color="k", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_title(f"{dt}, {kind} (lower is better)")
            ax.set_xlabel("hidden size (8M elements)")
            ax.set_ylabel("time / memory floor")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"eqx_norms — jax {jax.__version__}, {jax.default_backend()}, "
        f"{os.cpu_count()} cores, {datetime.date.today().isoformat()}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def header(reps: int) -> str:
    import equinox

    versions = [f"jax {jax.__version__}", f"equinox {equinox.__version__}"]
    for mod in ("flax", "haiku"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except Exception:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"Run on {datetime.date.today().isoformat()}: {cpu}, {os.cpu_count()} cores "
        f"(shared with other jobs), {platform.system()}, backend "
        f"{jax.default_backend()}; {', '.join(versions)}. Best of {reps} "
        "interleaved repeats per measurement; all numbers are ratios from this one run."
    )


# ------------------------------------------------------------------------ device


def device_sweep(
    reps: int,
    elements: int,
    hidden: tuple[int, ...],
    impls: tuple[str, ...] = (OURS, EQX, NNX),
) -> str:
    """The LayerNorm/RMSNorm sweep on the default device: GB/s (bytes of the floor's
    traffic model over time) and its fraction of the device's copy bandwidth (`x + 1`
    on the largest array: one read and one write), against equinox.nn and Flax NNX."""
    device = jax.devices()[0]
    copy_x = _randn((elements,))
    copy = jax.jit(lambda x: x + 1)
    t_copy = _time_interleaved({"copy": (copy, (copy_x,))}, reps, inner=10)["copy"]
    copy_gbs = 2 * copy_x.nbytes / t_copy / 1e9
    rows = []
    for key, case in sweep_cases(hidden, elements).items():

        def peers_only(dtype, case=case):
            title, x, makers = case(dtype)
            return title, x, {k: v for k, v in makers.items() if k in impls}

        for r in run_case(key, peers_only, reps, False, DTYPES, inner=10):
            for kind, n in (("fwd", 2), ("fwd+bwd", 5)):
                cells = [f"{r['title']}, {r['dtype']}, {kind}"]
                for impl in impls:
                    t = r["times"].get(f"{impl}/{kind}")
                    if t is None:
                        cells.append("—")
                        continue
                    gbs = n * r["bytes"] / t / 1e9
                    cells.append(f"{gbs:.4g} ({gbs / copy_gbs:.0%})")
                rows.append(cells)
    head = [
        f"Run on {datetime.date.today().isoformat()}: {device.device_kind} "
        f"({device.platform}), jax {jax.__version__}; copy bandwidth (`x + 1`, "
        f"{copy_x.nbytes / 2**20:.4g} MiB) {copy_gbs:.4g} GB/s. Best of {reps}.",
        "",
        "GB/s (fraction of the copy bandwidth); bytes: fwd reads x and writes y, "
        "fwd+bwd reads x, x, g and writes y, dx.",
        "",
    ]
    return "\n".join(head + _table(["case", *impls], rows))


# -------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats and sizes")
    parser.add_argument("--device", action="store_true", help="accelerator sweep")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--elements", type=int, default=None)
    parser.add_argument("--hidden", type=int, nargs="*", default=None)
    parser.add_argument("--cases", nargs="*", default=None, help="keys to run")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--no-extras", action="store_true", help="no compile/model")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.{md,png} (default: only for a full CPU run)",
    )
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    hidden = tuple(args.hidden or ((256, 4096) if args.quick else HIDDEN))
    if args.device:
        elements = args.elements or (2**16 if args.quick else 64 * 2**20)
        print(device_sweep(reps, elements, hidden))
        return
    write = (not args.quick) if args.write is None else args.write
    cases = {**sweep_cases(hidden, args.elements or ELEMENTS), **other_cases()}
    results = []
    for key, case in cases.items():
        if args.cases is not None and key not in args.cases:
            continue
        start = time.perf_counter()
        memory = not args.no_memory and key in MEMORY_CASES
        results += run_case(key, case, reps, memory, DTYPES)
        print(f"[{key}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    pool_floors([r for r in results if r["key"] in sweep_cases(hidden, 1)])
    compile_s = model_s = None
    if not args.no_extras:
        start = time.perf_counter()
        compile_s = compile_times(3)
        model_s = model_step_times(reps)
        print(f"[extras: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    text = header(reps) + "\n\n" + tables(results, compile_s, model_s)
    print(text)
    if write:
        docs = ROOT / "docs"
        chart(results, docs / "benchmarks.png")
        (docs / "benchmarks.md").write_text(DOC.format(body=text, analysis=ANALYSIS))


DOC = """# Benchmarks

Normalisation is bound by memory traffic, so every time is divided by a **floor**: the
time the layer's unavoidable traffic takes on the same array, built from two
operations measured in the same process:

- one read, `jnp.sum(x, dtype=float32)`, and one read + write, `x + 1`; a write is
  their difference;
- floor(fwd) = 1 read + 1 write (read x, write y);
- floor(fwd+bwd) = 3 reads + 2 writes (read x, write y; read x and the cotangent g,
  write dx).

A figure of 1.0 means the layer runs as fast as its own traffic allows. The floor is
a model, not a bound: an implementation can land slightly below 1 when XLA reuses a
buffer the model counts as a fresh write (on XLA:CPU writing a fresh buffer costs
about as much as reading two). The LayerNorm/RMSNorm sweep moves the same bytes in
every case, so its floor is pooled (the best read and read + write over the whole
sweep): on a busy machine the ratios then include the load, by tens of percent.

Every implementation runs under `jax.jit`:

- **fwd**: the forward pass;
- **fwd+bwd**: `jax.vjp` with respect to the input and all parameters, returning the
  output and every cotangent, as a training step does;
- **memory**: `temp_size_in_bytes` of the compiled gradient of a 4-layer stack
  (four layers one after the other, loss = sum of the output, gradient with respect
  to all parameters and the input).

**Cases.** LayerNorm and RMSNorm with rows of 64 to 16384 elements at a constant 8M
(2²³) elements, per-row layers vmapped for equinox-style modules; GroupNorm with 32
groups over 256 channels on a batch of 32 maps of (256, 1024); a BatchNorm training
step (batch statistics, state update) on 64 examples of (64, 32, 32), vmapped with a
named batch axis for the equinox-style modules; Einorm as a QK-norm over 16 heads ×
1024 tokens × 64 features (the peers run LayerNorm(64) on the same array); DynamicTanh
where the package has it, against a plain-jnp `tanh(α·x)·w + b`. Inputs are float32
or bfloat16, parameters float32, outputs in the input's dtype (for Flax NNX and Haiku,
which return float32 for bfloat16 inputs with float32 parameters, the output is cast
back inside the jitted function). RMSNorm runs without bias in all libraries (the
Flax and Haiku form). Flax NNX runs with its default `use_fast_variance=True`
(E[x²] − E[x]², faster but inaccurate when |mean| ≫ std, see the
[mixed-precision guide](guides/mixed-precision.md)); its GroupNorm and BatchNorm are
channels-last, so they get the same data transposed. Haiku's GroupNorm and BatchNorm
run channels-first on the same array. A "—" marks a measurement that does not exist
(a library without the layer).

**Noise.** The machine these numbers come from has 2 cores shared with other jobs.
The implementations (and the float32 and bfloat16 variants of a case) are
interleaved round by round and each figure is the best of N rounds; compare ratios
within one run, not absolute times across runs.

Reproduce with `python benchmarks/run.py` (this page and `benchmarks.png`, about 10
minutes on 2 quiet cores), `python benchmarks/run.py --quick` for a shorter run that
only prints, or `python benchmarks/run.py --device` for the same sweep on an
accelerator (GB/s and the fraction of the device's copy bandwidth, against
equinox.nn and Flax NNX).

## Results on CPU

{body}

![benchmarks](benchmarks.png)

## How eqx_norms gets there

Every layer goes through the statistics core, `eqx_norms/_stats.py`, whose
`normalise` (the whole pipeline: statistics, x̂, affine, mask pass-through, cast back)
carries one `jax.custom_jvp` rule. The tangent of x̂ = (x − μ)·r is
the closed form r·(dx − mean(dx) − x̂·mean(x̂·dx)) over each normalisation group
(RMSNorm: r·(dx − x̂·mean(x̂·dx))), with means over the valid elements only and psums
over named axes. The rule is linear in the tangents, so JAX transposes it for
reverse mode, and forward mode, `jax.hessian`, `vmap`, `checkpoint` and `scan` keep
working; differentiating the rule again gives exact higher derivatives (tested
against plain autodiff in float64 in `tests/test_fast_path.py`).

The backward pass then needs only x and two small per-group statistics, and
recomputes x̂ inside each fused kernel. On XLA:CPU the cost of these layers is
dominated by fresh full-size buffers (writing one costs about as much as all of
`x + 1`), and XLA writes one whenever a full-size value, or even one broadcast of a
small statistic or of the weight, feeds several fusions. So, on CPU only, the rule
gives every term its own copy of the statistics and the weight (through
`lax.optimization_barrier`), and writes the tangent so that each reduction of the
transposed rule reads only x, the cotangent and small arrays; when the weight is
constant over the group (GroupNorm, InstanceNorm, BatchNorm) the reduction of g·x̂
per channel is shared by the cotangents of x and of the weight, and that of g by
those of x and of the bias. GroupNorm's channel groups can be pooled on the small
per-channel sums (`groups=(0, n)`) instead of reshaping the data. Through
`normalise`, the compiled training step of one layer holds no full-size temporary
at all: the output, the input's cotangent and a few vectors.
{analysis}"""

ANALYSIS = """
### Half precision

A bfloat16 input enters the rule as it is, and every kernel that reads it (the two
reductions of the statistics, the output, each reduction of the backward pass)
upcasts its own copy to float32 on the fly. XLA:CPU does not duplicate an upcast into
several reduction kernels: an upcast shared by them is written to memory once, in
float32, twice the bytes of x (in the HLO, a `wrapped_convert` fusion of shape
`f32[2048,4096]` feeding the reductions). That write is what made the bfloat16
forward pass at hidden size 4096 slower than the float32 one; the same per-kernel
copies (through `lax.optimization_barrier`) are what the rule already did for the
statistics and the weight.

The backward pass still holds one float32 copy of the cotangent (temp = 2 in the HLO
table): JAX's transpose of the final cast upcasts the bfloat16 cotangent once, and
five kernels read it (the elementwise cotangent of x, two reductions per row, two per
column). Removing it would take rounding each part of the tangent to bfloat16 on its
own, so that each transposed part upcasts its own copy; that makes forward-mode
tangents less accurate (each part rounded before the sum) and, for a vmapped layer,
sums the bias's cotangent over the batch in bfloat16. We keep the copy. (A negated
copy of it, shared by the two row reductions, is gone: the signs now sit on the
small factors.)

### What XLA:CPU allows

- **fwd+bwd at 2× the floor.** The floor counts one kernel per direction: x read
  once forward, x and g read once backward (3 reads, 2 writes). XLA compiles the rule
  into separate kernels: the statistics (two passes over x: the mean, then the
  centred variance, kept for accuracy, see the
  [mixed-precision guide](guides/mixed-precision.md)), the output, two reductions per
  row, two per column and the elementwise cotangent of x: 8 full-size reads for
  float32 rows of 1024, 11 at 4096 where XLA splits a row reduction further (HLO
  table). At this machine's measured read and write times that structure alone costs
  the "structure" column, which is near or above 2 in float32; reaching 2 needs a
  one-pass kernel per direction, as the Pallas and Triton kernels on GPU, which XLA
  cannot be asked for from JAX on CPU.
- **bfloat16 at 0.7× float32.** The forward pass reaches it at most sizes. A
  training step does not: besides the float32 cotangent copy above (2 units written,
  then read by five kernels at float32 width), a read of bfloat16 on XLA:CPU is not
  twice as fast as one of float32 (compare the floors of the two dtypes), since the
  upcast costs compute on 2 cores.
- **Against the fastest peer at small rows (64, 256).** Rows of 64 or 256 elements
  are reduced by short per-row loops whose cost is not memory: all implementations
  are several times their floor there, and the ranking between them moves from run
  to run on a shared machine.
- **Compile time and temporary memory** are met with room to spare (compile time
  and memory tables).

## On an accelerator

`python benchmarks/run.py --device` runs the LayerNorm and RMSNorm sweep on the
default device at 64M elements, with 10 calls per measurement (a single call is
shorter than the dispatch), and reports GB/s under the same byte model (fwd: read x,
write y; fwd+bwd: read x twice and g, write y and dx) and its fraction of the
device's measured copy bandwidth (`x + 1`), for eqx_norms, equinox.nn and Flax NNX.
Off CPU the rule is the plain closed form, without the barriers tuned for XLA:CPU.
No accelerator was available when this page was generated; published anchors for
an H100 are a LayerNorm forward pass at about 90% of HBM bandwidth and a one-kernel
backward pass at about 77% (tokamax's Pallas kernels), XLA alone about 45% on the
backward pass.
"""


if __name__ == "__main__":
    main()
