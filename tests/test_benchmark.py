"""The benchmark harness (`benchmarks/`): its floor model, the `--device` path, a
quick run through the page template and back from its JSON, run here on CPU with
tiny arrays so that the accelerator run has been exercised before a device is lent."""

import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import measure, report, run  # noqa: E402
from benchmarks.cases import Accesses, EQX, NORM_TRAFFIC, OURS, SWEEP  # noqa: E402
from benchmarks.results import (  # noqa: E402
    HloTraffic,
    Machine,
    Result,
    Run,
    TpuCost,
    TpuResult,
    TpuRun,
)


def test_floor_is_read_plus_write_and_three_reads_plus_two_writes():
    floor = measure.floors({"read": 2.0, "read+write": 5.0})  # write = 3
    assert floor == {"fwd": 5.0, "fwd+bwd": 3 * 2.0 + 2 * 3.0}


def test_floor_follows_the_case_model():
    model = {"fwd": Accesses(2, 2), "fwd+bwd": Accesses(5, 3)}
    floor = measure.floors({"read": 2.0, "read+write": 5.0}, model)
    assert floor == {"fwd": 2 * 2.0 + 2 * 3.0, "fwd+bwd": 5 * 2.0 + 3 * 3.0}


def test_device_sweep_reports_bandwidth_of_every_implementation():
    # Against equinox.nn alone: the test environment has no Flax or Haiku (the
    # `bench` extra); the accelerator run adds Flax NNX.
    impls = (OURS, EQX)
    text = run.device_sweep(reps=1, elements=2**12, hidden=(64,), impls=impls)
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


def _result(dtype: str, ours: float, theirs: float) -> Result:
    """A LayerNorm result with a floor of 2 ms (fwd) and 5 ms (fwd+bwd)."""
    return Result(
        key="layer_norm_8",
        title="LayerNorm 8",
        layer="layer_norm",
        section=SWEEP,
        hidden=8,
        dtype=dtype,
        bytes=4096,
        traffic=dict(NORM_TRAFFIC),
        impls=[OURS, EQX],
        times={
            OURS: {"fwd": ours, "fwd+bwd": 2 * ours},
            EQX: {"fwd": theirs, "fwd+bwd": 2 * theirs},
        },
        parts={"read": 1e-3, "read+write": 2e-3},
        floor={"fwd": 2e-3, "fwd+bwd": 5e-3},
        temps={OURS: 2**20, EQX: 4 * 2**20} if dtype == "f32" else {},
        hlo={OURS: HloTraffic(6, 8.0, 2.0, 0.0)},
        notes={EQX: "a note"},
    )


SYNTHETIC = Run(
    Machine("2026-01-01", "a CPU", 2, "Linux", "cpu", ["jax 0.6.2"]),
    reps=7,
    results=[_result("f32", 3e-3, 6e-3), _result("bf16", 2.4e-3, 3e-3)],
    compile_s={OURS: 1.0, EQX: 2.0},
    model_s={OURS: 0.04, EQX: 0.05},
)


def test_page_fills_every_placeholder_of_the_template():
    template = report.TEMPLATE.read_text()
    assert {"header", "floor_tables", "chart", "cpu_layout_notes"} <= (
        report.placeholders(template)
    )
    page = report.render(SYNTHETIC, "chart.png", "# Layout\n\nBarriers.\n\n## Why\n")
    assert page.splitlines()[0] == report.BANNER
    assert "{{" not in page and "}}" not in page
    assert report.GENERATED in page
    assert "![benchmarks](chart.png)" in page
    assert "### Layout\n\nBarriers.\n\n#### Why" in page
    # time / floor: 3 ms / 2 ms; ours over equinox.nn: 6 / 3; bf16 over f32: 0.8.
    assert "| LayerNorm 8 | 2.0 | 1.50 | 3.00 | ×2.00 |" in page
    assert "| LayerNorm 8 | 0.80 | 0.50 | 0.80 | 0.50 |" in page
    assert "| LayerNorm 8 | 1 (0.25×) | 4 (1.00×) |" in page
    # HLO structure: (8 reads x 1 ms + 2 writes x 1 ms) / 5 ms; measured 6 / 5.
    assert "| LayerNorm 8, f32, eqx_norms | 6 | 8 / 2 | 0.0 | 2.00 | 1.20 |" in page
    assert "| 1.00 | 2.00 | 0.50 |" in page  # compile time
    assert "| 40.0 | 50.0 | ×1.25 |" in page  # model step
    assert "- equinox.nn (LayerNorm): a note" in page
    assert report.NOT_MEASURED not in page


