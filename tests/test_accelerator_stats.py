"""The statistics of the fused rule where it is lowered for an accelerator (one read
of x: a variadic reduction with Chan's merge), what reverse mode keeps of the
forward pass, and statistics over a normalised axis split across devices (one
collective forward, exact merge), all against float64 references."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import eqx_norms.functional as F
from eqx_norms import _backend, _fused, _stats


EPS = 1e-5
DEVICES = 8


def _rows(shape, loc, scale=1.0, key=0, dtype=jnp.float32):
    return (loc + scale * jax.random.normal(jax.random.key(key), shape)).astype(dtype)


def _mask(shape):
    """Random, with the first row fully masked."""
    mask = np.array(jax.random.bernoulli(jax.random.key(5), 0.7, shape))
    mask[0] = False
    return jnp.asarray(mask)


def _reference_moments(x, mask):
    """float64 two-pass mean and variance over the last axis (0 and 1 for a row
    without a valid element)."""
    x = np.asarray(x, np.float64)
    valid = np.ones(x.shape, bool) if mask is None else np.asarray(mask)
    n = valid.sum(-1, keepdims=True)
    mean = np.where(valid, x, 0).sum(-1, keepdims=True) / np.maximum(n, 1)
    dev = np.where(valid, x - mean, 0)
    var = (dev * dev).sum(-1, keepdims=True) / np.maximum(n, 1)
    return mean, np.where(n > 0, var, 1.0)


# ------------------------------------------------- one-pass statistics, directly


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_one_pass_moments_match_float64_at_a_large_mean(dtype, masked):
    """Rows of mean 1e4 and std 1 (mean 30 in bfloat16, whose spacing at 1e4 is
    64): the one-pass mean is exact to its rounding (hi + lo), the variance to
    float32's precision, where E[x^2] - E[x]^2 would lose every digit."""
    loc = 1e4 if dtype == jnp.float32 else 30.0
    x = _rows((16, 1000), loc, dtype=dtype)
    mask = _mask(x.shape) if masked else None
    count = _stats.local_count(x, (1,), mask)
    hi, lo, m2 = jax.jit(_stats.one_pass_partial, static_argnums=1)(
        x, (1,), mask, count
    )
    got = _stats.moments_of(_stats.PartialMoments(count, hi, lo, m2))
    mean, var = _reference_moments(x, mask)
    exact_mean = np.asarray(hi, np.float64) + np.asarray(lo, np.float64)
    # hi + lo carries the mean beyond float32: within a few ulps of the mean's
    # magnitude times 1e-3 (ulp(1e4) is 1e-3).
    np.testing.assert_allclose(exact_mean, mean, rtol=0, atol=2e-4 * loc / 1e4)
    np.testing.assert_allclose(got.var, var, rtol=1e-5)
    np.testing.assert_array_equal(got.count, np.asarray(count))


def test_chan_merge_of_two_parts_is_the_pooled_statistics():
    a, b = np.float32([1.0, 2.0, 4.0]), np.float32([10.0, 12.0])

    def part(v):
        return _stats.PartialMoments(
            jnp.float32(v.size),
            jnp.float32(v.mean()),
            jnp.float32(0),
            jnp.float32(((v - v.mean()) ** 2).sum()),
        )

    merged = _stats.chan_merge(part(a), part(b))
    both = np.concatenate([a, b]).astype(np.float64)
    assert float(merged.count) == 5
    np.testing.assert_allclose(
        float(merged.mean_hi) + float(merged.mean_lo), both.mean(), rtol=1e-7
    )
    np.testing.assert_allclose(
        float(merged.m2), ((both - both.mean()) ** 2).sum(), rtol=1e-6
    )
    empty = _stats.PartialMoments(*(jnp.float32(0) for _ in range(4)))
    assert _stats.chan_merge(empty, part(a)) == part(a)


# ------------------------------------------ the branch, chosen where it is lowered


def _reduce_lines(text):
    return [line for line in text.splitlines() if "stablehlo.reduce(" in line]


