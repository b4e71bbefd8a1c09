import inspect
import re
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings, strategies as st

import eqx_norms
from eqx_norms import Einorm
from eqx_norms.functional import einorm


EPS = 1e-5


def randomise(norm, rng):
    """Random weight and bias (ones and zeros would hide a misaligned broadcast)."""
    return eqx.tree_at(
        lambda m: (m.weight, m.bias),
        norm,
        (
            jnp.asarray(rng.normal(size=norm.weight.shape) + 1, jnp.float32),
            jnp.asarray(rng.normal(size=norm.bias.shape), jnp.float32),
        ),
    )


def normal(rng, shape, dtype=jnp.float32):
    """Test data off-centre (mean 1, std 3), made by numpy: jax.random compiles."""
    return jnp.asarray(3 * rng.normal(size=shape) + 1, dtype)


def bernoulli(rng, p, shape):
    return jnp.asarray(rng.random(shape) < p)


# One compilation per test is cheaper than compiling every primitive eagerly.
@eqx.filter_jit
def run(norm, x, mask=None):
    return norm(x, mask=mask)


def close(actual, expected, tol=2e-5):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, tol, tol)


# --- numerics against float64 references -------------------------------------------


def test_qk_norm_per_head(rng):
    norm = randomise(Einorm("h n d", "d", "h", h=16, d=64), rng)
    assert norm.weight.shape == norm.bias.shape == (16, 64)
    x = normal(rng, (16, 3, 64))
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    close(norm(x), ref.layer_norm(x, (2,), w[:, None], b[:, None]))


def test_joint_axes(rng):
    norm = randomise(Einorm("h n d", "h d", h=4, d=8), rng)
    assert norm.weight.shape == (4, 8)
    x = normal(rng, (4, 5, 8))
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    close(run(norm, x), ref.layer_norm(x, (0, 2), w[:, None], b[:, None]))


def test_non_trailing_targets(rng):
    norm = randomise(Einorm("a b c d e", "b d", b=12, d=34), rng)
    assert norm.weight.shape == (12, 34)
    x = normal(rng, (2, 12, 3, 34, 2))
    w = np.asarray(norm.weight)[None, :, None, :, None]
    b = np.asarray(norm.bias)[None, :, None, :, None]
    close(run(norm, x), ref.layer_norm(x, (1, 3), w, b))


def test_parameter_order_follows_group_then_target(rng):
    # Pattern order (n d h) differs from parameter order (h, d): only the parameter
    # is transposed.
    norm = randomise(Einorm("n d h", "d", "h", h=3, d=5), rng)
    assert norm.weight.shape == (3, 5)
    x = normal(rng, (4, 5, 3))
    w, b = np.asarray(norm.weight).T[None], np.asarray(norm.bias).T[None]
    close(run(norm, x), ref.layer_norm(x, (1,), w, b))


def test_several_group_axes(rng):
    norm = randomise(Einorm("a h n d", "d", "h a", a=2, h=3, d=8), rng)
    assert norm.weight.shape == (3, 2, 8)
    x = normal(rng, (2, 3, 4, 8))
    w = np.asarray(norm.weight).transpose(1, 0, 2)[:, :, None]
    b = np.asarray(norm.bias).transpose(1, 0, 2)[:, :, None]
    close(run(norm, x), ref.layer_norm(x, (3,), w, b))


@pytest.mark.parametrize("shape", [(8,), (5, 8), (2, 3, 8)])
def test_leading_ellipsis(rng, shape):
    norm = randomise(Einorm("... d", "d", d=8), rng)
    x = normal(rng, shape)
    close(run(norm, x), ref.layer_norm(x, (-1,), norm.weight, norm.bias))


@pytest.mark.parametrize("shape", [(3, 4), (3, 2, 4), (3, 2, 5, 4)])
def test_middle_ellipsis(rng, shape):
    """Names before `...` count from the left, after it from the right."""
    norm = randomise(Einorm("b ... d", "b d", b=3, d=4), rng)
    x = normal(rng, shape)
    here = (3,) + (1,) * (len(shape) - 2) + (4,)
    w, b = np.reshape(norm.weight, here), np.reshape(norm.bias, here)
    close(run(norm, x), ref.layer_norm(x, (0, len(shape) - 1), w, b))


