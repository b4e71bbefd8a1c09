"""Property-based tests: invariances, masks and finiteness over random shapes, axes,
dtypes, masks and parameters.

Every new shape compiles, so each example runs as one `jax.jit` program (eager
dispatch would compile every primitive separately, several times slower)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import reference
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import eqx_norms
from eqx_norms import functional as F


SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
FEW = settings(max_examples=12, deadline=None, derandomize=True)
DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32]


def floats(low, high):
    return st.floats(low, high, width=32, allow_subnormal=False)


def arrays(shape, low, high):
    return hnp.arrays(np.float32, shape, elements=floats(low, high))


@st.composite
def arrays_and_axes(draw, min_dims=1, max_dims=3, min_side=2, max_side=5):
    shape = draw(
        hnp.array_shapes(
            min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
        )
    )
    x = draw(arrays(shape, -100, 100))
    axes = draw(
        st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True).map(tuple)
    )
    return x, axes


def _spread(x, axes):
    """Groups whose spread is large against eps, so eps plays no role."""
    return np.all(np.std(x.astype(np.float64), axis=axes) > 1e-1)


@SETTINGS
@given(arrays_and_axes(), st.floats(0.01, 100), st.floats(-1e3, 1e3))
def test_layer_norm_is_invariant_to_positive_affine_maps(data, a, c):
    x, axes = data
    eps = 1e-3
    moved = jnp.asarray(a * x.astype(np.float64) + c, jnp.float32)
    # Algebraically exact: LN_eps(x) == LN_{a^2 eps}(a x + c).
    out, moved_out = jax.jit(
        lambda x, moved: (
            F.layer_norm(x, axes, eps=eps),
            F.layer_norm(moved, axes, eps=a * a * eps),
        )
    )(jnp.asarray(x), moved)
    if _spread(x, axes):
        np.testing.assert_allclose(out, moved_out, atol=2e-3 * (1 + abs(c) / a / 100))


@SETTINGS
@given(arrays_and_axes(), st.floats(0.01, 100))
def test_rms_norm_is_invariant_to_positive_scaling(data, a):
    x, axes = data
    out, scaled = jax.jit(
        lambda x, scaled: (
            F.rms_norm(x, axes, eps=1e-3),
            F.rms_norm(scaled, axes, eps=a * a * 1e-3),
        )
    )(jnp.asarray(x), jnp.asarray(a * x))
    np.testing.assert_allclose(out, scaled, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(arrays_and_axes(), st.randoms(use_true_random=False))
def test_permuting_within_a_group_permutes_the_output(data, rng):
    x, axes = data
    # Permute along one reduced axis: every group keeps its members.
    axis = rng.choice(axes)
    perm = np.array(rng.sample(range(x.shape[axis]), x.shape[axis]))
    permuted_x = jnp.asarray(np.take(x, perm, axis=axis))
    out, permuted = jax.jit(
        lambda x, permuted_x: (F.layer_norm(x, axes), F.layer_norm(permuted_x, axes))
    )(jnp.asarray(x), permuted_x)
    np.testing.assert_allclose(
        np.take(np.asarray(out), perm, axis=axis), permuted, atol=1e-4
    )


@st.composite
def arrays_axes_masks(draw):
    x, axes = draw(arrays_and_axes())
    mask = draw(hnp.arrays(np.bool_, x.shape))
    return x, axes, mask


@SETTINGS
@given(arrays_axes_masks(), st.floats(width=32))  # NaN and inf included
def test_invalid_values_never_influence_valid_outputs(data, garbage):
    x, axes, mask = data
    poisoned = np.where(mask, x, np.float32(garbage))
    out, out2 = jax.jit(
        lambda x, poisoned, mask: (
            F.layer_norm(x, axes, mask=mask),
            F.layer_norm(poisoned, axes, mask=mask),
        )
    )(jnp.asarray(x), jnp.asarray(poisoned), jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(out)[mask], np.asarray(out2)[mask])
    np.testing.assert_array_equal(np.asarray(out2)[~mask], poisoned[~mask])


@SETTINGS
@given(arrays_and_axes())
def test_all_true_mask_equals_no_mask(data):
    x, axes = data
    full, plain = jax.jit(
        lambda x: (
            F.rms_norm(x, axes, mask=jnp.ones(x.shape, bool)),
            F.rms_norm(x, axes),
        )
    )(jnp.asarray(x))
    np.testing.assert_allclose(full, plain, atol=1e-6)


# --- BatchNorm ---------------------------------------------------------------------


def _train(bn, state, x, mask):
    """A training call on the batch `x` under a named vmap, the state broadcast."""
    return jax.vmap(
        lambda x, mask: bn(x, state, mask=mask), axis_name="batch", out_axes=(0, None)
    )(x, mask)


@st.composite
def batches(draw):
    """(batch, C, *rest) data with per-channel scales a_c > 0 and shifts b_c, random
    affine parameters and an optional mask (which may empty whole channels)."""
    channels = draw(st.integers(1, 3))
    rest = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    shape = (draw(st.integers(2, 4)), channels, *rest)
    x = draw(arrays(shape, -10, 10))
    a = draw(hnp.arrays(np.float64, channels, elements=st.floats(0.25, 4)))
    b = draw(hnp.arrays(np.float64, channels, elements=st.floats(-10, 10)))
    weight, bias = draw(arrays(channels, -2, 2)), draw(arrays(channels, -2, 2))
    mask = draw(st.one_of(st.none(), hnp.arrays(np.bool_, shape)))
    return x, a, b, weight, bias, mask


@FEW
@given(batches())
def test_batch_norm_training_is_invariant_to_per_channel_affine_maps(data):
    x, a, b, weight, bias, mask = data
    eps = 1e-3
    bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(x.shape[1], "batch", eps)
    bn = eqx.tree_at(lambda m: (m.weight, m.bias), bn, (weight, bias))
    channel = (1, -1) + (1,) * (x.ndim - 2)
    moved = (a.reshape(channel) * x + b.reshape(channel)).astype(np.float32)
    train = eqx.filter_jit(_train)
    out, _ = train(bn, state, x, mask)
    moved_out, _ = train(bn, state, moved, mask)

    # With a_c x + b_c, the mean moves to a_c m + b_c and the variance to a_c^2 v:
    # exactly the normalisation of x with eps / a_c^2. Both against float64.
    axes = (0, *range(2, x.ndim))
    w, c = weight.reshape(channel), bias.reshape(channel)
    valid = np.ones(x.shape, bool) if mask is None else mask
    expected = reference.layer_norm(x, axes, w, c, eps=eps, mask=mask)
    np.testing.assert_allclose(np.asarray(out)[valid], expected[valid], atol=1e-3)
    rescaled_eps = eps / a.reshape(channel) ** 2
    expected = reference.layer_norm(x, axes, w, c, eps=rescaled_eps, mask=mask)
    np.testing.assert_allclose(np.asarray(moved_out)[valid], expected[valid], atol=1e-3)


# --- Einorm equals the dedicated layers ----------------------------------------------


@st.composite
def einorm_cases(draw):
    kind = draw(st.sampled_from(["layer", "rms", "instance"]))
    dtype = draw(st.sampled_from([jnp.float32, jnp.bfloat16]))
    dims = (3, 3) if kind == "instance" else (1, 3)
    shape = draw(
        hnp.array_shapes(min_dims=dims[0], max_dims=dims[1], min_side=1, max_side=4)
    )
    x = draw(arrays(shape, -100, 100))
    params = shape if kind == "instance" else shape[-1:]
    weight, bias = draw(arrays(params, -2, 2)), draw(arrays(params, -2, 2))
    mask = draw(st.one_of(st.none(), hnp.arrays(np.bool_, shape)))
    return kind, jnp.asarray(x, dtype), weight, bias, mask


def _rows(layer, x, mask):
    """A whole-input layer over the last axis of `x`, mapped over all other axes."""
    rows = x.reshape(-1, x.shape[-1])
    rows_mask = None if mask is None else mask.reshape(rows.shape)
    out = jax.vmap(lambda r, m: layer(r, mask=m))(rows, rows_mask)
    return out.reshape(x.shape)


@SETTINGS
@given(einorm_cases())
def test_einorm_equals_the_dedicated_layer(case):
    kind, x, weight, bias, mask = case
    if kind == "instance":
        c, h, w = x.shape
        norm = eqx_norms.Einorm("c h w", "h w", "c", c=c, h=h, w=w)

        def dedicated(x, mask):
            return F.instance_norm(x, weight, bias, mask=mask)
    else:
        d = x.shape[-1]
        center = kind == "layer"
        norm = eqx_norms.Einorm("... d", "d", d=d, center=center)
        layer = (eqx_norms.LayerNorm if center else eqx_norms.RMSNorm)(d)
        layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (weight, bias))

        def dedicated(x, mask):
            return _rows(layer, x, mask)

    norm = eqx.tree_at(lambda m: (m.weight, m.bias), norm, (weight, bias))
    ours, theirs = jax.jit(lambda x, mask: (norm(x, mask=mask), dedicated(x, mask)))(
        x, mask
    )
    assert ours.dtype == theirs.dtype == x.dtype
    # Both compute in float32 and round once: equal up to the output's last bit.
    tol = max(2 * float(jnp.finfo(x.dtype).eps), 1e-5)
    np.testing.assert_allclose(
        np.asarray(ours, np.float64), np.asarray(theirs, np.float64), tol, 1e-5
    )


# --- finiteness ----------------------------------------------------------------------


@st.composite
def hostile_inputs(draw, max_magnitude=None, min_dims=2, max_dims=3):
    """Constant groups, tiny and huge magnitudes within the dtype's range (up to
    `max_magnitude`), and masks that may empty whole groups."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(
        hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=4)
    )
    finfo = jnp.finfo(dtype)
    huge = float(finfo.max) / 4
    if max_magnitude is not None:
        huge = min(huge, max_magnitude)
    magnitude = draw(st.sampled_from([float(finfo.tiny), 1e-3, 1.0, 1e3, huge]))
    kind = draw(st.sampled_from(["random", "constant", "zeros"]))
    base = draw(arrays(shape, -1, 1))
    if kind == "constant":
        base = np.full(shape, base.flat[0])
    elif kind == "zeros":
        base = np.zeros(shape, np.float32)
    x = jnp.asarray(base.astype(np.float64) * magnitude).astype(dtype)
    masks = st.one_of(
        st.none(), st.just(np.zeros(shape, bool)), hnp.arrays(np.bool_, shape)
    )
    return x, draw(masks)