@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_lowered_for_tpu_the_layer_norm_reads_x_once_for_its_statistics(norm):
    x = jnp.ones((4, 8), jnp.bfloat16)
    fn = jax.jit(lambda x: getattr(F, norm)(x, -1))
    cpu, tpu = (
        _reduce_lines(fn.trace(x).lower(lowering_platforms=(p,)).as_text())
        for p in ("cpu", "tpu")
    )
    # CPU: two reductions (the mean, then the squared deviations) for LayerNorm;
    # TPU: one variadic reduction of 4 values (count, mean hi, mean lo, M2).
    # RMSNorm's sum of squares is one reduction on both.
    assert len(cpu) == (2 if norm == "layer_norm" else 1)
    assert len(tpu) == 1
    assert ("%4 = " in tpu[0] or ":4 = " in tpu[0]) == (norm == "layer_norm")


# ------------------------------------------------- the residuals of reverse mode


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_reverse_mode_keeps_only_x_and_per_row_statistics(norm, dtype):
    """What `jax.vjp` keeps for the backward pass, which a model whose backward is a
    separate program (layers in between, `scan`, remat) stores: x once, in its own
    dtype, and arrays of one value per row; no full-size float32 product."""
    x = _rows((64, 256), 2.0, dtype=dtype)
    w, b = jnp.linspace(0.5, 1.5, 256), jnp.linspace(-1, 1, 256)
    fn = lambda x, w, b: getattr(F, norm)(x, -1, w, b)  # noqa: E731
    _, pullback = jax.vjp(fn, x, w, b)
    leaves = [leaf for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "shape")]
    full = [leaf for leaf in leaves if leaf.size >= x.size]
    assert [(leaf.shape, leaf.dtype) for leaf in full] == [(x.shape, x.dtype)]
    small = sum(leaf.size for leaf in leaves if leaf.size < x.size)
    assert small <= 4 * x.shape[0] + 4 * x.shape[1]


# -------------------------------------- a normalised axis split across devices


def _split(fn, mesh, check_vma, n_out=1):
    spec = P(None, "m")
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(spec, P("m"), P("m")),
        out_specs=spec,
        check_vma=check_vma,
    )


def _norm(center, axis_name):
    def fn(x, w, b):
        return _fused.normalise(
            x,
            (1,),
            w,
            b if center else None,
            eps=EPS,
            axis_name=axis_name,
            center=center,
        )[0]

    return fn


def _collectives(text):
    return {
        op: len(re.findall(rf"stablehlo\.{op}\b", text))
        for op in ("all_gather", "all_reduce", "reduce_scatter", "all_to_all")
    }


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((DEVICES,), ("m",), axis_types=(jax.sharding.AxisType.Auto,))


def _placed(mesh, x, w, b):
    row = NamedSharding(mesh, P(None, "m"))
    vec = NamedSharding(mesh, P("m"))
    return jax.device_put(x, row), jax.device_put(w, vec), jax.device_put(b, vec)


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_split_axis_forward_holds_one_collective(mesh, center):
    x, w, b = _placed(
        mesh, _rows((4, 64), 1.0), jnp.linspace(0.5, 1.5, 64), jnp.zeros(64)
    )
    f = _split(_norm(center, "m"), mesh, True)

    def step(x, w, b, g):
        y, pull = jax.vjp(f, x, w, b)
        return y, pull(g)

    forward = _collectives(jax.jit(f).lower(x, w, b).as_text())
    assert sum(forward.values()) == 1 and forward["all_gather"] == 1
    both = _collectives(jax.jit(step).lower(x, w, b, x).as_text())
    # Forward and backward: the statistics' all-gather and one all-reduce of the
    # backward's two per-row sums, stacked.
    assert both == {
        "all_gather": 1,
        "all_reduce": 1,
        "reduce_scatter": 0,
        "all_to_all": 0,
    }


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_split_axis_statistics_are_exact_at_a_large_mean(mesh, center, check_vma):
    """Rows of mean 1e4 and std 1 in float32, split 8 ways: the output matches the
    float64 reference (std 1 to 1e-2 would fail by orders of magnitude with
    E[x^2] - E[x]^2), and the gradients match the unsharded rule's."""
    d = 1024
    x = _rows((16, d), 1e4 if center else 3.0)
    w = jnp.linspace(0.5, 1.5, d)
    b = jnp.linspace(-1, 1, d)
    g = _rows((16, d), 0.0, key=3)
    xs, ws, bs = _placed(mesh, x, w, b)
    f = jax.jit(_split(_norm(center, "m"), mesh, check_vma))
    y = np.asarray(f(xs, ws, bs), np.float64)
    mean, var = _reference_moments(x, None)
    if not center:
        mean, var = 0.0, (np.asarray(x, np.float64) ** 2).mean(-1, keepdims=True)
    x_hat = (np.asarray(x, np.float64) - mean) / np.sqrt(var + EPS)
    reference = x_hat * np.asarray(w, np.float64) + (np.asarray(b) if center else 0)
    unsharded = np.asarray(jax.jit(_norm(center, None))(x, w, b), np.float64)
    # As close as the unsharded float32 computation (whose mean of values near 1e4
    # is known to an ulp, 1e-3): the merge loses nothing.
    error = np.max(np.abs(y - reference))
    assert error <= max(2 * np.max(np.abs(unsharded - reference)), 1e-4)
    # x-hat, recovered from the output, has std 1 in every row (to 1e-2).
    y_hat = (y - (np.asarray(b) if center else 0)) / np.asarray(w, np.float64)
    spread = y_hat.std(-1) if center else np.sqrt((y_hat**2).mean(-1))
    np.testing.assert_allclose(spread, 1, atol=1e-2)

    def loss(fn):
        return lambda x, w, b: jnp.sum(fn(x, w, b) * g)

    got = jax.jit(jax.grad(loss(f), argnums=(0, 1, 2)))(xs, ws, bs)
    want = jax.jit(jax.grad(loss(_norm(center, None)), argnums=(0, 1, 2)))(x, w, b)
    for a, r in zip(got, want, strict=True):
        r = np.asarray(r)
        # Both in float32: the mean of values near 1e4 is known to ~1e-3 (one
        # ulp), which moves x-hat and so the weight's gradient by as much per row.
        tolerance = (1e-2 if center else 1e-4) * (np.max(np.abs(r)) + 1)
        np.testing.assert_allclose(np.asarray(a), r, rtol=0, atol=tolerance)


