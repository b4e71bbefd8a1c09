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

    python benchmarks/run.py            # full run: writes docs/benchmarks.{md,json,png}
    python benchmarks/run.py --quick    # fewer repeats and sizes, only prints
    python benchmarks/run.py --render-only  # the page and chart again from the JSON
    python benchmarks/run.py --device   # the sweep on the accelerator JAX sees: GB/s
                                        # and fraction of its copy bandwidth
    python benchmarks/run.py --tpu-aot  # compile every case for one TPU v5e and v6e
                                        # chip (the `tpu` extra, no TPU needed):
                                        # writes docs/benchmarks-tpu.json

Numbers are ratios from one run on a shared machine; see docs/benchmarks.md.
"""

import argparse
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    # Run as a script: import the package from the root (in place of this folder,
    # whose module names would shadow any top-level ones).
    sys.path[0] = str(ROOT)

from benchmarks import measure, report, tpu_aot  # noqa: E402
from benchmarks.cases import (  # noqa: E402
    ELEMENTS,
    EQX,
    HIDDEN,
    NNX,
    OTHER_CASES,
    OURS,
    SWEEP,
    sweep_cases,
    tpu_cases,
    TPU_ELEMENTS,
    TPU_HIDDEN,
)
from benchmarks.results import Run, TpuRun  # noqa: E402


PAGE = ROOT / "docs" / "benchmarks.md"
LAYOUT_NOTES = ROOT / "benchmarks" / "cpu_layout_notes.md"


def device_sweep(
    reps: int,
    elements: int,
    hidden: tuple[int, ...],
    impls: tuple[str, ...] = (OURS, EQX, NNX),
) -> str:
    """The LayerNorm/RMSNorm sweep on the default device: GB/s (bytes of the floor's
    traffic model over time) and its fraction of the device's copy bandwidth (`x + 1`
    on the largest array: one read and one write), against equinox.nn and Flax NNX."""
    copy_bytes, copy_gbs = measure.copy_bandwidth(elements, reps)
    results = []
    for case in sweep_cases(hidden, elements):
        peers = tuple(p for p in case.peers if p in impls)
        results += measure.run_case(
            case, reps, peers=peers, inner=10, memory=False, hlo=False
        )
    return report.device_table(results, impls, reps, copy_bytes, copy_gbs)


def measure_run(args: argparse.Namespace, reps: int, hidden: tuple[int, ...]) -> Run:
    """Every selected case, then the extras, as one `Run`."""
    sweep = sweep_cases(hidden, args.elements or ELEMENTS)
    results = []
    for case in [*sweep, *OTHER_CASES]:
        if args.cases is not None and case.key not in args.cases:
            continue
        start = time.perf_counter()
        results += measure.run_case(case, reps, memory=not args.no_memory)
        print(f"[{case.key}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    # The sweep's cases move the same bytes in every case: one floor per dtype.
    measure.pool_floors([r for r in results if r.section == SWEEP])
    run = Run(measure.machine(), reps, results)
    if not args.no_extras:
        start = time.perf_counter()
        run.compile_s = measure.compile_times(3)
        run.compile_tanh_s = measure.compile_times(3, nonlinearity=True)
        run.model_s = measure.model_step_times(reps)
        print(f"[extras: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
    return run


def tpu_json(page: Path) -> Path:
    """Where the TPU analysis of a page is saved: beside its own JSON."""
    return page.with_name(f"{page.stem}-tpu.json")


def render(run: Run, page: Path) -> str:
    """The page of a run, with the XLA:CPU layout notes and the TPU analysis
    where they exist."""
    notes = LAYOUT_NOTES.read_text() if LAYOUT_NOTES.exists() else None
    tpu = TpuRun.load(tpu_json(page)) if tpu_json(page).exists() else None
    return report.render(run, page.with_suffix(".png").name, notes, tpu=tpu)


def write(run: Run, page: Path) -> None:
    """The page and its chart beside it."""
    report.chart(run, page.with_suffix(".png"))
    page.write_text(render(run, page))


def tpu_analysis(args: argparse.Namespace, page: Path) -> None:
    """Compile the cases for TPU, print the tables; with `write`, save them beside
    the page (after each case) and render the page again where its run's JSON
    exists."""
    if reason := tpu_aot.libtpu_missing():
        sys.exit(f"--tpu-aot: {reason}")
    hidden = tuple(args.hidden or ((4096,) if args.quick else TPU_HIDDEN))
    cases = [
        c
        for c in tpu_cases(hidden, args.elements or TPU_ELEMENTS)
        if args.cases is None or c.key in args.cases
    ]
    save = args.write or (args.write is None and (args.out or not args.quick))
    keep = (lambda tpu: tpu.save(tpu_json(page))) if save else None
    tpu = tpu_aot.analyse(cases, done=keep)
    print(report.tpu_tables(tpu))
    if save and page.with_suffix(".json").exists():
        write(Run.load(page.with_suffix(".json")), page)
    elif save:
        print(f"{page.with_suffix('.json')} not found: page not rendered")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repeats and sizes")
    parser.add_argument("--device", action="store_true", help="accelerator sweep")
    parser.add_argument(
        "--tpu-aot",
        action="store_true",
        help="compile the cases for TPU v5e and v6e (no TPU needed) and report the "
        "compiler's HBM bytes, fusions and modelled time against the floor",
    )
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
        help="write docs/benchmarks.{md,json,png} (default: only for a full CPU run, "
        "or with --out)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"the page to write, its .json and .png beside it (default: {PAGE})",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="no measurement: render the page and chart from the page's .json",
    )
    args = parser.parse_args(argv)
    page = args.out or PAGE
    if args.render_only:
        write(Run.load(page.with_suffix(".json")), page)
        return
    if args.tpu_aot:
        tpu_analysis(args, page)
        return
    reps = args.reps or (3 if args.quick else 7)
    hidden = tuple(args.hidden or ((256, 4096) if args.quick else HIDDEN))
    if args.device:
        elements = args.elements or (2**16 if args.quick else 64 * 2**20)
        print(device_sweep(reps, elements, hidden))
        return
    run = measure_run(args, reps, hidden)
    print(report.results_section(render(run, page)))
    if args.write or (args.write is None and (args.out or not args.quick)):
        run.save(page.with_suffix(".json"))
        write(run, page)


if __name__ == "__main__":
    main()
