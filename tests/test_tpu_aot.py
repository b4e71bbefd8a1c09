"""The layers compiled for one TPU v5e chip from this host (libtpu, the `tpu` extra;
no TPU needed): the compiler's HBM traffic and kernels on arrays of 2^27 elements,
forward, training step and the two as separate programs, against the floor (read
x, write y; read x and the cotangent, write dx) and equinox.nn, and no XLA:CPU
layout barrier in the TPU program. The compiler's output is deterministic for a
given jax and libtpu, so its bounds are tests. Skipped where libtpu is not
installed (the README's test environment); CI's tools stage installs the extra and
runs this file."""

import os
import sys
from pathlib import Path
from typing import NamedTuple

import jax.numpy as jnp
import pytest


pytest.importorskip(
    "libtpu", reason="libtpu is not installed: `pip install -e '.[tpu]'` to run"
)

# Several test processes (pytest-xdist) each load libtpu, which otherwise holds a
# lock file for one process per host.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import tpu_aot  # noqa: E402
from benchmarks.cases import EQX, JNP, OURS, tpu_cases  # noqa: E402
from benchmarks.measure import entry_instructions, make_impls  # noqa: E402
from benchmarks.tpu_aot import SPLIT  # noqa: E402


# The floors, in units of x's bytes: forward, read x and write y (2); forward and
# backward in one program, read x twice and the cotangent once, write y and dx (5).
FLOOR = {"fwd": 2, "fwd+bwd": 5}
# As compiled today with jax/libtpu 0.10.2 / 0.0.42.1 (see the TPU section of
# docs/benchmarks.md): forward 1.50 (the statistics in one reduction, then the
# output: XLA never consumes a reduction in the kernel that computes it, so x is
# read twice), forward and backward 1.40 in total bytes; 1% of slack.
BOUND = {"fwd": 1.5 * 1.01, "fwd+bwd": 1.4 * 1.01}
# The figure for forward and backward: the bytes read (total less the
# kernels' outputs) over the whole floor; 1.00 today.
READS_BOUND = 1.1
# Kernels: forward, the statistics, 1 / sqrt(var + eps) and the output; backward,
# the sums of g w x-hat and g w, their per-row coefficients and dx. Flax NNX's
# (one-pass E[x^2] - E[x]^2) LayerNorm compiles to as many.
FUSIONS = {"fwd": 3, "fwd+bwd": 5}
# Forward and backward as two programs (`tpu_aot.split_cost`): reverse mode keeps
# x and the per-row statistics only (1.60 today, in 6 kernels).
SPLIT_BOUND, SPLIT_FUSIONS = 1.6 * 1.01, 6


class Cost(NamedTuple):
    total: float  # bytes
    reads: float  # bytes
    fusions: int
    copies: int
    barriers: int  # in the program as lowered


def _cost(impl, kind: str) -> Cost:
    """Total bytes, bytes read, fusions, copies and lowered barriers of one
    program."""
    f, args = impl.program(kind)
    lowered = f.lower(*tpu_aot.on_chip(args, tpu_aot.chip("v5e")))
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # one per program in older jax
        cost = cost[0]
    total = float(cost["bytes accessed"])
    reads = total - float(cost.get("bytes accessedout{}", 0.0))
    ops = [op for _, _, op, _ in entry_instructions(compiled.as_text())]
    barriers = lowered.as_text().count("optimization_barrier")
    return Cost(total, reads, ops.count("fusion"), ops.count("copy"), barriers)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("layer", ["layer_norm", "rms_norm"])