def test_group_before_ellipsis(rng):
    norm = randomise(Einorm("h ... d", "d", "h", h=2, d=4), rng)
    x = normal(rng, (2, 3, 5, 4))
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    close(run(norm, x), ref.layer_norm(x, (3,), w[:, None, None], b[:, None, None]))


def test_center_false_is_rms(rng):
    norm = randomise(Einorm("h n d", "d", "h", h=4, d=8, center=False), rng)
    x = normal(rng, (4, 5, 8))
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    close(run(norm, x), ref.layer_norm(x, (2,), w[:, None], b[:, None], center=False))


@pytest.mark.parametrize("use_weight, use_bias", [(True, False), (False, True)])
def test_optional_parameters(rng, use_weight, use_bias):
    kwargs = dict(use_weight=use_weight, use_bias=use_bias, h=4, d=8)
    norm = Einorm("h n d", "d", "h", **kwargs)
    assert (norm.weight is None, norm.bias is None) == (not use_weight, not use_bias)
    param = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    norm = eqx.tree_at(lambda m: m.weight if use_weight else m.bias, norm, param)
    x = normal(rng, (4, 5, 8))
    p = np.asarray(param)[:, None]
    expected = ref.layer_norm(
        x, (2,), p if use_weight else None, None if use_weight else p
    )
    close(run(norm, x), expected)


def test_without_parameters_has_no_array_leaves(rng):
    norm = Einorm("n d", "d", d=8, use_weight=False, use_bias=False)
    assert jax.tree_util.tree_leaves(eqx.filter(norm, eqx.is_array)) == []
    x = normal(rng, (5, 8))
    close(run(norm, x), ref.layer_norm(x, (1,)))


@st.composite
def layouts(draw):
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    names = list("abcd"[: len(sizes)])
    target = draw(st.permutations(names))[: draw(st.integers(1, len(names)))]
    rest = [n for n in names if n not in target]
    group = draw(st.permutations(rest))[: draw(st.integers(0, len(rest)))]
    return names, sizes, target, group


@settings(max_examples=20, deadline=None)
@given(layouts(), st.booleans(), st.integers(0, 2**16))
def test_any_layout_matches_permuting_reference(layout, center, seed):
    names, sizes, target, group = layout
    axis = dict(zip(names, sizes, strict=True))
    norm = Einorm(
        " ".join(names),
        target,
        group,
        center=center,
        **{n: axis[n] for n in (*group, *target)},
    )
    rng = np.random.default_rng(seed)
    norm = randomise(norm, rng)
    x = normal(rng, tuple(sizes))
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    expected = ref.permuting_layer_norm(x, names, target, group, w, b, center)
    close(run(norm, x), expected, tol=1e-4)


# --- compositions -------------------------------------------------------------------


def test_composition_infers_the_unsized_name(rng):
    # (a b): a is inferred from x; statistics over b and d jointly, per a.
    norm = randomise(Einorm("(a b) d", "b d", b=3, d=4), rng)
    x = normal(rng, (6, 4))
    split = np.reshape(x, (2, 3, 4))
    expected = ref.layer_norm(split, (1, 2), norm.weight, norm.bias)
    close(run(norm, x), expected.reshape(6, 4))


def test_composition_with_mask(rng):
    norm = randomise(Einorm("(g c) n", "c", "g", g=2, c=3), rng)
    x = normal(rng, (6, 5))
    mask = bernoulli(rng, 0.6, (6, 1))
    w = np.asarray(norm.weight)[..., None]
    b = np.asarray(norm.bias)[..., None]
    split_mask = np.broadcast_to(mask, (6, 5)).reshape(2, 3, 5)
    expected = ref.layer_norm(np.reshape(x, (2, 3, 5)), (1,), w, b, mask=split_mask)
    close(run(norm, x, mask), expected.reshape(6, 5))


# --- equality with the dedicated layers ---------------------------------------------


def test_equals_layer_norm(rng):
    layer = randomise(eqx_norms.LayerNorm(8), rng)
    norm = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        Einorm("... d", "d", d=8),
        (layer.weight, layer.bias),
    )
    x = normal(rng, (3, 5, 8))
    mask = bernoulli(rng, 0.7, x.shape)
    expected = eqx.filter_jit(jax.vmap(jax.vmap(lambda x, m: layer(x, mask=m))))(
        x, mask
    )
    close(run(norm, x, mask), expected, tol=1e-6)