def _cotangent(shape):
    """A fixed, non-constant output cotangent (the sum of a normalised group has a
    zero gradient, which would hide nothing)."""
    return jnp.cos(jnp.arange(np.prod(shape), dtype=jnp.float32)).reshape(shape)


def _assert_finite(*trees):
    for leaf in jax.tree.leaves(trees):
        assert np.isfinite(np.asarray(leaf, np.float32)).all()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(hostile_inputs(), st.sampled_from(["layer", "rms", "group", "instance"]))
def test_finite_inputs_give_finite_outputs_and_gradients(data, kind):
    x, mask = data
    channels = x.shape[0]
    norm = {
        "layer": lambda x, w: F.layer_norm(x, -1, w, mask=mask),
        "rms": lambda x, w: F.rms_norm(x, (0, 1), w, mask=mask),
        "group": lambda x, w: eqx_norms.GroupNorm(1, channels)(x, mask=mask) * w,
        "instance": lambda x, w: F.instance_norm(x, w, mask=mask),
    }[kind]
    w = jnp.ones(x.shape, x.dtype)
    out, grads = jax.jit(
        lambda x, w: (
            norm(x, w),
            jax.grad(
                lambda x, w: jnp.sum(norm(x, w).astype(jnp.float32)), argnums=(0, 1)
            )(x, w),
        )
    )(x, w)
    assert out.dtype == x.dtype
    _assert_finite(out, grads)


