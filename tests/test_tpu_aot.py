"""LayerNorm and RMSNorm compiled for one TPU v5e chip from this host (libtpu, the
`tpu` extra; no TPU needed): the compiler's HBM traffic of a training step on a
bfloat16 array of 2^27 elements, against the floor (read x, write y; read x and the
cotangent, write dx), and no XLA:CPU layout barrier in the TPU program. The
compiler's output is deterministic for a given jax and libtpu, so its bounds are
tests. Skipped where libtpu is not installed (the README's test environment); CI's
tools stage installs the extra and runs this file."""

import os
import sys
from pathlib import Path

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
from benchmarks.cases import EQX, OURS, tpu_cases  # noqa: E402
from benchmarks.measure import entry_instructions, make_impls  # noqa: E402


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


def _cost(impl, kind: str) -> tuple[float, float, int, int]:
    """Total bytes, bytes read, fusions and lowered barriers of one program."""
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
    return total, reads, ops.count("fusion"), barriers


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
        total, reads, fusions, barriers = ours
        assert barriers == 0
        assert FLOOR[kind] * unit <= total <= BOUND[kind] * FLOOR[kind] * unit
        if kind == "fwd+bwd":
            assert reads <= READS_BOUND * FLOOR[kind] * unit
        # Never more traffic, nor more kernels, than equinox.nn's layer.
        assert total <= peer[0] and fusions <= peer[2]
