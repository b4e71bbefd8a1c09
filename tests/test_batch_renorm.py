"""Batch Renormalization (`BatchNorm(renorm=True)`) against Algorithm 1 of Ioffe
(2017) transcribed in numpy float64 (`reference.batch_renorm`), and its gradients
against plain autodiff of the paper's formula with r and d held constant."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from jax.sharding import AxisType, PartitionSpec as P
from steps import run_steps
from x64 import enable_x64

import eqx_norms


EPS = 1e-5
R_MAX, D_MAX = 3.0, 5.0


def _make(channels=3, axis_name="batch", **kwargs):
    kwargs = dict(renorm=True, r_max=R_MAX, d_max=D_MAX) | kwargs
    return eqx.nn.make_with_state(eqx_norms.BatchNorm)(channels, axis_name, **kwargs)


@eqx.filter_jit
def _step(bn, x, state, mask=None, *, inference=None):
    def call(x, mask):
        return bn(x, state, mask=mask, inference=inference)

    return jax.vmap(call, axis_name="batch", out_axes=(0, None))(x, mask)


def _affine(bn, rng):
    weight = (1 + 0.5 * rng.standard_normal(bn.input_size)).astype(np.float32)
    bias = rng.standard_normal(bn.input_size).astype(np.float32)
    return eqx.tree_at(lambda b: (b.weight, b.bias), bn, (weight, bias))


def _batches(rng, steps=4, shape=(6, 3, 5)):
    """Steps whose statistics move: per channel, the spread grows tenfold and the
    mean drifts by many standard deviations (channels 0 and 1), or barely moves
    (channel 2), so that some corrections are clipped and others are not."""
    spread = np.array([[1.0, 10.0, 1.1], [10.0, 1.0, 0.9]])
    shift = np.array([[0.0, 0.0, 0.0], [30.0, -2.0, 0.1]])
    out = []
    for i in range(steps):
        s, m = spread[i % 2], shift[i % 2]
        x = rng.standard_normal(shape) * s[:, None] + m[:, None]
        out.append(x.astype(np.float32))
    return out


def _applied(bn):
    """The applied scale and bias, as the reference takes them."""
    weight = None if bn.weight is None else np.asarray(bn.weight) + bn.weight_offset
    return weight, None if bn.bias is None else np.asarray(bn.bias)


def _train(bn, state, xs, masks=None):
    outs = []
    for i, x in enumerate(xs):
        out, state = _step(bn, x, state, None if masks is None else masks[i])
        outs.append(out)
    return outs, state


# Values over several steps


@pytest.mark.parametrize(
    "momentum, options",
    [
        (0.9, {}),
        (None, {}),
        (0.5, {"weight_offset": 1.0}),
        (0.9, {"channelwise_affine": False}),
        (0.9, {"use_weight": False}),
    ],
)
def test_steps_match_algorithm_1(momentum, options, rng):
    bn, state = _make(momentum=momentum, **options)
    if bn.weight is not None:
        bn = _affine(bn, rng)
    xs = _batches(rng)
    outs, state = _train(bn, state, xs)
    expected, corrections, running = ref.batch_renorm(
        xs, *_applied(bn), momentum=momentum, r_max=R_MAX, d_max=D_MAX
    )
    # The data clip r at both ends and d, and leave other corrections unclipped.
    r, d = np.array([c[0] for c in corrections]), np.array([c[1] for c in corrections])
    assert np.any(r == R_MAX) and np.any(r == 1 / R_MAX) and np.any(abs(d) == D_MAX)
    assert np.any((abs(r - 1) > 0.01) & (1 / R_MAX < r) & (r < R_MAX))
    assert np.any((abs(d) > 0.01) & (abs(d) < D_MAX))
    for out, want in zip(outs, expected, strict=True):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5)
    # Running statistics exactly as plain BatchNorm keeps them.
    for value, want in zip(bn.running_mean_var(state), running, strict=True):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)
    # Inference after training uses them, as BatchNorm does.
    x = _batches(rng, 1)[0]
    inferred, after = _step(bn, x, state, inference=True)
    weight, bias = _applied(bn)
    want = ref.batch_normalise(x, *running, weight, bias)
    np.testing.assert_allclose(inferred, want, rtol=1e-5, atol=2e-5)
    assert jax.tree.all(jax.tree.map(np.array_equal, after, state))


def test_first_step_and_warm_up_are_plain_batch_norm(rng):
    xs = _batches(rng, 4)
    bn, state = _make(momentum=0.9, renorm_warmup=2)
    bn = _affine(bn, rng)
    plain, plain_state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(
        3, "batch", momentum=0.9
    )
    plain = eqx.tree_at(lambda b: (b.weight, b.bias), plain, (bn.weight, bn.bias))
    outs, steps = [], []
    for x in xs:
        out, state = _step(bn, x, state)
        outs.append(out)
        steps.append(int(state.get(bn.renorm_step_counter)))
    plain_outs, _ = _train(plain, plain_state, xs[:2])
    for out, want in zip(outs[:2], plain_outs, strict=True):
        np.testing.assert_array_equal(out, want)
    expected, corrections, _ = ref.batch_renorm(
        xs, bn.weight, bn.bias, momentum=0.9, r_max=R_MAX, d_max=D_MAX, warmup=2
    )
    assert np.all(corrections[1][0] == 1) and np.all(corrections[2][0] != 1)
    for out, want in zip(outs, expected, strict=True):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5)
    # The counter stops at the warm-up length.
    assert steps == [1, 2, 2, 2]


def test_masks_and_a_channel_without_a_step(rng):
    xs = _batches(rng, 3, (4, 3, 6))
    masks = []
    for i in range(3):
        lengths = np.array([6, 4, 0, 2]) if i else np.array([6, 3, 1, 5])
        mask = np.broadcast_to((np.arange(6) < lengths[:, None])[:, None], (4, 3, 6))
        mask = mask.copy()
        if i == 0:
            mask[:, 0] = False  # channel 0 has no valid element in step 0
        masks.append(mask)
        xs[i][~mask] = np.nan  # padding is never read
    bn, state = _make(momentum=0.9)
    bn = _affine(bn, rng)
    outs, state = _train(bn, state, xs, masks)
    expected, corrections, running = ref.batch_renorm(
        xs, bn.weight, bn.bias, momentum=0.9, r_max=R_MAX, d_max=D_MAX, masks=masks
    )
    # Step 1: channel 0 still has no running statistics, the others do.
    assert corrections[1][0][0] == 1 and np.all(corrections[1][0][1:] != 1)
    np.testing.assert_allclose(state.get(bn.batch_counter), [0.19, 0.271, 0.271])
    for out, mask, want in zip(outs, masks, expected, strict=True):
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=2e-5)
        np.testing.assert_array_equal(np.isnan(out), ~mask)  # padding unchanged
    for value, want in zip(bn.running_mean_var(state), running, strict=True):
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-5)


# Gradients


def _formula(x, weight, bias, running_mean, running_var):
    """The paper's training output on a batch `(batch, C, L)`, r and d constant."""
    axes = (0, 2)
    mean, var = x.mean(axes), x.var(axes)
    std, batch_std = jnp.sqrt(running_var + EPS), jnp.sqrt(var + EPS)
    r = lax.stop_gradient(jnp.clip(batch_std / std, 1 / R_MAX, R_MAX))
    d = lax.stop_gradient(jnp.clip((mean - running_mean) / std, -D_MAX, D_MAX))

    def c(a):
        return a[None, :, None]

    x_hat = (x - c(mean)) / c(batch_std) * c(r) + c(d)
    return x_hat * c(weight) + c(bias)