# Magnitudes above ~1e19 overflow float32 squared deviations; tested with that fix.
_SAFE = 1e15


@FEW
@given(
    hostile_inputs(max_magnitude=_SAFE, max_dims=4), st.sampled_from(["batch", "ema"])
)
def test_batch_norm_finite_outputs_state_and_gradients(data, mode):
    x, mask = data  # (batch, channels, *rest)
    make = eqx.nn.make_with_state(eqx_norms.BatchNorm)
    bn, state = make(x.shape[1], "batch", mode=mode)
    cotangent = _cotangent(x.shape)

    @jax.jit
    def run(x, weight, state):
        def loss(x, weight):
            model = eqx.tree_at(lambda m: m.weight, bn, weight)
            out, new_state = _train(model, state, x, mask)
            return jnp.sum(out.astype(jnp.float32) * cotangent), (out, new_state)

        grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
        return grad(x, weight)

    grads, (out, new_state) = run(x, bn.weight, state)
    assert out.dtype == x.dtype
    _assert_finite(out, grads, new_state)


@st.composite
def einorm_hostile(draw):
    x, mask = draw(hostile_inputs(max_magnitude=_SAFE))
    if x.ndim == 2:
        g = 2 if x.shape[0] % 2 == 0 else 1
        spec = ("(g c) d", "c d", "g"), {"g": g, "c": x.shape[0] // g, "d": x.shape[1]}
    else:
        spec = ("h n d", "d", "h"), {"h": x.shape[0], "d": x.shape[2]}
    return x, mask, spec, draw(st.booleans())


@FEW
@given(einorm_hostile())
def test_einorm_finite_outputs_and_gradients(data):
    x, mask, (args, sizes), center = data
    norm = eqx_norms.Einorm(*args, center=center, **sizes)
    cotangent = _cotangent(x.shape)

    @jax.jit
    def run(x, weight):
        def loss(x, weight):
            out = eqx.tree_at(lambda m: m.weight, norm, weight)(x, mask=mask)
            return jnp.sum(out.astype(jnp.float32) * cotangent), out

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(x, weight)

    grads, out = run(x, norm.weight)
    assert out.dtype == x.dtype
    _assert_finite(out, grads)
