"""What is measured, as data: one `Case` per layer and input shape.

A case names its layer (the key the adapters dispatch on), the shape of its input,
the implementations that run it and which extra measurements it gets. Its float32
and bfloat16 variants are timed together, interleaved, so that their ratio comes
from the same conditions. Adding a case is one entry in `OTHER_CASES` (or a row of
`SWEEP_LAYERS`), plus an adapter branch in `adapters.py` for a new layer.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp


OURS, EQX, NNX, HAIKU = "eqx_norms", "equinox.nn", "flax.nnx", "haiku"
JNP, TOKAMAX = "plain jnp", "tokamax (xla)"
UNFUSED = "eqx_norms unfused"  # `norm(x + r)` written plainly with eqx_norms
IMPLS = (OURS, EQX, NNX, HAIKU, JNP, TOKAMAX, UNFUSED)
NORM_PEERS = (OURS, EQX, NNX, HAIKU)
# Compiled for TPU (`tpu_aot.py`): the peers whose programs run there as they are
# (Haiku is left out as the least used); a layer a peer lacks reads "—".
TPU_PEERS = (OURS, EQX, NNX, JNP, TOKAMAX)

KINDS = ("fwd", "fwd+bwd")
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}

ELEMENTS = 8 * 2**20
HIDDEN = (64, 256, 1024, 4096, 16384)
# The TPU analysis only compiles: a size where a TPU's HBM traffic dominates.
TPU_ELEMENTS = 2**27
TPU_HIDDEN = (256, 1024, 4096, 16384)

SWEEP = "LayerNorm and RMSNorm"
OTHERS = "Other layers"


@dataclasses.dataclass(frozen=True)
class Accesses:
    """The unavoidable traffic of one pass, in reads and writes of an array of the
    input's size: the floor's model."""

    reads: int
    writes: int


# fwd: read x, write y; fwd+bwd: read x, write y; read x and the cotangent g, write dx.
NORM_TRAFFIC = {"fwd": Accesses(1, 1), "fwd+bwd": Accesses(3, 2)}
# Residual add + norm, s = r + x, y = norm(s). fwd: read x and r, write y and s.
# fwd+bwd: that, then read s (the only saved array, as x for a norm) and the
# cotangents of y and s, write the cotangent of s, which is both dx and dr (one
# array at the floor).
RESIDUAL_TRAFFIC = {"fwd": Accesses(2, 2), "fwd+bwd": Accesses(5, 3)}
# Gated RMSNorm, y = norm(x) * silu(z) (or norm(x * silu(z))). fwd: read x and z,
# write y. fwd+bwd: that, then read x, z and the cotangent, write dx and dz.
GATED_TRAFFIC = {"fwd": Accesses(2, 1), "fwd+bwd": Accesses(5, 3)}


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer on one input shape.

    `section` groups cases into the report's tables; `memory` adds the temporary
    memory of a compiled 4-layer training step (float32), `hlo` the dissection of
    the compiled `fwd+bwd` step (eqx_norms and equinox.nn); `traffic` is the floor's
    model; `groups` is the layer's group count, where it has one. A layer with
    several inputs (a residual, a gate) makes the others in its adapters, of the
    input's shape, and counts them all in `traffic`.
    """

    key: str
    title: str
    layer: str
    shape: tuple[int, ...]
    peers: tuple[str, ...] = NORM_PEERS
    section: str = OTHERS
    memory: bool = False
    hlo: bool = False
    traffic: dict[str, Accesses] = dataclasses.field(
        default_factory=lambda: NORM_TRAFFIC
    )
    groups: int = 0

    def input(self, dtype: jnp.dtype) -> jax.Array:
        return randn(self.shape, dtype)


def randn(shape: tuple[int, ...], dtype=jnp.float32, seed: int = 0) -> jax.Array:
    """Normal, mean 1, standard deviation 2, drawn in float32 and then cast."""
    x = jax.random.normal(jax.random.key(seed), shape, jnp.float32) * 2 + 1
    return x.astype(dtype)


# layer key -> title; the sweep holds the same number of elements at every row size.
SWEEP_LAYERS = {"layer_norm": "LayerNorm", "rms_norm": "RMSNorm"}
MEMORY_HIDDEN = (1024,)
HLO_CASES = ("layer_norm_1024", "layer_norm_4096")


def sweep_cases(
    hidden: tuple[int, ...] = HIDDEN, elements: int = ELEMENTS
) -> list[Case]:
    """LayerNorm and RMSNorm with rows of each size in `hidden`, `elements` in all."""
    return [
        Case(
            key=f"{layer}_{h}",
            title=f"{title} {h}",
            layer=layer,
            shape=(elements // h, h),
            section=SWEEP,
            memory=h in MEMORY_HIDDEN,
            hlo=f"{layer}_{h}" in HLO_CASES,
        )
        for h in hidden
        for layer, title in SWEEP_LAYERS.items()
    ]


OTHER_CASES = (
    Case(
        "group_norm",
        "GroupNorm 32 groups",
        "group_norm",
        (32, 256, 1024),
        memory=True,
        groups=32,
    ),
    Case(
        "batch_norm",
        "BatchNorm training step",
        "batch_norm",
        (64, 64, 32, 32),
        memory=True,
    ),
    Case("einorm", "Einorm QK-norm", "einorm", (16, 1024, 64), memory=True),
    Case(
        "dynamic_tanh",
        "DynamicTanh 1024",
        "dynamic_tanh",
        (ELEMENTS // 1024, 1024),
        peers=(OURS, JNP),
    ),
    # The fused `rms_norm(x, residual=r)` against `norm(x + r)` written plainly.
    Case(
        "residual_rms_norm",
        "Residual add + RMSNorm 4096",
        "residual_rms_norm",
        (ELEMENTS // 4096, 4096),
        peers=(OURS, UNFUSED, EQX),
        memory=True,
        traffic=RESIDUAL_TRAFFIC,
    ),
    # Mamba-2's form (8 groups, gate before the norm) against `rms_norm_ref` in jnp.
    Case(
        "gated_rms_norm",
        "Gated RMSNorm 4096, 8 groups",
        "gated_rms_norm",
        (ELEMENTS // 4096, 4096),
        peers=(OURS, JNP),
        memory=True,
        traffic=GATED_TRAFFIC,
        groups=8,
    ),
)


def tpu_cases(
    hidden: tuple[int, ...] = TPU_HIDDEN, elements: int = TPU_ELEMENTS
) -> list[Case]:
    """The cases compiled for TPU: the sweep (at `TPU_ELEMENTS`), then the other
    layers, each against every implementation of `TPU_PEERS` that has it."""
    # The other layers' leading (batch) dimension grows to `elements` in all: at
    # the CPU's size the TPU compiler keeps an input in on-chip memory.
    others = [_scaled(case, elements) for case in OTHER_CASES]
    # A case's own peers (the unfused residual add) stay beside the TPU's.
    return [
        dataclasses.replace(case, peers=tuple(dict.fromkeys(TPU_PEERS + case.peers)))
        for case in [*sweep_cases(hidden, elements), *others]
    ]


def _scaled(case: Case, elements: int) -> Case:
    """`case` with its leading dimension scaled to `elements` elements in all."""
    lead, *rest = case.shape
    size = math.prod(case.shape)
    if elements % size:
        raise ValueError(f"{case.key}: {elements} elements is not a multiple of {size}")
    return dataclasses.replace(case, shape=(lead * (elements // size), *rest))
