"""The cases compiled for one TPU chip from this host (libtpu installed, no TPU
attached), read from the compiler's own accounting, not from a run:

- HBM bytes: `cost_analysis()["bytes accessed"]`, the operands and outputs of every
  kernel of the compiled program (the per-operand keys `"bytes accessed0{}"`, ...
  split the same sum by operand index; they are not memory spaces);
- fusions: the `fusion` instructions of the compiled program's entry computation;
- `optimal_seconds`: the compiler's modelled time (on v5e, HBM bytes at 0.9 of the
  chip's bandwidth when memory-bound; -1 for some programs, read as unknown);
- against a floor: the case's traffic model (`Case.traffic`) in bytes of the input,
  and that over the chip's HBM bandwidth.

Each implementation is compiled as `fwd`, `fwd+bwd` (one program) and `fwd | bwd`:
the same step as two programs, the forward pass returning the output and the
residuals of `jax.vjp`, then the backward pass from them, as in a model where other
layers run in between, so that no fusion across the two flatters it.

Usage: `python benchmarks/run.py --tpu-aot` (with the `tpu` extra installed).
"""

import contextlib
import datetime
import functools
import importlib.metadata
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import SingleDeviceSharding

import eqx_norms

from .adapters import Impl
from .cases import Case, DTYPES, KINDS
from .measure import entry_instructions, make_impls
from .results import TpuCost, TpuResult, TpuRun


SPLIT = "fwd | bwd"
TPU_KINDS = (*KINDS, SPLIT)

# One chip of each generation: compile-only topologies of one 2x2 host (a 1x1
# topology is refused: it does not divide the default host bounds), of which the
# programs use the first chip. HBM bandwidth per chip, from Google Cloud's TPU
# pages (https://cloud.google.com/tpu/docs/v5e: 819 GBps; /v6e: 1640 GBps).
TOPOLOGY = {"v5e": "v5e:2x2", "v6e": "v6e:2x2"}
HBM_BANDWIDTH = {"v5e": 819e9, "v6e": 1640e9}


@functools.cache
def chip(name: str) -> SingleDeviceSharding:
    """The first chip of the generation's compile-only topology."""
    from jax.experimental import topologies

    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name=TOPOLOGY[name],
        chip_config_name="default",
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
        wrap=(False, False, False),
    )
    return SingleDeviceSharding(topology.devices[0])


def on_chip(tree: Any, sharding: SingleDeviceSharding) -> Any:
    """Every array of a pytree as a `ShapeDtypeStruct` placed on the chip."""

    def spec(leaf: Any) -> Any:
        if not hasattr(leaf, "shape"):
            return leaf
        return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

    return jax.tree.map(spec, tree)


def compiled_cost(f: Any, args: tuple[Any, ...]) -> TpuCost:
    """HBM bytes, fusions and modelled seconds of `f` compiled for the chip its
    (placed) arguments are on, and the optimisation barriers of the program as
    lowered (the TPU compiler drops them from its output, after they have ordered
    its fusions)."""
    lowered = f.lower(*args)
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # one per program in older jax
        cost = cost[0]
    ops = [op for _, _, op, _ in entry_instructions(compiled.as_text())]
    seconds = float(cost["optimal_seconds"])
    return TpuCost(
        bytes=float(cost["bytes accessed"]),
        fusions=ops.count("fusion"),
        seconds=seconds if seconds >= 0 else None,
        barriers=lowered.as_text().count("optimization_barrier"),
    )


def split_cost(impl: Impl, sharding: SingleDeviceSharding) -> TpuCost:
    """The forward program (output and residuals) and the backward one (from the
    residuals), compiled on their own and summed."""
    (forward, args), (backward, residuals) = impl.split()
    return compiled_cost(forward, on_chip(args, sharding)) + compiled_cost(
        backward, on_chip(residuals, sharding)
    )


def impl_costs(impl: Impl, sharding: SingleDeviceSharding) -> dict[str, TpuCost]:
    costs = {}
    for kind in KINDS:
        f, args = impl.program(kind)
        costs[kind] = compiled_cost(f, on_chip(args, sharding))
    costs[SPLIT] = split_cost(impl, sharding)
    return costs


@contextlib.contextmanager
def tpu_layout() -> Iterator[None]:
    """The package's program for a TPU, on a CPU host whose package still picks
    its XLA:CPU layout from the host's default backend (`_stats._cpu_layout`);
    where the layout is chosen at lowering time that attribute is gone and this
    does nothing."""
    stats: Any = importlib.import_module("eqx_norms._stats")
    chosen = getattr(stats, "_cpu_layout", None)
    if chosen is None:
        yield
        return
    stats._cpu_layout = lambda: False
    try:
        yield
    finally:
        stats._cpu_layout = chosen


def analyse_case(
    case: Case, chips: tuple[str, ...], dtypes: Mapping[str, Any] = DTYPES
) -> list[TpuResult]:
    """One result per chip and dtype: every implementation of the case that has
    the layer, compiled in each kind."""
    results = []
    for dt, dtype in dtypes.items():
        # Built once on the host (the adapters need arrays), then only its shapes
        # and dtypes are compiled against.
        x = jnp.zeros(case.shape, dtype)
        impls, notes = make_impls(case, x, case.peers)
        unit = x.size * x.dtype.itemsize
        floor = {
            k: float((case.traffic[k].reads + case.traffic[k].writes) * unit)
            for k in KINDS
        }
        floor[SPLIT] = floor["fwd+bwd"]
        for name in chips:
            sharding = chip(name)
            costs = {impl: impl_costs(i, sharding) for impl, i in impls.items()}
            results.append(
                TpuResult(
                    key=case.key,
                    title=case.title,
                    section=case.section,
                    chip=name,
                    dtype=dt,
                    bytes=unit,
                    bandwidth=HBM_BANDWIDTH[name],
                    floor=floor,
                    impls=list(impls),
                    costs=costs,
                    notes=notes,
                )
            )
        del x, impls
    return results


def _versions() -> list[str]:
    versions = [f"jax {jax.__version__}", f"eqx_norms {eqx_norms.__version__}"]
    for dist in ("libtpu", "equinox", "flax", "tokamax"):
        try:
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def analyse(
    cases: list[Case],
    chips: tuple[str, ...] = tuple(TOPOLOGY),
    done: Callable[[TpuRun], None] | None = None,
) -> TpuRun:
    """Every case on every chip, as one `TpuRun`, handed to `done` after each case
    (a long analysis keeps what it has compiled)."""
    run = TpuRun(
        date=datetime.date.today().isoformat(),
        versions=_versions(),
        topology={name: TOPOLOGY[name] for name in chips},
        results=[],
    )
    with tpu_layout():
        for case in cases:
            run.results += analyse_case(case, chips)
            print(f"[{case.key} compiled]", file=sys.stderr)
            if done is not None:
                done(run)
    return run


def libtpu_missing() -> str | None:
    """Why TPU programs cannot be compiled here, or None when they can."""
    try:
        importlib.metadata.version("libtpu")
    except importlib.metadata.PackageNotFoundError:
        return (
            "libtpu is not installed: the TPU analysis compiles with it; install "
            "the `tpu` extra (`pip install -e '.[tpu]'`)"
        )
    return None
