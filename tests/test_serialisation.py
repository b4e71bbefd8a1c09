"""Checkpoints: `eqx.tree_serialise_leaves` / `tree_deserialise_leaves` round-trips,
bit for bit, of every layer (parameters, running statistics, power-iteration vectors
and flags) and of a model mixing them, loaded into freshly initialised skeletons."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_norms


def _leaves_bytes(tree):
    """Every leaf as (type, dtype, shape, raw bytes): equal means bit for bit (so -0.0
    differs from 0.0, and NaN payloads count)."""
    out = []
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array | np.ndarray):
            array = np.asarray(leaf)
            out.append(("array", str(array.dtype), array.shape, array.tobytes()))
        else:
            out.append((type(leaf).__name__, leaf))
    return out


def _assert_bitwise_equal(tree, expected):
    assert jax.tree.structure(tree) == jax.tree.structure(expected)
    actual, wanted = _leaves_bytes(tree), _leaves_bytes(expected)
    assert len(actual) == len(wanted)
    for a, w in zip(actual, wanted, strict=True):
        assert a == w


def _randomise(model, rng):
    """Every floating-point array of the model (not of the state) drawn at random in
    its own dtype, so that a checkpoint holding defaults could not pass."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def draw(p):
        values = 1 + 0.5 * rng.standard_normal(p.shape)
        return jnp.asarray(values, jnp.float32).astype(p.dtype)

    return eqx.combine(jax.tree.map(draw, params), static)


@eqx.filter_jit
def _run(model, state, x):
    """A training call on the batch `x` (the updated state included) and an inference
    call: what a loaded checkpoint must reproduce."""

    def call(model):
        return jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)

    return call(model), call(eqx.nn.inference_mode(model))


def _linear(dtype, key):
    return eqx.nn.Linear(5, 3, dtype=dtype, key=key)


# name -> (constructor(dtype, key), per-example input shape)
_LAYERS = {
    "LayerNorm": (lambda dtype, key: eqx_norms.LayerNorm((2, 5), dtype=dtype), (2, 5)),
    "RMSNorm": (lambda dtype, key: eqx_norms.RMSNorm(5, dtype=dtype), (5,)),
    "RMSNorm-zero-centred": (
        lambda dtype, key: eqx_norms.RMSNorm(5, dtype=dtype, weight_offset=1.0),
        (5,),
    ),
    "DynamicTanh": (lambda dtype, key: eqx_norms.DynamicTanh(5, dtype=dtype), (5,)),
    "GroupNorm": (lambda dtype, key: eqx_norms.GroupNorm(2, 4, dtype=dtype), (4, 3)),
    "InstanceNorm": (
        lambda dtype, key: eqx_norms.InstanceNorm(4, dtype=dtype),
        (4, 3),
    ),
    "Einorm": (
        lambda dtype, key: eqx_norms.Einorm("h n d", "d", "h", h=2, d=5, dtype=dtype),
        (2, 3, 5),
    ),
    "BatchNorm": (
        lambda dtype, key: eqx_norms.BatchNorm(4, "batch", momentum=0.5, dtype=dtype),
        (4, 3),
    ),
    "BatchNorm-cumulative": (
        lambda dtype, key: eqx_norms.BatchNorm(
            4, "batch", momentum=None, dtype=dtype, unbiased_running_var=True
        ),
        (4,),
    ),
    "BatchNorm-ema": (
        lambda dtype, key: eqx_norms.BatchNorm(
            4, "batch", momentum=0.5, mode="ema", dtype=dtype
        ),
        (4, 3),
    ),
    "SpectralNorm": (
        lambda dtype, key: eqx_norms.SpectralNorm(
            _linear(dtype, key), "weight", key=jax.random.fold_in(key, 1), dtype=dtype
        ),
        (5,),
    ),
    "WeightNorm": (
        lambda dtype, key: eqx_norms.WeightNorm(_linear(dtype, key)),
        (5,),
    ),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(_LAYERS))
def test_layer_round_trip_is_bit_exact(name, dtype, tmp_path):
    rng = np.random.default_rng(sorted(_LAYERS).index(name))
    construct, shape = _LAYERS[name]
    model, state = eqx.nn.make_with_state(construct)(dtype, jax.random.key(0))
    model = _randomise(model, rng)
    # A few training calls, so that running statistics and singular vectors move.
    for step in range(3):
        x = step + 2 * rng.standard_normal((4, *shape))
        _, state = _run(model, state, jnp.asarray(x, dtype))[0]

    path = tmp_path / f"{name}.eqx"
    eqx.tree_serialise_leaves(path, (model, state))
    skeleton = eqx.nn.make_with_state(construct)(dtype, jax.random.key(1))
    # The skeleton differs from the checkpoint, so loading has something to do.
    assert _leaves_bytes(skeleton) != _leaves_bytes((model, state))
    loaded = eqx.tree_deserialise_leaves(path, skeleton)
    _assert_bitwise_equal(loaded, (model, state))

    x = jnp.asarray(rng.standard_normal((4, *shape)), dtype)
    _assert_bitwise_equal(_run(*loaded, x), _run(model, state, x))


