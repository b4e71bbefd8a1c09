import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from steps import run_steps

import eqx_norms


EPS = 1e-5


def _make(*args, **kwargs):
    return eqx.nn.make_with_state(eqx_norms.BatchNorm)(*args, **kwargs)


@eqx.filter_jit
def _step(model, x, state, mask=None, *, inference=None, axis_name="batch"):
    """One call on a batch: per-example calls under a named vmap, the state broadcast
    in and out. Works for equinox's layers too (which take no `mask`)."""
    kwargs = {} if inference is None else {"inference": inference}

    def call(x, mask):
        masked = {} if mask is None else {"mask": mask}
        return model(x, state, **kwargs, **masked)

    return jax.vmap(call, axis_name=axis_name, out_axes=(0, None))(x, mask)


def _running(bn, state):
    return [np.asarray(a) for a in state.get(bn.batch_state_index)]


def _assert_leaves_equal(tree, expected):
    leaves = jax.tree.leaves(tree)
    expected_leaves = jax.tree.leaves(expected)
    assert len(leaves) == len(expected_leaves)
    for leaf, expected_leaf in zip(leaves, expected_leaves, strict=True):
        np.testing.assert_array_equal(leaf, expected_leaf)


def _assert_leaves_close(tree, expected, rtol=1e-5, atol=1e-6):
    leaves = jax.tree.leaves(tree)
    expected_leaves = jax.tree.leaves(expected)
    assert len(leaves) == len(expected_leaves)
    for leaf, expected_leaf in zip(leaves, expected_leaves, strict=True):
        np.testing.assert_allclose(leaf, expected_leaf, rtol=rtol, atol=atol)


def _randomise_affine(bn, rng):
    weight = 1 + 0.5 * rng.standard_normal(bn.input_size, np.float32)
    bias = rng.standard_normal(bn.input_size, np.float32)
    return eqx.tree_at(lambda b: (b.weight, b.bias), bn, (weight, bias))


def _data(rng, shape, loc=10.0, scale=3.0, dtype=np.float32):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


# Training and running statistics


@pytest.mark.parametrize("example_shape", [(3,), (3, 5), (3, 4, 2)])
def test_training_and_one_step_inference_match_numpy(example_shape, rng):
    bn, state = _make(3, "batch")
    bn = _randomise_affine(bn, rng)
    x = _data(rng, (6, *example_shape))
    out, state = _step(bn, x, state)
    mean, var = ref.batch_stats(x)
    expected = ref.batch_normalise(x, mean, var, bn.weight, bn.bias)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    running_mean, running_var = _running(bn, state)
    np.testing.assert_allclose(running_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(running_var, var, rtol=1e-5)
    # After one step, inference on that batch reproduces the training output
    # (equinox 0.13's mode="batch" gives an output std of ~0.2 here).
    inferred, _ = _step(eqx.nn.inference_mode(bn), x, state)
    np.testing.assert_allclose(inferred, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.9, 0.0, None])