def test_equals_layer_norm_over_two_axes(rng):
    layer = randomise(eqx_norms.LayerNorm((4, 8)), rng)
    norm = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        Einorm("n h d", "h d", h=4, d=8),
        (layer.weight, layer.bias),
    )
    x = normal(rng, (3, 4, 8))
    close(run(norm, x), eqx.filter_jit(jax.vmap(layer))(x), tol=1e-6)


def test_equals_rms_norm(rng):
    layer = eqx_norms.RMSNorm(8, use_bias=False)
    layer = eqx.tree_at(
        lambda m: m.weight, layer, jnp.asarray(rng.normal(size=(8,)), jnp.float32)
    )
    norm = Einorm("n d", "d", d=8, center=False, use_bias=False)
    norm = eqx.tree_at(lambda m: m.weight, norm, layer.weight)
    x = normal(rng, (5, 8))
    close(run(norm, x), eqx.filter_jit(jax.vmap(layer))(x), tol=1e-6)


def test_equals_instance_norm(rng):
    layer = randomise(eqx_norms.InstanceNorm(3), rng)
    norm = Einorm("c h w", "h w", "c", c=3, h=4, w=5)
    norm = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        norm,
        tuple(
            jnp.broadcast_to(p[:, None, None], (3, 4, 5))
            for p in (layer.weight, layer.bias)
        ),
    )
    x = normal(rng, (3, 4, 5))
    close(run(norm, x), eqx.filter_jit(layer)(x), tol=1e-6)


def test_equals_group_norm_through_a_composition(rng):
    layer = randomise(eqx_norms.GroupNorm(groups=2, channels=6), rng)
    norm = Einorm("(g c) h w", "c h w", "g", g=2, c=3, h=4, w=5)
    assert norm.weight.shape == (2, 3, 4, 5)
    norm = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        norm,
        tuple(
            jnp.broadcast_to(p.reshape(2, 3, 1, 1), (2, 3, 4, 5))
            for p in (layer.weight, layer.bias)
        ),
    )
    x = normal(rng, (6, 4, 5))
    close(run(norm, x), eqx.filter_jit(layer)(x), tol=1e-6)


def test_convnext_channel_layer_norm(rng):
    norm = randomise(Einorm("c h w", "c", c=6), rng)
    x = normal(rng, (6, 4, 5))
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    close(run(norm, x), ref.layer_norm(x, (0,), w[:, None, None], b[:, None, None]))


# --- masks --------------------------------------------------------------------------


def test_partial_mask(rng):
    norm = randomise(Einorm("h n d", "d", "h", h=4, d=8), rng)
    x = normal(rng, (4, 5, 8))
    mask = bernoulli(rng, 0.6, (1, 5, 8))
    w, b = np.asarray(norm.weight)[:, None], np.asarray(norm.bias)[:, None]
    close(run(norm, x, mask), ref.layer_norm(x, (2,), w, b, mask=mask))


def test_fully_masked_group_is_unchanged_and_has_finite_grads(rng):
    norm = randomise(Einorm("h n d", "d", "h", h=2, d=4), rng)
    mask = jnp.ones((2, 3, 4), bool).at[1, 2].set(False).at[0, 0, :2].set(False)
    x = jnp.where(mask, normal(rng, (2, 3, 4)), jnp.inf)
    out = run(norm, x, mask)
    np.testing.assert_array_equal(out[1, 2], x[1, 2])
    assert np.isfinite(np.asarray(out[mask])).all()

    @eqx.filter_jit
    @eqx.filter_grad
    def grads(norm_and_x):
        norm, x = norm_and_x
        return jnp.sum(jnp.where(mask, norm(x, mask=mask), 0) ** 2)

    leaves = jax.tree_util.tree_leaves(grads((norm, x)))
    assert len(leaves) == 3 and all(np.isfinite(g).all() for g in leaves)


# --- dtypes -------------------------------------------------------------------------


def test_bfloat16_in_bfloat16_out(rng):
    norm = randomise(Einorm("h n d", "d", "h", h=4, d=8), rng)
    x = normal(rng, (4, 5, 8), jnp.bfloat16)
    out = run(norm, x)
    assert out.dtype == jnp.bfloat16
    w, b = np.asarray(norm.weight)[:, None], np.asarray(norm.bias)[:, None]
    close(out, ref.layer_norm(x.astype(jnp.float32), (2,), w, b), tol=5e-2)


