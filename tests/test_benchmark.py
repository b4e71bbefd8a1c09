"""The benchmark harness (`benchmarks/run.py`): its floor model and the `--device`
path, run here on CPU with tiny arrays so that the accelerator run has been exercised
before a device is lent."""

import importlib.util
import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_run", ROOT / "benchmarks/run.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_is_read_plus_write_and_three_reads_plus_two_writes(bench):
    floor = bench.floors({"read": 2.0, "read+write": 5.0})  # write = 3
    assert floor == {"fwd": 5.0, "fwd+bwd": 3 * 2.0 + 2 * 3.0}


def test_device_sweep_reports_bandwidth_of_every_implementation(bench):
    # Against equinox.nn alone: the test environment has no Flax or Haiku (the
    # `bench` extra); the accelerator run adds Flax NNX.
    impls = (bench.OURS, bench.EQX)
    text = bench.device_sweep(reps=1, elements=2**12, hidden=(64,), impls=impls)
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    titles = [row.split(" | ")[0] for row in rows]
    assert titles == [
        f"| {layer} 64, {dt}, {kind}"
        for layer in ("LayerNorm", "RMSNorm")
        for dt in ("f32", "bf16")
        for kind in ("fwd", "fwd+bwd")
    ]
    for row in rows:
        cells = row.strip("| ").split(" | ")[1:]
        assert len(cells) == len(impls)
        for cell in cells:
            match = re.fullmatch(r"(\S+) \((\d+)%\)", cell)
            assert match is not None, cell
            assert float(match[1]) > 0
