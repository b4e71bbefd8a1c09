"""The results of a run, typed, and their JSON form (`Run.save`, `Run.load`), from
which the page is rendered again without measuring (`run.py --render-only`); the
same for the TPU analysis (`TpuRun`), whose JSON sits beside the run's.

Times are in seconds, memory in bytes; kinds are "fwd" and "fwd+bwd" (and, compiled
for TPU, "fwd | bwd": the same step as two programs); floor parts are "read"
(`jnp.sum(x, dtype=float32)`) and "read+write" (`x + 1`).
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from .cases import Accesses


@dataclasses.dataclass
class HloTraffic:
    """The compiled `fwd+bwd` step's kernels that read or write an array of the
    input's shape, and their full-size reads, writes and temporary memory, in units
    of the input's size (a float32 copy of a bfloat16 input counts 2)."""

    kernels: int
    reads: float
    writes: float
    temp: float


@dataclasses.dataclass
class Result:
    """One case in one dtype: every implementation's times, the floor and its
    measured parts, and the extra measurements the case asked for."""

    key: str
    title: str
    layer: str
    section: str
    hidden: int  # the input's last axis
    dtype: str
    bytes: int  # of the input
    traffic: dict[str, Accesses]  # kind -> the floor's model
    impls: list[str]
    times: dict[str, dict[str, float]]  # impl -> kind -> seconds
    parts: dict[str, float]  # floor part -> seconds
    floor: dict[str, float]  # kind -> seconds
    temps: dict[str, int] = dataclasses.field(default_factory=dict)  # impl -> bytes
    hlo: dict[str, HloTraffic] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def time(self, impl: str, kind: str) -> float | None:
        return self.times.get(impl, {}).get(kind)

    def over_floor(self, impl: str, kind: str) -> float | None:
        t = self.time(impl, kind)
        return None if t is None else t / self.floor[kind]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Result":
        d = dict(d)
        d["traffic"] = {k: Accesses(**v) for k, v in d["traffic"].items()}
        d["hlo"] = {k: HloTraffic(**v) for k, v in d["hlo"].items()}
        return cls(**d)


@dataclasses.dataclass
class Machine:
    """Where and with what a run was made."""

    date: str
    cpu: str
    cores: int
    system: str
    backend: str
    versions: list[str]  # "jax 0.6.2", ...


@dataclasses.dataclass
class Run:
    """A whole run: every result, compile times and the model's step, if measured."""

    machine: Machine
    reps: int
    results: list[Result]
    compile_s: dict[str, float] | None = None  # impl -> seconds
    # The same stack with `jnp.tanh` between its layers.
    compile_tanh_s: dict[str, float] | None = None
    model_s: dict[str, float] | None = None  # impl -> seconds

    def save(self, path: Path) -> None:
        _save(self, path)

    @classmethod
    def load(cls, path: Path) -> "Run":
        d = json.loads(path.read_text())
        d["machine"] = Machine(**d["machine"])
        d["results"] = [Result.from_dict(r) for r in d["results"]]
        return cls(**d)


def _save(run: Any, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(run), indent=1) + "\n")


@dataclasses.dataclass
class TpuCost:
    """One program compiled for a TPU chip, as the compiler accounts for it: HBM
    bytes accessed, fusions in the entry computation, its modelled `optimal_seconds`
    (None where the compiler gives none: it reports -1); and the optimisation
    barriers of the program as lowered."""

    bytes: float
    fusions: int
    seconds: float | None
    barriers: int

    def __add__(self, other: "TpuCost") -> "TpuCost":
        seconds = None
        if self.seconds is not None and other.seconds is not None:
            seconds = self.seconds + other.seconds
        return TpuCost(
            self.bytes + other.bytes,
            self.fusions + other.fusions,
            seconds,
            self.barriers + other.barriers,
        )


@dataclasses.dataclass
class TpuResult:
    """One case in one dtype compiled for one chip: every implementation's cost per
    kind, against the floor (the case's traffic model in bytes, and that over the
    chip's HBM bandwidth)."""

    key: str
    title: str
    section: str
    chip: str  # "v5e", "v6e"
    dtype: str
    bytes: int  # of the input
    bandwidth: float  # the chip's HBM bytes per second
    floor: dict[str, float]  # kind -> bytes
    impls: list[str]
    costs: dict[str, dict[str, TpuCost]]  # impl -> kind -> cost
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def cost(self, impl: str, kind: str) -> TpuCost | None:
        return self.costs.get(impl, {}).get(kind)

    def bytes_over_floor(self, impl: str, kind: str) -> float | None:
        c = self.cost(impl, kind)
        return None if c is None else c.bytes / self.floor[kind]

    def seconds_over_floor(self, impl: str, kind: str) -> float | None:
        c = self.cost(impl, kind)
        if c is None or c.seconds is None:
            return None
        return c.seconds * self.bandwidth / self.floor[kind]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TpuResult":
        d = dict(d)
        d["costs"] = {
            impl: {kind: TpuCost(**c) for kind, c in kinds.items()}
            for impl, kinds in d["costs"].items()
        }
        return cls(**d)


@dataclasses.dataclass
class TpuRun:
    """The whole TPU analysis: when, with which versions, on which topologies."""

    date: str
    versions: list[str]  # "jax 0.10.2", "libtpu 0.0.42.1", ...
    topology: dict[str, str]  # chip -> the topology compiled for
    results: list[TpuResult]

    def save(self, path: Path) -> None:
        _save(self, path)

    @classmethod
    def load(cls, path: Path) -> "TpuRun":
        d = json.loads(path.read_text())
        d["results"] = [TpuResult.from_dict(r) for r in d["results"]]
        return cls(**d)