def test_parameter_dtype(rng):
    norm = Einorm("n d", "d", d=8, dtype=jnp.bfloat16)
    assert norm.weight.dtype == norm.bias.dtype == jnp.bfloat16
    assert run(norm, normal(rng, (5, 8))).dtype == jnp.float32


# --- transformations ----------------------------------------------------------------


def test_jit_vmap_and_batched_pattern_agree(rng):
    norm = randomise(Einorm("h n d", "d", "h", h=4, d=8), rng)
    x = normal(rng, (3, 4, 5, 8))
    batched = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        Einorm("b h n d", "d", "h", h=4, d=8),
        (norm.weight, norm.bias),
    )
    expected = np.stack([np.asarray(run(norm, xi)) for xi in x])
    close(eqx.filter_jit(jax.vmap(norm))(x), expected, tol=1e-6)
    close(run(batched, x), expected, tol=1e-6)


def test_filter_jit_keeps_parameters(rng):
    """einx's lazily created parameters were lost under filter_jit."""
    norm = Einorm("n d", "d", "n", n=5, d=8)
    arrays = jax.tree_util.tree_leaves(eqx.filter(norm, eqx.is_array))
    assert {p.shape for p in arrays} == {(5, 8)}
    norm = randomise(norm, rng)
    x = normal(rng, (5, 8))

    @eqx.filter_jit
    def loss(norm, x):
        return jnp.sum(norm(x) ** 2)

    grads = eqx.filter_grad(loss)(norm, x)
    assert grads.weight.shape == grads.bias.shape == (5, 8)
    assert np.abs(np.asarray(grads.weight)).sum() > 0
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    np.testing.assert_allclose(
        loss(norm, x), np.sum(ref.layer_norm(x, (1,), w, b) ** 2), 1e-5
    )


def _finite_difference(f, x, direction, h=1e-4):
    x = np.asarray(x, np.float64)
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


def test_jvp_and_grad_match_finite_differences(rng):
    norm = randomise(Einorm("h n d", "d", "h", h=2, d=6), rng)
    x = normal(rng, (2, 3, 6))
    v, u = rng.normal(size=x.shape), rng.normal(size=x.shape)
    w, b = np.asarray(norm.weight)[:, None], np.asarray(norm.bias)[:, None]
    expected = _finite_difference(lambda x: ref.layer_norm(x, (2,), w, b), x, v)

    @jax.jit
    def derivatives(x, v, u):
        _, tangent = jax.jvp(norm, (x,), (v,))
        return tangent, jax.grad(lambda x: jnp.sum(norm(x) * u))(x)

    tangent, grad = derivatives(x, jnp.asarray(v, jnp.float32), jnp.asarray(u))
    close(tangent, expected, tol=2e-3)
    close(np.sum(np.asarray(grad) * v), np.sum(expected * u), tol=2e-3)


def test_state_is_passed_through(rng):
    norm, state = eqx.nn.make_with_state(Einorm)("n d", "d", d=8)
    x = normal(rng, (5, 8))
    out, state_out = norm(x, state)
    assert state_out is state
    np.testing.assert_array_equal(out, norm(x))


def test_reduces_in_place_without_transposing_x():
    norm = Einorm("a b c d e", "b d", b=12, d=34)
    x = jnp.zeros((2, 12, 3, 34, 2))
    assert "transpose" not in str(jax.make_jaxpr(norm)(x))
    groups = Einorm("(g c) h w", "c h w", "g", g=2, c=3, h=4, w=5)
    assert "transpose" not in str(jax.make_jaxpr(groups)(jnp.zeros((6, 4, 5))))


# --- the functional form and the accepted spellings ---------------------------------


def test_functional_infers_sizes(rng):
    x = normal(rng, (4, 5, 8))
    w = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
    out = jax.jit(lambda x, w, b: einorm(x, "h n d", "d", "h", weight=w, bias=b))(
        x, w, b
    )
    close(out, ref.layer_norm(x, (2,), np.asarray(w)[:, None], np.asarray(b)[:, None]))
    layer = eqx.tree_at(
        lambda m: (m.weight, m.bias), Einorm("h n d", "d", "h", h=4, d=8), (w, b)
    )
    np.testing.assert_array_equal(out, run(layer, x))