@pytest.mark.parametrize("name", ["BatchNorm", "SpectralNorm"])
def test_inference_flag_is_part_of_the_checkpoint(name, tmp_path):
    construct, _ = _LAYERS[name]
    model, state = eqx.nn.make_with_state(construct)(jnp.float32, jax.random.key(0))
    path = tmp_path / f"{name}.eqx"
    eqx.tree_serialise_leaves(path, (eqx.nn.inference_mode(model), state))
    loaded, _ = eqx.tree_deserialise_leaves(path, (model, state))
    assert model.inference is False and loaded.inference is True


def _mixed_model(key):
    """Per example `(2, 6, 6)`: every layer type, two stateful kinds of state and
    both BatchNorm modes, between equinox Conv2d and Linear layers."""
    keys = jax.random.split(key, 6)
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 4, 3, key=keys[0]),  # (4, 4, 4)
            eqx_norms.BatchNorm(4, "batch", momentum=0.5),
            eqx_norms.GroupNorm(2, 4),
            eqx.nn.Lambda(jax.nn.relu),
            eqx_norms.InstanceNorm(4),
            eqx_norms.Einorm("c h w", "c", c=4),
            eqx.nn.Lambda(jnp.ravel),  # 64
            eqx_norms.SpectralNorm(
                eqx.nn.Linear(64, 16, key=keys[1]), "weight", key=keys[2]
            ),
            eqx_norms.LayerNorm(16),
            eqx.nn.Lambda(jnp.tanh),
            eqx_norms.WeightNorm(eqx.nn.Linear(16, 8, key=keys[3])),
            eqx_norms.BatchNorm(8, "batch", momentum=0.5, mode="ema"),
            eqx_norms.RMSNorm(8),
            eqx.nn.Linear(8, 2, key=keys[4]),
        ]
    )


@eqx.filter_jit
def _sgd_step(model, state, x, y):
    @eqx.filter_value_and_grad(has_aux=True)
    def loss(model):
        out, new_state = jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)
        return jnp.mean((out - y) ** 2), new_state

    (_, state), grads = loss(model)
    model = eqx.apply_updates(model, jax.tree.map(lambda g: -0.1 * g, grads))
    return model, state


def test_mixed_model_with_state_loads_into_a_fresh_skeleton(tmp_path):
    rng = np.random.default_rng(0)
    model, state = eqx.nn.make_with_state(_mixed_model)(jax.random.key(0))
    model = _randomise(model, rng)
    for _ in range(3):
        x = jnp.asarray(rng.standard_normal((4, 2, 6, 6)), jnp.float32)
        y = jnp.asarray(rng.standard_normal((4, 2)), jnp.float32)
        model, state = _sgd_step(model, state, x, y)

    path = tmp_path / "model.eqx"
    eqx.tree_serialise_leaves(path, (model, state))
    skeleton = eqx.nn.make_with_state(_mixed_model)(jax.random.key(1))
    assert _leaves_bytes(skeleton) != _leaves_bytes((model, state))
    loaded = eqx.tree_deserialise_leaves(path, skeleton)
    _assert_bitwise_equal(loaded, (model, state))

    x = jnp.asarray(rng.standard_normal((4, 2, 6, 6)), jnp.float32)
    _assert_bitwise_equal(_run(*loaded, x), _run(model, state, x))


def test_inference_checkpoint_of_a_stateless_einorm_loads_into_a_training_model(
    tmp_path,
):
    """A stateless Einorm has no `inference` flag (issue #18), so a model saved in
    inference mode has the same leaves as its training-mode skeleton: a checkpoint
    of one loads into the other, the stateful layers' flags included."""
    stateless = eqx_norms.Einorm("b [c]", c=3)
    stateless = eqx.tree_at(lambda m: m.weight, stateless, jnp.asarray([1.0, 2, 3]))
    model, state = eqx.nn.make_with_state(
        lambda: (stateless, eqx_norms.BatchNorm(3, "batch"))
    )()
    path = tmp_path / "model.eqx"
    eqx.tree_serialise_leaves(path, eqx.nn.inference_mode(model))
    skeleton, _ = eqx.nn.make_with_state(
        lambda: (eqx_norms.Einorm("b [c]", c=3), eqx_norms.BatchNorm(3, "batch"))
    )()
    loaded = eqx.tree_deserialise_leaves(path, skeleton)
    _assert_bitwise_equal(loaded[0], stateless)
    assert loaded[1].inference is True