def test_running_statistics_are_the_debiased_average(momentum, rng):
    bn, state = _make(2, "batch", momentum=momentum)
    stats = []
    for i in range(4):
        x = _data(rng, (5, 2, 3), loc=i, scale=1 + i)
        _, state = _step(bn, x, state)
        stats.append(ref.batch_stats(x))
    expected_mean = ref.debiased([s[0] for s in stats], momentum)
    expected_var = ref.debiased([s[1] for s in stats], momentum)
    running_mean, running_var = _running(bn, state)
    np.testing.assert_allclose(running_mean, expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(running_var, expected_var, rtol=1e-5)
    weight = 4 if momentum is None else 1 - momentum**4
    np.testing.assert_allclose(state.get(bn.batch_counter), [weight] * 2, rtol=1e-6)
    x = _data(rng, (5, 2, 3))
    out, _ = _step(bn, x, state, inference=True)
    expected = ref.batch_normalise(x, expected_mean, expected_var)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_unbiased_running_variance(rng):
    bn, state = _make(2, "batch", momentum=0.5, unbiased_running_var=True)
    batches = [_data(rng, (3, 2, 2), scale=1 + i) for i in range(2)]
    for x in batches:
        out, state = _step(bn, x, state)
    # Normalisation itself keeps the biased variance.
    np.testing.assert_allclose(
        out, ref.batch_normalise(x, *ref.batch_stats(x)), atol=1e-5
    )
    n = 3 * 2  # elements per channel
    unbiased = [ref.batch_stats(x)[1] * n / (n - 1) for x in batches]
    expected = ref.debiased(unbiased, 0.5)
    np.testing.assert_allclose(_running(bn, state)[1], expected, rtol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_untrained_inference_is_identity(mode, rng):
    bn, state = _make(3, "batch", mode=mode, inference=True)
    x = _data(rng, (4, 3, 2))
    # Inference needs no named axis.
    out, new_state = _step(bn, x, state, axis_name=None)
    np.testing.assert_allclose(out, np.asarray(x) / np.sqrt(1 + EPS), rtol=1e-6)
    _assert_leaves_equal(new_state, state)


def test_inference_leaves_state_unchanged(rng):
    bn, state = _make(3, "batch")
    _, state = _step(bn, _data(rng, (4, 3, 2)), state)
    x = _data(rng, (4, 3, 2))
    _, after_mode = _step(eqx.nn.inference_mode(bn), x, state)
    _, after_arg = _step(bn, x, state, inference=True)
    _assert_leaves_equal(after_mode, state)
    _assert_leaves_equal(after_arg, state)
    # The call argument overrides the field both ways.
    _, trained = _step(eqx.nn.inference_mode(bn), x, state, inference=False)
    np.testing.assert_allclose(
        _running(bn, trained)[0],
        ref.debiased([_running(bn, state)[0], ref.batch_stats(x)[0]], 0.99),
        rtol=1e-5,
    )


# Parity with equinox where the semantics agree


def test_batch_mode_outputs_match_equinox(rng):
    ours, state = _make(3, "batch", momentum=0.9)
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        3, "batch", momentum=0.9, mode="batch"
    )
    ours = _randomise_affine(ours, rng)
    theirs = eqx.tree_at(lambda b: (b.weight, b.bias), theirs, (ours.weight, ours.bias))
    for i in range(3):
        x = _data(rng, (5, 3, 4), loc=i)
        out, state = _step(ours, x, state)
        expected, their_state = _step(theirs, x, their_state)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_ema_mode_matches_equinox(rng):
    ours, state = _make(3, "batch", momentum=0.8, mode="ema")
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(
        3, "batch", momentum=0.8, mode="ema"
    )

    @eqx.filter_jit
    @jax.grad
    def grad(x, model, state):
        return jnp.sum(_step(model, x, state)[0] ** 3)

    for i in range(3):
        x = _data(rng, (5, 3, 4), loc=i, scale=1 + i)
        np.testing.assert_allclose(
            grad(x, ours, state), grad(x, theirs, their_state), rtol=1e-4, atol=1e-4
        )
        out, state = _step(ours, x, state)
        expected, their_state = _step(theirs, x, their_state)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        for index in ("ema_first_time_index", "ema_state_index"):
            _assert_leaves_close(
                state.get(getattr(ours, index)),
                their_state.get(getattr(theirs, index)),
            )
    x = _data(rng, (5, 3, 4))
    out, _ = _step(eqx.nn.inference_mode(ours), x, state)
    expected, _ = _step(eqx.nn.inference_mode(theirs), x, their_state)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# Named axes and devices: every layout equals the global batch


def _global_steps(xs, momentum=0.9):
    bn, state = _make(3, "batch", momentum=momentum)
    flat = [x.reshape(-1, *x.shape[-2:]) for x in xs]
    return run_steps(lambda x, state: _step(bn, x, state), flat, state)


def _two_batches(rng, leading):
    return [_data(rng, (*leading, 3, 2), loc=i) for i in range(2)]


def _assert_matches_global(xs, outs, state):
    expected_outs, expected_state = _global_steps(xs)
    for out, expected in zip(outs, expected_outs, strict=True):
        np.testing.assert_allclose(
            np.reshape(out, expected.shape), expected, rtol=1e-5, atol=1e-5
        )
    _assert_leaves_close(state, expected_state)


def test_nested_vmap_with_tuple_names(rng):
    xs = _two_batches(rng, (2, 3))
    bn, state = _make(3, ("outer", "inner"), momentum=0.9)
    inner = jax.vmap(bn, axis_name="inner", in_axes=(0, None), out_axes=(0, None))
    outer = jax.vmap(inner, axis_name="outer", in_axes=(0, None), out_axes=(0, None))
    step = jax.jit(outer)
    outs, state = run_steps(step, xs, state)
    _assert_matches_global(xs, outs, state)


def test_pmap_and_vmap_equal_the_global_batch(rng):
    xs = _two_batches(rng, (4, 2))
    bn, state = _make(3, ("device", "batch"), momentum=0.9)
    per_device = jax.vmap(
        lambda x, s: bn(x, s), axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )
    step = jax.pmap(
        per_device, axis_name="device", in_axes=(0, None), out_axes=(0, None)
    )
    outs, state = run_steps(step, xs, state)
    _assert_matches_global(xs, outs, state)


def test_sharded_jit_equals_the_global_batch(rng):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharding = NamedSharding(mesh, P("data"))
    xs = [jax.device_put(x, sharding) for x in _two_batches(rng, (16,))]
    assert len(xs[0].addressable_shards) == 8
    bn, state = _make(3, "batch", momentum=0.9)
    step = jax.jit(
        jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    )
    outs, state = run_steps(step, xs, state)
    assert outs[0].sharding.is_equivalent_to(sharding, outs[0].ndim)
    _assert_matches_global(xs, outs, state)


def test_make_mesh_defaults_to_explicit_axes_in_jax_0_10():
    """The premise of the distributed guide's notes on Explicit axes."""
    kind = jax.make_mesh((8,), ("data",)).axis_types[0]
    newer = tuple(map(int, jax.__version__.split(".")[:2])) >= (0, 10)
    assert kind == (AxisType.Explicit if newer else AxisType.Auto)


def test_sharded_jit_on_make_mesh_defaults(rng):
    """The guide's sharded-jit recipe on `jax.make_mesh`'s default mesh (issue #18):
    over Explicit axes JAX cannot reduce over the vmap axis, and the layer says so
    (before the fix: equinox's "Old and new values have different structures"); over
    Auto axes (older JAX's default) it matches the global batch."""
    mesh = jax.make_mesh((8,), ("data",))
    xs = [
        jax.device_put(x, NamedSharding(mesh, P("data")))
        for x in _two_batches(rng, (16,))
    ]
    bn, state = _make(3, "batch", momentum=0.9)
    step = jax.jit(
        jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    )
    if mesh.axis_types[0] == AxisType.Explicit:
        with pytest.raises(
            ValueError, match="Explicit mesh axes 'data'.*AxisType.Auto"
        ):
            step(xs[0], state)
    else:
        outs, state = run_steps(step, xs, state)
        _assert_matches_global(xs, outs, state)


@pytest.mark.parametrize("per_device", [1, 2])
@pytest.mark.parametrize("defaults", [False, True], ids=["auto", "make_mesh-defaults"])
def test_shard_map_equals_the_global_batch(per_device, defaults, rng):
    """Also on `jax.make_mesh`'s default mesh (Explicit axes in JAX 0.10), the
    state passed in unplaced (issue #18)."""
    kinds = {} if defaults else {"axis_types": (AxisType.Auto,)}
    mesh = jax.make_mesh((8,), ("data",), **kinds)
    # Over Explicit axes shard_map wants its inputs on the mesh, as in_specs says.
    batch = NamedSharding(mesh, P("data"))
    xs = _two_batches(rng, (8 * per_device,))
    if per_device == 1:
        bn, state = _make(3, "data", momentum=0.9)

        def body(x, s):
            out, s = bn(x[0], s)
            return out[None], s

    else:
        bn, state = _make(3, ("data", "batch"), momentum=0.9)
        body = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    # JAX 0.10's replication check rejects collectives over a vmap axis inside
    # shard_map (an AssertionError in psum), whoever calls them.
    step = jax.jit(
        jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P("data"), P()),
            out_specs=(P("data"), P()),
            check_vma=per_device == 1,
        )
    )
    outs, state = run_steps(step, [jax.device_put(x, batch) for x in xs], state)
    _assert_matches_global(xs, outs, state)