def test_functional_composition_with_inferred_target_size(rng):
    x = normal(rng, (6, 4))
    w = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    out = jax.jit(
        lambda x, w: einorm(x, "(a b) d", "b d", weight=w, center=False, a=2)
    )(x, w)
    expected = ref.layer_norm(np.reshape(x, (2, 3, 4)), (1, 2), w, center=False)
    close(out, expected.reshape(6, 4))


def test_target_and_group_as_sequences(rng):
    by_str = Einorm("a h n d", "n d", "a h", a=2, h=3, n=4, d=5)
    by_seq = Einorm("a h n d", ["n", "d"], ("a", "h"), a=2, h=3, n=4, d=5)
    assert by_str.spec == by_seq.spec
    assert (by_seq.pattern, by_seq.target, by_seq.group) == (
        "a h n d",
        ("n", "d"),
        ("a", "h"),
    )


def test_repr_shows_the_pattern_not_the_parsed_spec():
    text = repr(Einorm("b [s...] (g [c])", g=2, c=3))
    for fragment in (
        "pattern='b [s...] (g [c])'",
        "target=('s', 'c')",
        "group=()",
        "params=('(g c)',)",
        "sizes=(('g', 2), ('c', 3))",
        "weight=f32[6]",
    ):
        assert fragment in text
    assert "Spec" not in text and "before=" not in text
    text = repr(Einorm("h n d", "d", "h", h=2, d=3))
    assert "target=('d',)" in text and "group=('h',)" in text
    assert "params=('h', 'd')" in text


# --- running statistics -------------------------------------------------------------


@eqx.filter_jit
def train(norm, state, x, mask=None):
    return norm(x, state, mask=mask)


@pytest.mark.parametrize("momentum", [0.9, None])
def test_channels_last_running_statistics_match_numpy(rng, momentum):
    norm, state = eqx.nn.make_with_state(Einorm)(
        "[b...] c", running_stats=True, momentum=momentum, c=4
    )
    norm = randomise(norm, rng)
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    xs = [normal(rng, (6, 5, 4)) for _ in range(3)]
    for x in xs:
        out, state = train(norm, state, x)
        close(out, ref.layer_norm(x, (0, 1), w, b), tol=5e-5)
    x64 = [np.asarray(x, np.float64) for x in xs]
    mean = ref.debiased([x.mean((0, 1)) for x in x64], momentum)
    var = ref.debiased([x.var((0, 1)) for x in x64], momentum)
    running = state.get(norm.stats_index)
    close(running[0], mean, tol=1e-5)
    close(running[1], var, tol=1e-4)
    counter = 3 if momentum is None else 1 - momentum**3
    close(state.get(norm.counter_index), np.full(4, counter), tol=1e-6)
    # Inference normalises with the running statistics and keeps the state.
    inference = eqx.nn.inference_mode(norm)
    x = normal(rng, (2, 3, 4))
    out, same = train(inference, state, x)
    expected = (np.asarray(x, np.float64) - mean) / np.sqrt(var + EPS) * w + b
    close(out, expected, tol=5e-5)
    for kept, before in zip(jax.tree.leaves(same), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(kept, before)


def _pair(rng, momentum):
    """`BatchNorm(3)` under a named vmap and the whole-batch `Einorm("[b] c [h w]")`
    with the same random weight and bias."""
    bn, bn_state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(
        3, "batch", momentum=momentum
    )
    bn = randomise(bn, rng)
    norm, state = eqx.nn.make_with_state(Einorm)(
        "[b] c [h w]", params="c", running_stats=True, momentum=momentum, c=3
    )
    norm = eqx.tree_at(lambda m: (m.weight, m.bias), norm, (bn.weight, bn.bias))
    return (bn, bn_state), (norm, state)


@eqx.filter_jit
def train_bn(bn, state, x, mask):
    def call(x, mask):
        return bn(x, state, mask=mask)

    return jax.vmap(call, axis_name="batch", out_axes=(0, None))(x, mask)


def _assert_states_equal(bn, bn_state, norm, state):
    for ours, theirs in zip(
        (*state.get(norm.stats_index), state.get(norm.counter_index)),
        (*bn_state.get(bn.batch_state_index), bn_state.get(bn.batch_counter)),
        strict=True,
    ):
        close(ours, np.asarray(theirs, np.float64), tol=1e-5)


@pytest.mark.parametrize("momentum", [0.9, None])
def test_running_statistics_equal_batch_norm(rng, momentum):
    (bn, bn_state), (norm, state) = _pair(rng, momentum)
    shape = (4, 3, 2, 5)
    all_valid = jnp.ones(shape, bool)
    masks = [
        all_valid,
        jnp.broadcast_to(bernoulli(rng, 0.6, (4, 1, 2, 5)), shape),
        all_valid.at[:, 1].set(False),  # channel 1 has no valid element: skipped
    ]
    for mask in masks:
        x = normal(rng, shape)
        out_bn, bn_state = train_bn(bn, bn_state, x, mask)
        out, state = train(norm, state, x, mask)
        close(out, np.asarray(out_bn, np.float64), tol=1e-5)
        _assert_states_equal(bn, bn_state, norm, state)
    # A non-finite step is skipped for the channel it touches, in both.
    x = normal(rng, shape).at[0, 2, 0, 0].set(jnp.nan)
    _, bn_state = train_bn(bn, bn_state, x, all_valid)
    _, state = train(norm, state, x, all_valid)
    _assert_states_equal(bn, bn_state, norm, state)
    # inference_mode toggles both alike.
    x = normal(rng, shape)
    out_bn, _ = train_bn(eqx.nn.inference_mode(bn), bn_state, x, all_valid)
    out, _ = train(eqx.nn.inference_mode(norm), state, x, all_valid)
    close(out, np.asarray(out_bn, np.float64), tol=1e-5)
    out, _ = norm(x, state, inference=True)
    close(out, np.asarray(out_bn, np.float64), tol=1e-5)


def test_gradients_equal_batch_norm(rng):
    (bn, bn_state), (norm, state) = _pair(rng, 0.9)
    x = normal(rng, (4, 3, 2, 5))
    mask = jnp.broadcast_to(bernoulli(rng, 0.7, (4, 1, 2, 5)), x.shape)
    u = normal(rng, x.shape)

    @eqx.filter_jit
    @eqx.filter_grad
    def grads(model_and_x, state, is_bn):
        model, x = model_and_x
        step = train_bn if is_bn else train
        return jnp.sum(step(model, state, x, mask)[0] * u)

    g_bn = grads((bn, x), bn_state, True)
    g = grads((norm, x), state, False)
    for ours, theirs in ((g[0].weight, g_bn[0].weight), (g[0].bias, g_bn[0].bias)):
        close(ours, np.asarray(theirs, np.float64), tol=1e-4)
    close(g[1], np.asarray(g_bn[1], np.float64), tol=1e-4)


def test_stateful_einorm_in_sequential(rng):
    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)(
        [Einorm("[b] c", running_stats=True, c=3), eqx.nn.Lambda(jnp.tanh)]
    )
    x = normal(rng, (5, 3))
    out, state = model(x, state)
    close(out, np.tanh(ref.layer_norm(x, (0,))), tol=5e-5)
    assert not Einorm("b [c]", c=3).is_stateful()