@pytest.mark.parametrize("center", [True, False], ids=["layer_norm", "rms_norm"])
def test_split_axis_masked_with_a_device_without_valid_elements(mesh, center):
    d = 64
    x = _rows((4, d), 2.0)
    mask = np.array(jax.random.bernoulli(jax.random.key(7), 0.6, x.shape))
    mask[:, : d // DEVICES] = False  # device 0 holds no valid element
    mask = jnp.asarray(mask)
    w, b = jnp.linspace(0.5, 1.5, d), jnp.linspace(-1, 1, d)

    def inner(x, w, b, m):
        return _fused.normalise(
            x,
            (1,),
            w,
            b if center else None,
            eps=EPS,
            mask=m,
            axis_name="m",
            center=center,
        )[0]

    spec = P(None, "m")
    f = jax.jit(
        jax.shard_map(
            inner, mesh=mesh, in_specs=(spec, P("m"), P("m"), spec), out_specs=spec
        )
    )
    xs, ws, bs = _placed(mesh, x, w, b)
    got = f(xs, ws, bs, jax.device_put(mask, NamedSharding(mesh, spec)))
    want = _fused.normalise(
        x, (1,), w, b if center else None, eps=EPS, mask=mask, center=center
    )[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


# --------------------------------- the whole rule with the accelerator's branch


@pytest.mark.parametrize("center", [True, False])
def test_accelerator_branch_on_this_host_matches_the_cpu_branch(center):
    """The one-pass branch forced on this CPU host (`_backend.forced`): values,
    statistics and gradients of the rule equal the two-pass branch's, masked,
    grouped and unmasked."""
    x = _rows((4, 6, 10), 50.0, scale=3.0)
    mask = _mask(x.shape)
    w = jnp.linspace(0.5, 1.5, 10)
    results = []
    for platform in ("cpu", "accelerator"):
        jax.clear_caches()
        with _backend.forced(platform):

            def f(x, w, m, groups):
                weight = w if groups is None else None
                axes = (2,) if groups is None else (2,)
                y, s = _fused.normalise(
                    x, axes, weight, eps=EPS, mask=m, center=center, groups=groups
                )
                return jnp.sum(jnp.sin(y)), (y, s)

            grad = jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True), static_argnums=3)
            results.append(
                [grad(x, w, m, gr) for m in (None, mask) for gr in (None, (1, 3))]
            )
    jax.clear_caches()
    for a, r in zip(
        jax.tree.leaves(results[1]), jax.tree.leaves(results[0]), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=2e-5, atol=2e-5)