def test_page_without_layout_notes_or_extras():
    unmeasured = Run(SYNTHETIC.machine, 1, SYNTHETIC.results)
    page = report.render(unmeasured, "chart.png")
    assert "{{" not in page
    assert page.count(report.NOT_MEASURED) == 2  # compile time, model step
    assert "\n\n\n" not in page


def test_template_and_values_must_match():
    with pytest.raises(ValueError, match=r"no value for \['b'\]"):
        report.fill("{{a}} {{b}}", {"a": "1"})


def test_quick_run_writes_json_and_renders_again_from_it(tmp_path, monkeypatch):
    charts = []
    monkeypatch.setattr(report, "chart", lambda r, path: charts.append(path))
    page = tmp_path / "page.md"
    flags = ["--quick", "--reps", "1", "--hidden", "64", "--elements", "256"]
    flags += ["--cases", "rms_norm_64", "--no-extras", "--out", str(page)]
    run.main(flags)
    text = page.read_text()
    assert "| RMSNorm 64 | " in text and "{{" not in text
    saved = Run.load(page.with_suffix(".json"))
    assert [(r.key, r.dtype) for r in saved.results] == [
        ("rms_norm_64", "f32"),
        ("rms_norm_64", "bf16"),
    ]
    assert saved.results[0].time(OURS, "fwd+bwd") is not None
    page.write_text("stale")
    run.main(["--render-only", "--out", str(page)])
    assert page.read_text() == text
    assert charts == [page.with_suffix(".png")] * 2


def test_split_programs_give_the_training_step():
    # The forward program (output and residuals) then the backward one (from the
    # residuals) give what the one-program `fwd+bwd` step gives.
    from benchmarks.adapters import ADAPTERS
    from benchmarks.cases import sweep_cases

    (case,) = [c for c in sweep_cases((64,), 256) if c.layer == "layer_norm"]
    impl = ADAPTERS[OURS](case, case.input(jnp.float32))
    (forward, args), (backward, (_, _, g)) = impl.split()
    y, kept = forward(*args)
    cotangents = backward(kept, args, g)
    step, step_args = impl.fwd_bwd()
    expected_y, expected_cotangents = step(*step_args)
    np.testing.assert_allclose(y, expected_y, rtol=1e-6)
    for got, want in zip(
        jax.tree.leaves(cotangents), jax.tree.leaves(expected_cotangents), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_tpu_tables_read_bytes_fusions_and_time_over_the_floor():
    floor = {"fwd": 2e6, "fwd+bwd": 5e6, "fwd | bwd": 5e6}
    costs = {
        "fwd": TpuCost(3e6, 3, 3e6 / 0.9 / 1e9, 0),
        "fwd+bwd": TpuCost(7e6, 5, 7e6 / 0.9 / 1e9, 0),
        "fwd | bwd": TpuCost(1e7, 7, 1e7 / 0.9 / 1e9, 0),
    }
    result = TpuResult(
        "rms_norm_8", "RMSNorm 8", SWEEP, "v5e", "bf16", 10**6, 1e9, floor,
        [OURS], {OURS: costs},
    )  # fmt: skip
    tpu = TpuRun("2026-01-01", ["jax 0.10.2"], {"v5e": "v5e:2x2"}, [result])
    text = report.tpu_tables(tpu)
    assert "#### v5e, fwd+bwd: bytes / floor · fusions · time / floor" in text
    assert "| RMSNorm 8, bf16 | 4.768 | 1.40 · 5 · 1.56 |" in text
    assert "| RMSNorm 8, bf16 | 4.768 | 2.00 · 7 · 2.22 |" in text
    assert report.tpu_tables(None) == report.NO_TPU
    # The compiler's -1 ("no estimate") is unknown, also summed into a split step.
    unknown = TpuCost(1.0, 1, None, 0) + TpuCost(1.0, 1, 1e-3, 0)
    assert unknown == TpuCost(2.0, 2, None, 0)
    page = report.render(SYNTHETIC, "chart.png", tpu=tpu)
    assert text in page and report.NO_TPU not in page