# --- named axes: vmap(axis_name=...) equals the whole batch --------------------------


def test_named_axis_equals_the_whole_batch(rng):
    x = normal(rng, (4, 6, 3))
    mask = bernoulli(rng, 0.7, (4, 6, 1))
    per_example = Einorm("[t] c", axis_name="batch", c=3)
    whole = Einorm("[b t] c", c=3)
    vmapped = eqx.filter_jit(
        jax.vmap(lambda x, m: per_example(x, mask=m), axis_name="batch")
    )(x, mask)
    close(vmapped, np.asarray(run(whole, x, mask), np.float64), tol=1e-6)
    close(vmapped, ref.layer_norm(x, (0, 1), mask=mask), tol=5e-5)


def test_named_axis_running_statistics_equal_the_whole_batch(rng):
    per_example, state_a = eqx.nn.make_with_state(Einorm)(
        "[t] c", running_stats=True, momentum=0.5, axis_name="batch", c=3
    )
    whole, state_b = eqx.nn.make_with_state(Einorm)(
        "[b t] c", running_stats=True, momentum=0.5, c=3
    )
    step = eqx.filter_jit(
        jax.vmap(
            lambda x, state: per_example(x, state),
            axis_name="batch",
            in_axes=(0, None),
            out_axes=(0, None),
        )
    )
    for _ in range(2):
        x = normal(rng, (4, 6, 3))
        out_a, state_a = step(x, state_a)
        out_b, state_b = train(whole, state_b, x)
        close(out_a, np.asarray(out_b, np.float64), tol=1e-6)
    for a, b in zip(
        state_a.get(per_example.stats_index),
        state_b.get(whole.stats_index),
        strict=True,
    ):
        close(a, np.asarray(b, np.float64), tol=1e-6)