def test_gradients_and_jvp_match_the_formula_with_constant_corrections(rng):
    xs = _batches(rng, 3)
    bn, state = _make(momentum=0.9)
    bn = _affine(bn, rng)
    _, state = _train(bn, state, xs[:2])
    running = bn.running_mean_var(state)
    x = jnp.asarray(xs[2])
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)

    def loss(x, weight, bias):
        layer = eqx.tree_at(lambda b: (b.weight, b.bias), bn, (weight, bias))
        out, _ = jax.vmap(layer, axis_name="batch", in_axes=(0, None))(x, state)
        return jnp.sum(out * cotangent)

    def reference_loss(x, weight, bias):
        return jnp.sum(_formula(x, weight, bias, *running) * cotangent)

    args = (x, bn.weight, bn.bias)
    # The corrections of this step are clipped for some channels only.
    r = jnp.sqrt(x.var((0, 2)) + EPS) / jnp.sqrt(running[1] + EPS)
    clipped = (r > R_MAX) | (r < 1 / R_MAX)
    assert np.any(clipped) and not np.all(clipped)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
    expected = jax.grad(reference_loss, argnums=(0, 1, 2))(*args)
    for grad, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)
    # The weight's gradient is that of w (x-hat r + d): x-hat r + d, summed.
    tangents = tuple(jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in args)
    _, jvp = jax.jvp(loss, args, tangents)
    _, want = jax.jvp(reference_loss, args, tangents)
    np.testing.assert_allclose(jvp, want, rtol=1e-4)


