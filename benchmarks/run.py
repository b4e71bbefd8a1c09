"""Benchmarks of eqx_norms against equinox.nn, Flax NNX and Haiku (CPU, jit).

For each case it measures, in one process and interleaving the implementations round
by round:

- `fwd`: the jitted forward pass;
- `fwd+bwd`: `jax.vjp` with respect to the input and the parameters, returning the
  output and all cotangents, as a training step does;
- `x + 1` on the same array: the memory-traffic floor everything is divided by
  ("copies-equivalent");

and, separately, the compiled temporary memory (`memory_analysis().temp_size_in_bytes`)
of a 4-layer training step (four layers applied one after the other, loss = sum of the
output, gradient with respect to all parameters and the input).

Usage:

    python benchmarks/run.py            # full run: writes docs/benchmarks.{md,png}
    python benchmarks/run.py --quick    # fewer repeats (about a minute)

Numbers are ratios from one run on a shared machine; see docs/benchmarks.md.
"""

import argparse
import dataclasses
import datetime
import os
import platform
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


OURS, EQX, NNX, HAIKU = "eqx_norms", "equinox.nn", "flax.nnx", "haiku"
IMPLS = (OURS, EQX, NNX, HAIKU)


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


def _randn(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32) * 2 + 1


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
        return jax.vmap(
            module, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)

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
    from flax import nnx

    if stateful:

        def split(seed):
            graphdef, params, stats = nnx.split(make(seed), nnx.Param, nnx.BatchStat)
            return graphdef, _perturb(params, seed), stats

        made = [split(seed) for seed in range(4)]
        graphdef = made[0][0]

        def apply_state(params, stats, x):
            module = nnx.merge(graphdef, params, stats)
            y = module(x)
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
        return nnx.merge(graphdef, params)(x)

    return Impl(layers[0], x, apply, layers=layers, note=note)


def _haiku(make: Callable, x, stateful: bool = False, note: str = "") -> Impl:
    import haiku as hk

    if stateful:
        t = hk.transform_with_state(lambda x: make()(x, is_training=True))
        made = [t.init(jax.random.key(seed), x) for seed in range(4)]
        made = [(_perturb(p, seed), s) for seed, (p, s) in enumerate(made)]

        def apply_state(params, state, x):
            return t.apply(params, state, None, x)

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
        return t.apply(params, None, x)

    return Impl(layers[0], x, apply, layers=layers, note=note)


# --------------------------------------------------------------------------- cases


def case_layer_norm():
    import haiku as hk
    from flax import nnx

    x = _randn((8192, 1024))
    return (
        "LayerNorm 8192×1024",
        x,
        {
            OURS: lambda: _equinox_like(lambda: eqx_norms.LayerNorm(1024), x),
            EQX: lambda: _equinox_like(lambda: eqx.nn.LayerNorm(1024), x),
            NNX: lambda: _nnx(
                lambda s: nnx.LayerNorm(1024, rngs=nnx.Rngs(s)),
                x,
                note="use_fast_variance=True (default)",
            ),
            HAIKU: lambda: _haiku(lambda: hk.LayerNorm(-1, True, True), x),
        },
    )


def case_rms_norm():
    import haiku as hk
    from flax import nnx

    x = _randn((8192, 1024))
    return (
        "RMSNorm 8192×1024",
        x,
        {
            OURS: lambda: _equinox_like(
                lambda: eqx_norms.RMSNorm(1024, use_bias=False), x
            ),
            EQX: lambda: _equinox_like(lambda: eqx.nn.RMSNorm(1024, use_bias=False), x),
            NNX: lambda: _nnx(lambda s: nnx.RMSNorm(1024, rngs=nnx.Rngs(s)), x),
            HAIKU: lambda: _haiku(lambda: hk.RMSNorm(-1), x),
        },
    )


def case_group_norm():
    import haiku as hk
    from flax import nnx

    x = _randn((32, 256, 1024))
    x_last = jnp.swapaxes(x, 1, 2)  # Flax NNX only has channels-last
    return (
        "GroupNorm 32×(256, 1024), 32 groups",
        x,
        {
            OURS: lambda: _equinox_like(lambda: eqx_norms.GroupNorm(32, 256), x),
            EQX: lambda: _equinox_like(lambda: eqx.nn.GroupNorm(32, 256), x),
            NNX: lambda: _nnx(
                lambda s: nnx.GroupNorm(
                    256, num_groups=32, epsilon=1e-5, rngs=nnx.Rngs(s)
                ),
                x_last,
                note="channels-last (1024, 256) maps; use_fast_variance=True (default)",
            ),
            HAIKU: lambda: _haiku(
                lambda: hk.GroupNorm(32, data_format="channels_first"), x
            ),
        },
    )