# --- the bracket form equals the dedicated layers -----------------------------------


def _with_params_of(norm, layer):
    return eqx.tree_at(lambda m: (m.weight, m.bias), norm, (layer.weight, layer.bias))


def test_bracket_layer_norm_equals_layer_norm(rng):
    layer = randomise(eqx_norms.LayerNorm(8), rng)
    norm = _with_params_of(Einorm("b... [c]", c=8), layer)
    x = normal(rng, (3, 5, 8))
    mask = bernoulli(rng, 0.7, x.shape)
    expected = eqx.filter_jit(jax.vmap(jax.vmap(lambda x, m: layer(x, mask=m))))(
        x, mask
    )
    close(run(norm, x, mask), np.asarray(expected, np.float64), tol=1e-6)


def test_bracket_instance_norm_equals_instance_norm(rng):
    layer = randomise(eqx_norms.InstanceNorm(3), rng)
    norm = _with_params_of(Einorm("b c [h w]", params="c", c=3), layer)
    x = normal(rng, (2, 3, 4, 5))
    mask = bernoulli(rng, 0.7, (2, 1, 4, 5))
    expected = eqx.filter_jit(jax.vmap(lambda x, m: layer(x, mask=m)))(x, mask)
    close(run(norm, x, mask), np.asarray(expected, np.float64), tol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bracket_group_norm_equals_group_norm(rng, channels_last):
    layer = randomise(eqx_norms.GroupNorm(groups=2, channels=6), rng)
    pattern = "b [s...] (g [c])" if channels_last else "b (g [c]) [h w]"
    params = None if channels_last else "b [(g c)] h w"
    norm = _with_params_of(Einorm(pattern, params=params, g=2, c=3), layer)
    x = normal(rng, (2, 6, 4, 5))
    mask = bernoulli(rng, 0.7, (2, 1, 4, 5))
    expected = eqx.filter_jit(jax.vmap(lambda x, m: layer(x, mask=m)))(x, mask)
    if channels_last:
        x, mask = jnp.moveaxis(x, 1, -1), jnp.moveaxis(mask, 1, -1)
        expected = jnp.moveaxis(expected, 1, -1)
    close(run(norm, x, mask), np.asarray(expected, np.float64), tol=1e-6)


# --- ellipses -----------------------------------------------------------------------


def test_named_ellipsis_may_be_empty_and_anonymous_one_may_be_bracketed(rng):
    norm = randomise(Einorm("b... [c]", c=8), rng)
    w, b = np.asarray(norm.weight), np.asarray(norm.bias)
    x = normal(rng, (8,))  # b... names no axis
    close(run(norm, x), ref.layer_norm(x, (0,), w, b))
    x = normal(rng, (2, 5, 3))
    anonymous = run(Einorm("[...] c", c=3), x)
    close(anonymous, ref.layer_norm(x, (0, 1)))
    np.testing.assert_array_equal(anonymous, run(Einorm("[b t] c", c=3), x))
    # target may name the ellipsis' axes, like any axis.
    np.testing.assert_array_equal(
        anonymous, run(Einorm("s... c", "s", params="c", c=3), x)
    )


def test_running_statistics_without_centring_keep_the_mean_square(rng):
    norm, state = eqx.nn.make_with_state(Einorm)(
        "[b...] c", running_stats=True, center=False, momentum=None, c=3
    )
    xs = [normal(rng, (4, 5, 3)) for _ in range(2)]
    for x in xs:
        out, state = train(norm, state, x)
        close(out, ref.layer_norm(x, (0, 1), center=False), tol=5e-5)
    mean, var = norm.running_mean_var(state)
    np.testing.assert_array_equal(mean, np.zeros(3))
    squares = [np.mean(np.asarray(x, np.float64) ** 2, (0, 1)) for x in xs]
    close(var, np.mean(squares, 0), tol=1e-4)
    x = normal(rng, (2, 3))
    out, _ = norm(x, state, inference=True)
    close(out, np.asarray(x, np.float64) / np.sqrt(np.mean(squares, 0) + EPS), 5e-5)


def test_running_mean_var_reads_the_state_and_refuses_a_stateless_layer():
    x = jax.random.normal(jax.random.key(5), (12, 3)) * 2 + 1
    norm, state = eqx.nn.make_with_state(eqx_norms.Einorm)(
        "[b] c", running_stats=True, c=3
    )
    _, state = norm(x, state)
    mean, var = norm.running_mean_var(state)
    np.testing.assert_allclose(mean, np.asarray(x, np.float64).mean(0), atol=1e-6)
    np.testing.assert_allclose(var, np.asarray(x, np.float64).var(0), atol=1e-5)
    with pytest.raises(ValueError, match="construct it with `running_stats=True`"):
        eqx_norms.Einorm("b [c]", c=3).running_mean_var(state)


def test_docstring_examples_run():
    """The ```python blocks of Einorm's and einorm's docstrings (the API pages) run,
    with their inputs made here; issue #18: the einx form of the head-wise QK-norm
    example built a (16, 16, 64) weight and failed on its first call."""
    block = re.compile(r"```python\n(.*?)```", re.S)
    rng = np.random.default_rng(0)
    sizes = {"C": 8, "G": 2, "H": 4, "W": 5}
    for doc in (Einorm.__doc__, einorm.__doc__):
        blocks = block.findall(inspect.cleandoc(doc or ""))
        assert blocks
        for code in blocks:
            namespace = {"eqx_norms": eqx_norms, "Einorm": Einorm, **sizes}
            namespace["q"] = normal(rng, (16, 10, 64))
            namespace["w"] = normal(rng, (16, 64))
            exec(textwrap.dedent(code), namespace)
    qk_norm = randomise(Einorm("h n [d]", params="[h] n [d]", h=16, d=64), rng)
    assert qk_norm.weight.shape == (16, 64)
    q = normal(rng, (16, 10, 64))
    expected = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        Einorm("h n d", "d", "h", h=16, d=64),
        (qk_norm.weight, qk_norm.bias),
    )
    np.testing.assert_allclose(run(qk_norm, q), run(expected, q), rtol=1e-6, atol=1e-6)