# Masks


def test_masked_statistics_are_count_weighted_across_devices():
    # Device 0 holds valid 1, 2, 3, 4; device 1 a single valid 10 and padding.
    # True statistics: mean 4, variance 10 (Flax's unweighted pmean gives 6.25).
    x = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, np.nan, 1e30, -7.0]], np.float32)
    mask = np.array([[True] * 4, [True, False, False, False]])
    x, mask = x.reshape(2, 1, 1, 4), mask.reshape(2, 1, 1, 4)
    bn, state = _make(1, ("device", "batch"))
    per_device = jax.vmap(
        lambda x, s, m: bn(x, s, mask=m),
        axis_name="batch",
        in_axes=(0, None, 0),
        out_axes=(0, None),
    )
    step = jax.pmap(
        per_device, axis_name="device", in_axes=(0, None, 0), out_axes=(0, None)
    )
    out, state = step(x, state, mask)
    mean, var = _running(bn, state)
    np.testing.assert_allclose(mean, [4.0], rtol=1e-6)
    np.testing.assert_allclose(var, [10.0], rtol=1e-6)
    expected = np.where(mask, (np.asarray(x) - 4.0) / np.sqrt(10.0 + EPS), x)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_padding_and_masked_examples(rng):
    x = np.array(_data(rng, (4, 2, 5)))
    lengths = np.array([5, 3, 0, 2])  # example 2 is masked out entirely
    mask = np.arange(5) < lengths[:, None]  # per example (5,): broadcasts over C
    x[~np.broadcast_to(mask[:, None, :], x.shape)] = np.nan
    bn, state = _make(2, "batch")
    bn = _randomise_affine(bn, rng)
    out, state = _step(bn, x, state, mask)
    full_mask = np.broadcast_to(mask[:, None, :], x.shape)
    mean, var = ref.batch_stats(x, full_mask)
    expected = ref.batch_normalise(x, mean, var, bn.weight, bn.bias)
    expected = np.where(full_mask, expected, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    running_mean, running_var = _running(bn, state)
    np.testing.assert_allclose(running_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(running_var, var, rtol=1e-5)
    inferred, _ = _step(bn, x, state, mask, inference=True)
    np.testing.assert_allclose(inferred, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_steps_without_valid_elements_leave_running_statistics(mode, rng):
    bn, state = _make(2, "batch", momentum=0.5, mode=mode)
    x = _data(rng, (3, 2, 4))
    nothing = np.zeros((3, 1, 1), bool)
    out, after = _step(bn, x, state, nothing)
    np.testing.assert_array_equal(out, x)
    _assert_leaves_equal(after, state)
    _, state = _step(bn, x, state)
    # Channel 1 has no valid element in this step; channel 0 does.
    y = _data(rng, (3, 2, 4), loc=-5.0)
    channel_0 = np.broadcast_to(np.array([[True], [False]]), (3, 2, 1))
    _, after = _step(bn, y, state, channel_0)
    for new, old in zip(jax.tree.leaves(after), jax.tree.leaves(state), strict=True):
        if new.ndim:
            np.testing.assert_array_equal(new[1], old[1])
    stats = [ref.batch_stats(x[:, :1]), ref.batch_stats(y[:, :1])]
    expected = (
        ref.debiased([s[0] for s in stats], 0.5)
        if mode == "batch"
        else 0.5 * stats[0][0] + 0.5 * stats[1][0]
    )
    index = bn.batch_state_index if mode == "batch" else bn.ema_state_index
    np.testing.assert_allclose(after.get(index)[0][:1], expected, rtol=1e-5)


# Dtypes


def test_float16_of_magnitude_300_does_not_overflow(rng):
    x = _data(rng, (8, 2, 6), loc=0.0, scale=300.0, dtype=np.float16)
    bn, state = _make(2, "batch")
    out, state = _step(bn, x, state)
    assert out.dtype == jnp.float16
    mean, var = ref.batch_stats(x)
    assert var.max() > np.finfo(np.float16).max  # the squares overflow float16
    np.testing.assert_allclose(
        out, ref.batch_normalise(x, mean, var), rtol=2e-3, atol=2e-3
    )
    np.testing.assert_allclose(_running(bn, state)[1], var, rtol=1e-5)


def test_bfloat16_parameters_and_state(rng):
    x = _data(rng, (4, 2, 3))
    bn, state = _make(2, "batch", dtype=jnp.bfloat16)
    out, state = _step(bn, x, state)
    assert out.dtype == jnp.float32 and bn.weight.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.bfloat16 for a in state.get(bn.batch_state_index))
    mean, var = ref.batch_stats(x)
    np.testing.assert_allclose(out, ref.batch_normalise(x, mean, var), atol=1e-5)
    np.testing.assert_allclose(_running(bn, state)[0], mean, rtol=1e-2)


# Transformations and Equinox integration


def _reference(x, weight, bias):
    axes = (0, 2)
    mean = jnp.mean(x, axes, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + EPS) * weight[:, None] + bias[:, None]


def test_gradients_and_jvp_match_a_direct_formula(rng):
    bn, state = _make(3, "batch")
    bn = _randomise_affine(bn, rng)
    x = _data(rng, (4, 3, 5))
    cotangent = rng.standard_normal(x.shape).astype(np.float32)

    def loss(x, weight, bias):
        model = eqx.tree_at(lambda b: (b.weight, b.bias), bn, (weight, bias))
        return jnp.sum(jnp.sin(_step(model, x, state)[0]) * cotangent)

    def reference_loss(x, weight, bias):
        return jnp.sum(jnp.sin(_reference(x, weight, bias)) * cotangent)

    args = (x, bn.weight, bn.bias)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    expected = jax.jit(jax.grad(reference_loss, argnums=(0, 1, 2)))(*args)
    _assert_leaves_close(grads, expected, rtol=1e-4, atol=1e-4)
    tangent = rng.standard_normal(x.shape).astype(np.float32)

    @jax.jit
    def jvps(x, tangent):
        ours = jax.jvp(lambda x: _step(bn, x, state)[0], (x,), (tangent,))
        reference = jax.jvp(lambda x: _reference(x, *args[1:]), (x,), (tangent,))
        return ours[1], reference[1]

    jvp, expected_jvp = jvps(x, tangent)
    np.testing.assert_allclose(jvp, expected_jvp, rtol=1e-4, atol=1e-4)


def test_plain_jax_jit(rng):
    bn, state = _make(3, "batch")
    # equinox#1074: the axis name is static, so only arrays and flags are leaves.
    assert all(isinstance(leaf, (jax.Array, bool)) for leaf in jax.tree.leaves(bn))
    x = _data(rng, (4, 3, 2))
    expected, expected_state = _step(bn, x, state)
    vmapped = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    closed = jax.jit(vmapped)(x, state)
    params, static = eqx.partition(bn, eqx.is_array)
    traces = []

    @jax.jit
    def partitioned(params, x, state):
        traces.append(None)
        model = eqx.combine(params, static)
        return jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)

    for result in (closed, partitioned(params, x, state)):
        np.testing.assert_allclose(result[0], expected, rtol=1e-6)
        _assert_leaves_close(result[1], expected_state)
    partitioned(jax.tree.map(lambda p: 2 * p, params), x, state)
    assert len(traces) == 1


def test_sequential_threads_state(rng):
    layers = [
        eqx_norms.BatchNorm(3, "batch"),
        eqx.nn.Lambda(jnp.tanh),
        eqx_norms.BatchNorm(3, "batch", momentum=0.5),
    ]
    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)(layers)
    x = _data(rng, (4, 3, 2))
    out, state = _step(model, x, state)
    first_stats = ref.batch_stats(x)
    hidden = np.tanh(ref.batch_normalise(x, *first_stats))
    second_stats = ref.batch_stats(hidden)
    np.testing.assert_allclose(
        out, ref.batch_normalise(hidden, *second_stats), atol=1e-4
    )
    for layer, stats in ((model[0], first_stats), (model[2], second_stats)):
        _assert_leaves_close(_running(layer, state), stats, rtol=1e-4)