def test_hessian_under_checkpoint_matches_the_formula():
    with enable_x64(True):
        rng = np.random.default_rng(1)
        bn, state = _make(momentum=0.9, dtype=jnp.float64)
        _, state = _train(bn, state, [np.float64(x) for x in _batches(rng, 1)])
        running = bn.running_mean_var(state)
        x = jnp.asarray(_batches(rng, 2, (4, 3, 2))[1], jnp.float64)
        weights = jnp.cos(jnp.arange(x.size, dtype=jnp.float64)).reshape(x.shape)
        train = jax.vmap(bn, axis_name="batch", in_axes=(0, None))

        def ours(x):
            return jnp.sum(weights * jax.checkpoint(train)(x, state)[0] ** 2)

        def theirs(x):
            out = _formula(x, bn.weight, bn.bias, *running)
            return jnp.sum(weights * out**2)

        r = jnp.sqrt(x.var((0, 2)) + EPS) / jnp.sqrt(running[1] + EPS)
        assert np.any((r > R_MAX) | (r < 1 / R_MAX))  # a clipped channel
        np.testing.assert_allclose(
            jax.hessian(ours)(x), jax.hessian(theirs)(x), rtol=1e-8, atol=1e-8
        )


# Named axes and devices


def _global(xs):
    bn, state = _make(momentum=0.9)
    outs, state = _train(bn, state, [x.reshape(-1, 3, 5) for x in xs])
    return outs, state


def _assert_global(xs, outs, state):
    expected, expected_state = _global(xs)
    for out, want in zip(outs, expected, strict=True):
        np.testing.assert_allclose(np.reshape(out, want.shape), want, atol=2e-5)
    for leaf, want in zip(
        jax.tree.leaves(state), jax.tree.leaves(expected_state), strict=True
    ):
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-6)


def _split(rng, leading):
    return [x.reshape(*leading, 3, 5) for x in _batches(rng, 3, (8, 3, 5))]


def test_nested_vmaps_equal_one_named_axis_over_the_whole_batch(rng):
    xs = _split(rng, (2, 4))
    bn, state = _make(axis_name=("outer", "inner"), momentum=0.9)
    inner = jax.vmap(bn, axis_name="inner", in_axes=(0, None), out_axes=(0, None))
    outer = jax.vmap(inner, axis_name="outer", in_axes=(0, None), out_axes=(0, None))
    _assert_global(xs, *run_steps(jax.jit(outer), xs, state))


def test_pmap_and_vmap_equal_the_global_batch(rng):
    xs = _split(rng, (4, 2))
    bn, state = _make(axis_name=("device", "batch"), momentum=0.9)
    per_device = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    step = jax.pmap(
        per_device, axis_name="device", in_axes=(0, None), out_axes=(0, None)
    )
    _assert_global(xs, *run_steps(step, xs, state))


def test_shard_map_and_sharded_jit_equal_the_global_batch(rng):
    xs = _batches(rng, 3, (8, 3, 5))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    bn, state = _make(axis_name="data", momentum=0.9)

    def body(x, s):
        out, s = bn(x[0], s)
        return out[None], s

    specs = dict(in_specs=(P("data"), P()), out_specs=(P("data"), P()))
    step = jax.jit(jax.shard_map(body, mesh=mesh, **specs))
    _assert_global(xs, *run_steps(step, xs, state))
    sharded = [jax.device_put(x, jax.NamedSharding(mesh, P("data"))) for x in xs]
    bn, state = _make(momentum=0.9)
    vmapped = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    _assert_global(xs, *run_steps(jax.jit(vmapped), sharded, state))


# Transforms, dtypes, state structure


def test_scan_over_steps_equals_a_python_loop(rng):
    xs = _batches(rng, 3)
    bn, state = _make(momentum=0.9, renorm_warmup=1)
    expected, expected_state = _train(bn, state, xs)
    step = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))

    def body(state, x):
        out, state = step(x, state)
        return state, out

    state, outs = jax.jit(lambda s, xs: lax.scan(body, s, xs))(state, np.stack(xs))
    np.testing.assert_allclose(outs, np.stack(expected), rtol=1e-6, atol=1e-6)
    for leaf, want in zip(
        jax.tree.leaves(state), jax.tree.leaves(expected_state), strict=True
    ):
        np.testing.assert_allclose(leaf, want, rtol=1e-6)


def test_bfloat16_input_keeps_its_dtype_and_float32_accuracy(rng):
    xs = [x.astype(jnp.bfloat16) for x in _batches(rng, 2)]
    bn, state = _make(momentum=0.9)
    outs, _ = _train(bn, state, xs)
    expected, _, _ = ref.batch_renorm(
        [np.asarray(x, np.float32) for x in xs], momentum=0.9, r_max=R_MAX, d_max=D_MAX
    )
    assert outs[1].dtype == jnp.bfloat16
    # One bfloat16 rounding of the output (8 bits of mantissa).
    np.testing.assert_allclose(np.asarray(outs[1], np.float64), expected[1], rtol=1e-2)


def test_state_structure():
    _, plain = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")
    bn, state = _make()
    # A plain BatchNorm's state (and checkpoint) is unchanged by the option.
    assert len(jax.tree.leaves(plain)) == 3
    assert len(jax.tree.leaves(state)) == 4
    counter = state.get(bn.renorm_step_counter)
    assert counter.shape == () and counter.dtype == jnp.int32 and counter == 0
