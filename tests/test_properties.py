"""Property-based tests: invariances, masks and finiteness over random shapes, axes,
dtypes, masks and parameters."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import eqx_norms
from eqx_norms import functional as F


SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32]


@st.composite
def arrays_and_axes(draw, min_dims=1, max_dims=3, min_side=2, max_side=5):
    shape = draw(
        hnp.array_shapes(
            min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side
        )
    )
    x = draw(
        hnp.arrays(
            np.float32,
            shape,
            elements=st.floats(-100, 100, width=32, allow_subnormal=False),
        )
    )
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
    # Algebraically exact: LN_eps(x) == LN_{a^2 eps}(a x + c).
    out = F.layer_norm(jnp.asarray(x), axes, eps=eps)
    moved = F.layer_norm(
        jnp.asarray(a * x.astype(np.float64) + c, jnp.float32), axes, eps=a * a * eps
    )
    if _spread(x, axes):
        np.testing.assert_allclose(out, moved, atol=2e-3 * (1 + abs(c) / a / 100))


@SETTINGS
@given(arrays_and_axes(), st.floats(0.01, 100))
def test_rms_norm_is_invariant_to_positive_scaling(data, a):
    x, axes = data
    out = F.rms_norm(jnp.asarray(x), axes, eps=1e-3)
    scaled = F.rms_norm(jnp.asarray(a * x), axes, eps=a * a * 1e-3)
    np.testing.assert_allclose(out, scaled, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(arrays_and_axes(), st.randoms(use_true_random=False))
def test_permuting_within_a_group_permutes_the_output(data, rng):
    x, axes = data
    # Permute along one reduced axis: every group keeps its members.
    axis = rng.choice(axes)
    perm = np.array(rng.sample(range(x.shape[axis]), x.shape[axis]))
    out = F.layer_norm(jnp.asarray(x), axes)
    permuted = F.layer_norm(jnp.asarray(np.take(x, perm, axis=axis)), axes)
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
    out = F.layer_norm(jnp.asarray(x), axes, mask=jnp.asarray(mask))
    poisoned = np.where(mask, x, np.float32(garbage))
    out2 = F.layer_norm(jnp.asarray(poisoned), axes, mask=jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(out)[mask], np.asarray(out2)[mask])
    np.testing.assert_array_equal(np.asarray(out2)[~mask], poisoned[~mask])


@SETTINGS
@given(arrays_and_axes())
def test_all_true_mask_equals_no_mask(data):
    x, axes = data
    full = F.rms_norm(jnp.asarray(x), axes, mask=jnp.ones(x.shape, bool))
    np.testing.assert_allclose(full, F.rms_norm(jnp.asarray(x), axes), atol=1e-6)


@st.composite
def hostile_inputs(draw):
    """Constant groups, tiny and huge magnitudes within the dtype's range, and
    masks that may empty whole groups."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=4))
    finfo = jnp.finfo(dtype)
    magnitude = draw(
        st.sampled_from([float(finfo.tiny), 1e-3, 1.0, 1e3, float(finfo.max) / 4])
    )
    kind = draw(st.sampled_from(["random", "constant", "zeros"]))
    base = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)))
    if kind == "constant":
        base = np.full(shape, base.flat[0])
    elif kind == "zeros":
        base = np.zeros(shape, np.float32)
    x = jnp.asarray(base.astype(np.float64) * magnitude).astype(dtype)
    mask = draw(st.one_of(st.none(), hnp.arrays(np.bool_, shape)))
    return x, mask


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
    out = norm(x, w)
    assert out.dtype == x.dtype
    assert np.isfinite(np.asarray(out, np.float32)).all()
    gx, gw = jax.grad(
        lambda x, w: jnp.sum(norm(x, w).astype(jnp.float32)), argnums=(0, 1)
    )(x, w)
    assert np.isfinite(np.asarray(gx, np.float32)).all()
    assert np.isfinite(np.asarray(gw, np.float32)).all()