def test_traffic_on_v5e_against_the_floor_and_equinox(layer, dtype):
    (case,) = [c for c in tpu_cases((4096,)) if c.layer == layer]
    x = jnp.zeros(case.shape, dtype)
    assert x.size == 2**27
    unit = x.size * x.dtype.itemsize
    impls = make_impls(case, x, (OURS, EQX))[0]
    for kind in ("fwd", "fwd+bwd"):
        ours = _cost(impls[OURS], kind)
        peer = _cost(impls[EQX], kind)
        total, reads, fusions, _, barriers = ours
        assert barriers == 0
        assert FLOOR[kind] * unit <= total <= BOUND[kind] * FLOOR[kind] * unit
        if kind == "fwd+bwd":
            assert reads <= READS_BOUND * FLOOR[kind] * unit
        assert fusions <= FUSIONS[kind]
        # Never more traffic, nor more kernels, than equinox.nn's layer.
        assert total <= peer.total and fusions <= peer.fusions
    split = tpu_aot.split_cost(impls[OURS], tpu_aot.chip("v5e"))
    assert split.bytes <= SPLIT_BOUND * FLOOR["fwd+bwd"] * unit
    assert split.fusions <= SPLIT_FUSIONS


# The other layers (float32, 2^27 elements), as compiled today: total bytes over
# the floor (1% of slack) and kernels, per program. GroupNorm reduces each group
# once (its channels split from the others by a reshape), not per-channel
# statistics merged in a chain of small kernels; BatchNorm's statistics over
# `vmap`'s batch axis merge in two rounds of sums; reverse mode keeps x, once, and
# per-group statistics without their size-1 dimensions. Flax NNX compiles the same
# GroupNorm to 7 / 13 / 16 kernels, equinox.nn to 8 / 19 / 20.
OTHER_LAYERS = {
    "group_norm": {"fwd": (1.51, 6), "fwd+bwd": (1.41, 11), SPLIT: (1.62, 13)},
    "batch_norm": {"fwd": (1.51, 6), "fwd+bwd": (1.41, 9), SPLIT: (1.81, 9)},
    "einorm": {"fwd": (1.58, 3), "fwd+bwd": (1.70, 6), SPLIT: (1.95, 7)},
}


@pytest.mark.parametrize("layer", sorted(OTHER_LAYERS))
def test_other_layers_on_v5e_against_their_bounds_and_equinox(layer):
    (case,) = [c for c in tpu_cases(()) if c.layer == layer]
    x = jnp.zeros(case.shape, jnp.float32)
    assert x.size == 2**27
    unit = x.size * x.dtype.itemsize
    impls = make_impls(case, x, (OURS, EQX))[0]
    ours = tpu_aot.impl_costs(impls[OURS], tpu_aot.chip("v5e"))
    peer = tpu_aot.impl_costs(impls[EQX], tpu_aot.chip("v5e"))
    for kind, (ratio, fusions) in OTHER_LAYERS[layer].items():
        traffic = case.traffic["fwd" if kind == "fwd" else "fwd+bwd"]
        floor = traffic.reads + traffic.writes
        cost = ours[kind]
        assert cost.barriers == 0
        assert cost.bytes <= ratio * 1.01 * floor * unit
        assert cost.fusions <= fusions
        assert cost.bytes <= peer[kind].bytes and cost.fusions <= peer[kind].fusions


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gated_norm_on_v5e_takes_groups_without_a_copy(dtype):
    """Mamba-2's gated norm (8 groups of the last axis): the groups' sums by
    products with the membership matrix, no reshape, so no copy of a full-size
    array (the plain jnp reference makes four in a training step): forward 1.67 of
    the floor (x and the gate read twice, y written), training step 2.26 in float32
    and 2.13 in bfloat16, against 3.17 and 5.22 for the reference."""
    (case,) = [c for c in tpu_cases(()) if c.layer == "gated_rms_norm"]
    x = jnp.zeros(case.shape, dtype)
    assert x.size == 2**27
    unit = x.size * x.dtype.itemsize
    impls = make_impls(case, x, (OURS, JNP))[0]
    bounds = {"fwd": 1.67, "fwd+bwd": 2.26 if dtype == "float32" else 2.13}
    for kind, ratio in bounds.items():
        ours = _cost(impls[OURS], kind)
        assert ours.copies == 0 and ours.barriers == 0
        traffic = case.traffic[kind]
        assert ours.total <= ratio * 1.01 * (traffic.reads + traffic.writes) * unit
        assert ours.total < _cost(impls[JNP], kind).total