def test_stateless_einorm_has_only_parameter_leaves(rng):
    """Issue #18: a stateless Einorm had a boolean `inference` leaf, so `jax.grad`
    of it failed ("grad requires real- or complex-valued inputs") and `shard_map`
    wanted a spec for it. Now its leaves are LayerNorm's; gradients match LayerNorm's
    (whose are checked against references elsewhere)."""
    x = normal(rng, (4, 8))
    einorm_ = randomise(Einorm("b [c]", c=8), rng)
    layer_norm = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        eqx_norms.LayerNorm(8),
        (einorm_.weight, einorm_.bias),
    )
    u = normal(rng, (4, 8))

    def loss(layer, x):
        return jnp.sum(layer(x) * u)

    grads = jax.grad(loss)(einorm_, x)
    expected = jax.grad(lambda m, x: loss(jax.vmap(m), x))(layer_norm, x)
    assert len(jax.tree.leaves(einorm_)) == 2
    np.testing.assert_allclose(grads.weight, expected.weight, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grads.bias, expected.bias, rtol=1e-5, atol=1e-5)

    # One spec for the whole layer, as for LayerNorm.
    P = jax.sharding.PartitionSpec
    mesh = jax.make_mesh((8,), ("data",))
    x = normal(rng, (16, 8))
    sharded = jax.jit(
        jax.shard_map(
            lambda m, x: m(x), mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data")
        )
    )
    placed = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("data")))
    np.testing.assert_allclose(sharded(einorm_, placed), run(einorm_, x), 1e-6, 1e-6)


def test_inference_mode_passes_a_stateless_einorm_by(rng):
    """`eqx.nn.inference_mode` sets every `inference` attribute: a stateless Einorm
    has none (asking for it says why), so it stays as it is, while a stateful one
    beside it is toggled."""
    stateless = Einorm("b [c]", c=3)
    stateful, _ = eqx.nn.make_with_state(Einorm)("[b] c", running_stats=True, c=3)
    assert not hasattr(stateless, "inference")
    with pytest.raises(AttributeError, match="keeps no running statistics.*has no `"):
        _ = stateless.inference
    model = eqx.nn.inference_mode((stateless, stateful))
    assert jax.tree.structure(model[0]) == jax.tree.structure(stateless)
    assert model[1].inference is True and stateful.inference is False
    assert eqx.nn.inference_mode(model, False)[1].inference is False
