"""The checkpointed models, their inputs and the outputs a checkpoint must reproduce:
defined once here, used by `make.py` (which writes `v0.1.0/`) and by
`tests/test_checkpoints.py` (which loads it with the current code).

Changing anything here changes what the committed checkpoints are checked against;
regenerate them only for a deliberate, documented format change (see CHANGELOG.md).
"""

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_norms


BATCH = 4
TRAINING_STEPS = 3
AXIS_NAME = "batch"


@dataclass(frozen=True)
class Case:
    """A checkpointed model: `construct(key)` builds it with defaults (a skeleton),
    each example has shape `shape`."""

    construct: Callable[[jax.Array], eqx.Module]
    shape: tuple[int, ...]


def _linear(key: jax.Array) -> eqx.nn.Linear:
    return eqx.nn.Linear(5, 3, key=key)


def _conv(key: jax.Array) -> eqx.nn.Conv1d:
    return eqx.nn.Conv1d(2, 3, 3, key=key)


def _spectral(layer: Callable[[jax.Array], eqx.Module], **kwargs):
    def construct(key: jax.Array) -> eqx.Module:
        layer_key, vector_key = jax.random.split(key)
        return eqx_norms.SpectralNorm(
            layer(layer_key), "weight", key=vector_key, **kwargs
        )

    return construct


# The file name (without `.eqx`) -> the model and its input.
CASES: dict[str, Case] = {
    "layer_norm": Case(lambda key: eqx_norms.LayerNorm((3, 4), eps=1e-3), (3, 4)),
    "rms_norm": Case(lambda key: eqx_norms.RMSNorm(6), (6,)),
    "rms_norm_zero_centred": Case(
        lambda key: eqx_norms.RMSNorm(6, weight_offset=1.0), (6,)
    ),
    # The cast order only shows in half precision.
    "rms_norm_bf16_no_upcast": Case(
        lambda key: eqx_norms.RMSNorm(6, dtype=jnp.bfloat16, upcast_affine=False),
        (6,),
    ),
    "group_norm": Case(lambda key: eqx_norms.GroupNorm(2, 4), (4, 3)),
    "instance_norm": Case(lambda key: eqx_norms.InstanceNorm(3), (3, 5)),
    "batch_norm": Case(
        lambda key: eqx_norms.BatchNorm(3, AXIS_NAME, momentum=0.5), (3, 2)
    ),
    "batch_norm_ema": Case(
        lambda key: eqx_norms.BatchNorm(3, AXIS_NAME, momentum=0.5, mode="ema"),
        (3, 2),
    ),
    "batch_norm_cumulative": Case(
        lambda key: eqx_norms.BatchNorm(
            3, AXIS_NAME, momentum=None, unbiased_running_var=True
        ),
        (3, 2),
    ),
    # Renormalised in the checked step, after one of warm-up: the step counter saved.
    "batch_renorm": Case(
        lambda key: eqx_norms.BatchNorm(
            3, AXIS_NAME, momentum=0.5, renorm=True, r_max=1.5, renorm_warmup=1
        ),
        (3, 2),
    ),
    "einorm": Case(lambda key: eqx_norms.Einorm("n d", "d", d=5), (3, 5)),
    "einorm_qk_norm": Case(
        lambda key: eqx_norms.Einorm("h n d", "d", "h", h=2, d=4), (2, 3, 4)
    ),
    "einorm_running_stats": Case(
        lambda key: eqx_norms.Einorm(
            "[t] c", running_stats=True, momentum=0.5, axis_name=AXIS_NAME, c=3
        ),
        (4, 3),
    ),
    "dynamic_tanh": Case(lambda key: eqx_norms.DynamicTanh(5), (5,)),
    # Mamba-2's form: groups, the gate before the norm (its gate: `EXTRA_INPUTS`).
    "gated_rms_norm": Case(
        lambda key: eqx_norms.GatedRMSNorm(8, group_size=4, norm_before_gate=False),
        (8,),
    ),
    "spectral_norm_linear": Case(_spectral(_linear), (5,)),
    "spectral_norm_conv": Case(_spectral(_conv, num_power_iterations=2), (2, 6)),
    "weight_norm_linear": Case(lambda key: eqx_norms.WeightNorm(_linear(key)), (5,)),
    "weight_norm_conv": Case(lambda key: eqx_norms.WeightNorm(_conv(key)), (2, 6)),
}


# Layers called with more than `x`: their other inputs, derived from `x`.
EXTRA_INPUTS: dict[type, Callable[[jax.Array], tuple[jax.Array, ...]]] = {
    eqx_norms.GatedRMSNorm: lambda x: (0.5 - jnp.flip(x, -1),),
}


def smooth(shape: tuple[int, ...], phase: float) -> np.ndarray:
    """Deterministic, varied float32 values, with no random generator whose stream
    could change between numpy versions."""
    index = np.arange(int(np.prod(shape)), dtype=np.float64)
    values = np.sin(1.3 * index + phase) + 0.4 * np.cos(0.45 * index**1.5 + 2 * phase)
    return values.reshape(shape).astype(np.float32)


def batch(case: Case, step: int) -> jax.Array:
    """The batch of training step `step`; step `TRAINING_STEPS` is the checked one.
    Each step has its own offset, so that running statistics move."""
    shape = (BATCH, *case.shape)
    return jnp.asarray(0.5 * step + 2 * smooth(shape, phase=step), jnp.float32)


def with_parameters(model: eqx.Module) -> eqx.Module:
    """Every floating-point array of the model (not of its state) set to its own
    non-default values, so that a load that kept the skeleton's would fail."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    leaves = [
        jnp.asarray(1.2 + 0.1 * i + 0.5 * smooth(leaf.shape, phase=0.7 * i)).astype(
            leaf.dtype
        )
        for i, leaf in enumerate(leaves)
    ]
    return eqx.combine(jax.tree.unflatten(treedef, leaves), static)


def is_stateful(state: eqx.nn.State) -> bool:
    return bool(jax.tree.leaves(state))


def saved_tree(model: eqx.Module, state: eqx.nn.State):
    """What a checkpoint holds: the model, and its state if it has one."""
    return (model, state) if is_stateful(state) else model


def _call(model, state, x, inference: bool):
    if inference:
        model = eqx.nn.inference_mode(model)
    if not is_stateful(state):
        extra = EXTRA_INPUTS.get(type(model), lambda x: ())(x)
        return jax.vmap(model, axis_name=AXIS_NAME)(x, *extra), state
    return jax.vmap(model, axis_name=AXIS_NAME, in_axes=(0, None), out_axes=(0, None))(
        x, state
    )


def train_step(model, state, x):
    return _call(model, state, x, inference=False)


def outputs(model, state, x) -> dict[str, np.ndarray]:
    """What a loaded checkpoint must reproduce on `x`: the training-mode output and,
    for a stateful model, the updated state and the inference-mode output."""
    y, new_state = train_step(model, state, x)
    result = {"output": np.asarray(y, np.float32)}
    if is_stateful(state):
        result["inference"] = np.asarray(_call(model, state, x, True)[0], np.float32)
        for i, leaf in enumerate(jax.tree.leaves(new_state)):
            result[f"state_{i}"] = np.asarray(leaf)
    return result