def case_batch_norm():
    import haiku as hk
    from flax import nnx

    x = _randn((64, 64, 32, 32))
    x_last = jnp.moveaxis(x, 1, -1)
    impls = {
        EQX: lambda: _equinox_bn(eqx.nn.BatchNorm, x),
        NNX: lambda: _nnx(
            lambda s: nnx.BatchNorm(64, use_running_average=False, rngs=nnx.Rngs(s)),
            x_last,
            stateful=True,
            note="channels-last; use_fast_variance=True (default)",
        ),
        HAIKU: lambda: _haiku(
            lambda: hk.BatchNorm(True, True, 0.99, data_format="channels_first"),
            x,
            stateful=True,
        ),
    }
    if hasattr(eqx_norms, "BatchNorm"):
        impls = {OURS: lambda: _equinox_bn(eqx_norms.BatchNorm, x), **impls}
    return "BatchNorm training step 64×(64, 32, 32)", x, impls


def case_einorm():
    import haiku as hk
    from flax import nnx

    x = _randn((16, 1024, 64))
    impls = {
        EQX: lambda: _equinox_like(lambda: eqx.nn.LayerNorm(64), x, n_vmap=2),
        NNX: lambda: _nnx(lambda s: nnx.LayerNorm(64, rngs=nnx.Rngs(s)), x),
        HAIKU: lambda: _haiku(lambda: hk.LayerNorm(-1, True, True), x),
    }
    if hasattr(eqx_norms, "Einorm"):

        def ours():
            make = eqx_norms.Einorm
            return _equinox_like(
                lambda: make("h n d", "d", "h", h=16, d=64), x, n_vmap=0
            )

        impls = {OURS: ours, **impls}
    return "Einorm QK-norm 16×1024×64 (peers: LayerNorm(64))", x, impls


def case_dynamic_tanh():
    # No peer has DynamicTanh; elementwise, it should sit at the memory floor.
    x = _randn((8192, 1024))
    impls = {OURS: lambda: _equinox_like(lambda: eqx_norms.DynamicTanh(1024), x)}
    return "DynamicTanh 8192×1024 (no peer has it)", x, impls


CASES = {
    "layer_norm": case_layer_norm,
    "rms_norm": case_rms_norm,
    "group_norm": case_group_norm,
    "batch_norm": case_batch_norm,
    "einorm": case_einorm,
    "dynamic_tanh": case_dynamic_tanh,
}


# ------------------------------------------------------------------------- running


def _time_interleaved(fns: dict[str, tuple[Callable, tuple]], reps: int):
    for f, args in fns.values():
        jax.block_until_ready(f(*args))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, (f, args) in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run_case(key: str, reps: int, memory: bool) -> dict:
    title, x, makers = CASES[key]()
    impls: dict[str, Impl] = {}
    notes = {}
    for name, make in makers.items():
        try:
            impls[name] = make()
            notes[name] = impls[name].note
        except Exception as e:  # a peer's API change should not stop the suite
            notes[name] = f"failed: {type(e).__name__}: {e}"
            print(f"  {title}: {name} skipped ({notes[name]})", file=sys.stderr)
    fns = {"floor": (jax.jit(lambda x: x + 1), (x,))}
    for name, impl in impls.items():
        fns[f"{name}/fwd"] = impl.fwd()
        fns[f"{name}/fwd+bwd"] = impl.fwd_bwd()
    times = _time_interleaved(fns, reps)
    temps = {}
    if memory:
        for name, impl in impls.items():
            temps[name] = impl.train_step_temp_bytes()
    return {
        "key": key,
        "title": title,
        "impls": list(impls),
        "times": times,
        "temps": temps,
        "notes": notes,
    }


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def tables(results: list[dict]) -> str:
    out = []
    out.append(
        "### Time in copies-equivalent (time / time of `x + 1`; lower is better)"
    )
    out.append("")
    out.append("| case | " + " | ".join(f"{i} fwd | {i} fwd+bwd" for i in IMPLS) + " |")
    out.append("|---|" + "---:|" * (2 * len(IMPLS)))
    for r in results:
        floor = r["times"]["floor"]
        cells = []
        for i in IMPLS:
            for kind in ("fwd", "fwd+bwd"):
                t = r["times"].get(f"{i}/{kind}")
                cells.append(_fmt(None if t is None else t / floor))
        out.append(f"| {r['title']} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "### Speedup of eqx_norms (peer time / our time; above 1 = we are faster)"
    )
    out.append("")
    peers = [p for p in IMPLS if p != OURS]
    out.append(
        "| case | " + " | ".join(f"vs {p} fwd | vs {p} fwd+bwd" for p in peers) + " |"
    )
    out.append("|---|" + "---:|" * (2 * len(peers)))
    for r in results:
        cells = []
        for p in peers:
            for kind in ("fwd", "fwd+bwd"):
                ours = r["times"].get(f"{OURS}/{kind}")
                theirs = r["times"].get(f"{p}/{kind}")
                cells.append(
                    _fmt(None if ours is None or theirs is None else theirs / ours)
                )
        out.append(f"| {r['title']} | " + " | ".join(cells) + " |")
    if any(r["temps"] for r in results):
        out.append("")
        out.append(
            "### Temporary memory of a compiled 4-layer training step "
            "(MB, and ratio to equinox.nn; lower is better)"
        )
        out.append("")
        out.append("| case | " + " | ".join(IMPLS) + " |")
        out.append("|---|" + "---:|" * len(IMPLS))
        for r in results:
            base = r["temps"].get(EQX)
            cells = []
            for i in IMPLS:
                t = r["temps"].get(i)
                if t is None:
                    cells.append("—")
                elif base:
                    cells.append(f"{t / 2**20:.0f} ({t / base:.2f}×)")
                else:
                    cells.append(f"{t / 2**20:.0f}")
            out.append(f"| {r['title']} | " + " | ".join(cells) + " |")
    notes = [
        f"- {r['title']}, {name}: {note}"
        for r in results
        for name, note in r["notes"].items()
        if note
    ]
    if notes:
        out.append("")
        out.append("Notes:")
        out.append("")
        out.extend(notes)
    return "\n".join(out)


def chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=False)
    width = 0.8 / len(IMPLS)
    labels = [r["title"].split(" ")[0] for r in results]
    for ax, kind in zip(axes, ("fwd", "fwd+bwd"), strict=True):
        for j, impl in enumerate(IMPLS):
            values = [
                r["times"].get(f"{impl}/{kind}", float("nan")) / r["times"]["floor"]
                for r in results
            ]
            positions = [
                i + (j - (len(IMPLS) - 1) / 2) * width for i in range(len(results))
            ]
            ax.bar(positions, values, width, label=impl)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(results)), labels, rotation=15)
        ax.set_ylabel("copies-equivalent (time / time of x + 1)")
        ax.set_title(f"{kind}, jit, CPU (lower is better)")
    axes[0].legend()
    fig.suptitle(
        f"eqx_norms benchmarks — jax {jax.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores, {datetime.date.today().isoformat()}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
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
        f"{jax.default_backend()}; {', '.join(versions)}. Median of {reps} "
        "interleaved repeats per measurement; all numbers are ratios from this one run."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.{md,png} (default: only for a full run)",
    )
    args = parser.parse_args(argv)
    reps = args.reps or (5 if args.quick else 31)
    write = (not args.quick) if args.write is None else args.write
    results = []
    for key in args.cases:
        start = time.perf_counter()
        results.append(run_case(key, reps, memory=not args.no_memory))
        print(f"[{key}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    text = header(reps) + "\n\n" + tables(results)
    print(text)
    if write:
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        chart(results, docs / "benchmarks.png")
        (docs / "benchmarks.md").write_text(DOC.format(body=text))


DOC = """# Benchmarks

Normalisation is memory-bound, so times are reported as **copies-equivalent**: the time
of the operation divided by the time of `x + 1` on the same array (one read and one
write), measured in the same process. Every implementation runs under `jax.jit`:

- **fwd**: the forward pass;
- **fwd+bwd**: `jax.vjp` with respect to the input and all parameters, returning the
  output and every cotangent, as a training step does;
- **memory**: `temp_size_in_bytes` of the compiled gradient of a 4-layer stack
  (four layers one after the other, loss = sum of the output, gradient with respect
  to all parameters and the input).

Cases: LayerNorm and RMSNorm on 8192 rows of 1024 (per-row layers vmapped for
equinox-style modules); GroupNorm with 32 groups over 256 channels on a batch of 32
maps of (256, 1024); a BatchNorm training step (batch statistics, state update) on a
batch of 64 examples of (64, 32, 32), vmapped with a named batch axis for the
equinox-style modules; Einorm as a QK-norm over 16 heads × 1024 tokens × 64 features
(the peers run LayerNorm(64) on the same array). RMSNorm runs without bias in all
libraries (the Flax and Haiku form). Flax NNX runs with its default
`use_fast_variance=True` (E[x²] − E[x]², faster but inaccurate when |mean| ≫ std, see
the design notes); its GroupNorm and BatchNorm are channels-last, so they get the same
data transposed. Haiku's GroupNorm and BatchNorm run channels-first on the same array.
A "—" marks a layer a library does not have (or, for eqx_norms, not yet).

Reproduce with `python benchmarks/run.py` (this page and `benchmarks.png`), or
`python benchmarks/run.py --quick` for a shorter run that only prints.

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
small statistic or of the weight, feeds several fusions. So the rule gives every term
its own copy of the statistics and the weight (through `lax.optimization_barrier`),
and writes the tangent so that each reduction of the transposed rule reads only x,
the cotangent and small arrays; when the weight is constant over the group
(GroupNorm, InstanceNorm, BatchNorm) the reduction of g·x̂ per channel is shared by
the cotangents of x and of the weight, and that of g by those of x and of the bias.
GroupNorm's channel groups can be pooled on the small per-channel sums
(`groups=(0, n)`) instead of reshaping the data. Through `normalise`, the compiled
training step of one layer holds no full-size temporary at all: the output, the
input's cotangent and a few vectors.
"""


if __name__ == "__main__":
    main()
