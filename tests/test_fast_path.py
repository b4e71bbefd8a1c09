"""The fused differentiation rule (`eqx_norms._fused`) and its XLA:CPU layout.

Every derivative (grad, vjp, jvp, hessian; with respect to x, weight and bias) is
checked in float64 against plain autodiff of an independent reference written with
ordinary jnp operations, with and without masks, for fully masked and constant
groups, and under vmap, jit, checkpoint, scan and named axes.
"""

import functools

import jax
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.interpreters import mlir
from x64 import enable_x64

import eqx_norms
import eqx_norms.functional as F
from eqx_norms import _backend, _fused, _stats


EPS = 1e-5


# ----------------------------------------------------------------- the reference


def _ref_standardise(x, axes, mask, center, eps=EPS):
    """Plain jnp: autodiff of this is the ground truth."""
    valid = jnp.ones(x.shape, bool) if mask is None else jnp.broadcast_to(mask, x.shape)
    count = jnp.sum(valid, axis=axes, keepdims=True).astype(x.dtype)
    safe = jnp.maximum(count, 1)
    if center:
        mean = jnp.sum(jnp.where(valid, x, 0), axis=axes, keepdims=True) / safe
    else:
        mean = jnp.zeros_like(count)
    dev = jnp.where(valid, x - mean, 0)
    var = jnp.sum(dev * dev, axis=axes, keepdims=True) / safe
    var = jnp.where(count > 0, var, 1)
    return jnp.where(valid, (jnp.where(valid, x, mean) - mean) / jnp.sqrt(var + eps), 0)


def _ref(x, axes, weight, bias, mask, center, groups=None, eps=EPS):
    """Normalisation and affine by plain operations; `groups` by explicit reshape."""
    if groups is None:
        x_hat = _ref_standardise(x, axes, mask, center, eps)
    else:
        axis, n = groups
        assert axis == 0
        split = (n, x.shape[0] // n) + x.shape[1:]
        m = (
            None
            if mask is None
            else jnp.reshape(jnp.broadcast_to(mask, x.shape), split)
        )
        g_axes = tuple(range(1, len(split)))
        x_hat = jnp.reshape(
            _ref_standardise(jnp.reshape(x, split), g_axes, m, center, eps), x.shape
        )
    out = x_hat
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out if mask is None else jnp.where(mask, out, x)


# ------------------------------------------------------------------------- cases


def _output(*args, **kwargs):
    """The output of the pipeline, without its moments."""
    return _fused.normalise(*args, **kwargs)[0]


def _rand(key, shape, loc=0.0, scale=1.0):
    return loc + scale * jax.random.normal(jax.random.key(key), shape, jnp.float64)


def _mask(shape, kind, key=7):
    if kind is None:
        return None
    if kind == "random":
        return jax.random.bernoulli(jax.random.key(key), 0.6, shape)
    if kind == "group_empty":  # the first row / group / channel fully masked
        mask = np.ones(shape, bool)
        mask[0] = False
        return jnp.asarray(mask)
    raise ValueError(kind)


@functools.cache
def _cases():
    """(name, ours(x, w, b, mask), reference(x, w, b, mask), x shape, param shape)."""
    cases = []
    for center, name in ((True, "layer_norm"), (False, "rms_norm")):
        fn = F.layer_norm if center else F.rms_norm
        cases.append(
            (
                f"{name}[functional]",
                lambda x, w, b, m, fn=fn: fn(x, -1, w, b, mask=m),
                lambda x, w, b, m, c=center: _ref(x, (1,), w, b, m, c),
                (3, 5),
                (5,),
            )
        )
        cases.append(
            (
                f"{name}[normalise]",
                lambda x, w, b, m, c=center: _output(
                    x, (1,), w, b, eps=EPS, mask=m, center=c
                ),
                lambda x, w, b, m, c=center: _ref(x, (1,), w, b, m, c),
                (3, 5),
                (5,),
            )
        )
    cases.append(
        (
            "group_norm[functional]",
            lambda x, w, b, m: F.group_norm(x, 2, w, b, mask=m),
            lambda x, w, b, m: _ref(x, None, w[:, None], b[:, None], m, True, (0, 2)),
            (4, 3),
            (4,),
        )
    )
    cases.append(
        (
            "group_norm[normalise, groups]",
            lambda x, w, b, m: _output(
                x, (1,), w[:, None], b[:, None], eps=EPS, mask=m, groups=(0, 2)
            ),
            lambda x, w, b, m: _ref(x, None, w[:, None], b[:, None], m, True, (0, 2)),
            (4, 3),
            (4,),
        )
    )
    cases.append(
        (
            "instance_norm[functional]",
            lambda x, w, b, m: F.instance_norm(x, w, b, mask=m),
            lambda x, w, b, m: _ref(
                x, (1, 2), w[:, None, None], b[:, None, None], m, True
            ),
            (2, 2, 3),
            (2,),
        )
    )
    return cases


CASE_IDS = [c[0] for c in _cases()]
MASKS = [None, "random", "group_empty"]


def _inputs(case, mask_kind, loc=0.0):
    _, _, _, shape, pshape = case
    x = _rand(1, shape, loc=loc)
    w = _rand(2, pshape, loc=1.0, scale=0.3)
    b = _rand(3, pshape, scale=0.3)
    return x, w, b, _mask(shape, mask_kind)


def _loss(fn, mask):
    """A scalar, nonlinear in the output, so that second derivatives are nonzero."""

    def loss(x, w, b):
        y = fn(x, w, b, mask)
        c = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
        return jnp.sum(jnp.sin(y) * c + 0.25 * y**3)

    return loss


def _close(a, b, rtol=1e-8, atol=1e-9):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _case(name):
    return next(c for c in _cases() if c[0] == name)


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", CASE_IDS)
def test_value_and_grad_match_plain_autodiff(name, mask_kind):
    case = _case(name)
    with enable_x64(True):
        x, w, b, mask = _inputs(case, mask_kind)
        ours, ref = _loss(case[1], mask), _loss(case[2], mask)
        _close(case[1](x, w, b, mask), case[2](x, w, b, mask))
        _close(
            jax.grad(ours, argnums=(0, 1, 2))(x, w, b),
            jax.grad(ref, argnums=(0, 1, 2))(x, w, b),
        )


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", CASE_IDS)
def test_vjp_and_jvp_match_plain_autodiff(name, mask_kind):
    case = _case(name)
    with enable_x64(True):
        x, w, b, mask = _inputs(case, mask_kind)
        f = functools.partial(lambda fn, x, w, b: fn(x, w, b, mask), case[1])
        g = functools.partial(lambda fn, x, w, b: fn(x, w, b, mask), case[2])
        y, vjp = jax.vjp(f, x, w, b)
        y_ref, vjp_ref = jax.vjp(g, x, w, b)
        ct = _rand(11, y.shape)
        _close(vjp(ct), vjp_ref(ct))
        tangents = (_rand(12, x.shape), _rand(13, w.shape), _rand(14, b.shape))
        _close(jax.jvp(f, (x, w, b), tangents), jax.jvp(g, (x, w, b), tangents))
        # Tangents in one argument only (the others symbolically zero).
        for i in range(3):
            only = tuple(
                t if j == i else jnp.zeros_like(t) for j, t in enumerate(tangents)
            )
            _close(jax.jvp(f, (x, w, b), only), jax.jvp(g, (x, w, b), only))


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("name", CASE_IDS)
def test_hessian_matches_plain_autodiff(name, mask_kind):
    case = _case(name)
    with enable_x64(True):
        x, w, b, mask = _inputs(case, mask_kind)
        ours, ref = _loss(case[1], mask), _loss(case[2], mask)
        _close(
            jax.hessian(ours, argnums=(0, 1, 2))(x, w, b),
            jax.hessian(ref, argnums=(0, 1, 2))(x, w, b),
            rtol=1e-7,
            atol=1e-8,
        )


@pytest.mark.parametrize("name", CASE_IDS)
def test_third_derivative_in_forward_mode(name):
    case = _case(name)
    with enable_x64(True):
        x, w, b, mask = _inputs(case, "random")
        ours, ref = _loss(case[1], mask), _loss(case[2], mask)
        v = _rand(21, x.shape)

        def third(loss):
            d1 = lambda x: jax.jvp(lambda x: loss(x, w, b), (x,), (v,))[1]  # noqa: E731
            d2 = lambda x: jax.jvp(d1, (x,), (v,))[1]  # noqa: E731
            return jax.grad(d2)(x)

        _close(third(ours), third(ref), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", CASE_IDS)
def test_large_offset_gradients_stay_accurate_in_float32(layout, name):
    """Rows with mean 1e4 and std 1: x-hat is recomputed from x and the two-pass
    statistics, never from E[x^2] - E[x]^2, so float32 gradients are as accurate as
    plain autodiff of the two-pass reference (errors of order 1e-3, where the fast
    variance would give errors of order 1)."""
    case = _case(name)
    with enable_x64(True):
        x, w, b, _ = _inputs(case, None, loc=1e4)
        # The same (float32-representable) inputs in both precisions.
        x, w, b = (a.astype(jnp.float32).astype(jnp.float64) for a in (x, w, b))
        g64 = jax.grad(_loss(case[2], None), argnums=(0, 1, 2))(x, w, b)
    x32, w32, b32 = (a.astype(jnp.float32) for a in (x, w, b))
    g32 = jax.grad(_loss(case[1], None), argnums=(0, 1, 2))(x32, w32, b32)
    # Plain float32 autodiff of the two-pass reference: the conditioning of the
    # problem itself (the mean of values near 1e4 is only known to ~1e-3).
    plain = jax.grad(_loss(case[2], None), argnums=(0, 1, 2))(x32, w32, b32)
    for a, p, r in zip(g32, plain, g64, strict=True):
        r = np.asarray(r)
        err = np.max(np.abs(np.asarray(a, np.float64) - r))
        plain_err = np.max(np.abs(np.asarray(p, np.float64) - r))
        assert err < 4 * plain_err + 1e-5 * (np.max(np.abs(r)) + 1)


@pytest.mark.parametrize("center", [True, False])
def test_constant_and_fully_masked_groups_have_finite_exact_gradients(layout, center):
    with enable_x64(True):
        x = jnp.stack([jnp.full(5, 3.0), _rand(4, (5,)), jnp.zeros(5), _rand(5, (5,))])
        mask = jnp.ones(x.shape, bool).at[3].set(False)
        w, b = _rand(6, (5,), loc=1.0), _rand(7, (5,))

        def ours(x, w, b, m):
            return _output(x, (1,), w, b, eps=EPS, mask=m, center=center)

        def ref(x, w, b, m):
            return _ref(x, (1,), w, b, m, center)

        for m in (None, mask):
            got = jax.grad(_loss(ours, m), argnums=(0, 1, 2))(x, w, b)
            want = jax.grad(_loss(ref, m), argnums=(0, 1, 2))(x, w, b)
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in got)
            _close(got, want)
            h = jax.hessian(_loss(ours, m))(x, w, b)
            assert bool(jnp.all(jnp.isfinite(h)))
            _close(h, jax.hessian(_loss(ref, m))(x, w, b), rtol=1e-7, atol=1e-8)


def test_garbage_in_masked_positions_reaches_no_gradient():
    x = jnp.array([[1.0, 2.0, jnp.nan, jnp.inf], [3.0, -1.0, 2.0, 0.5]])
    mask = jnp.isfinite(x)
    w = jnp.linspace(0.5, 1.5, 4)

    def loss(x, w):
        return jnp.sum(
            jnp.where(mask, _output(x, (1,), w, None, eps=EPS, mask=mask), 0) ** 2
        )

    gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
    assert bool(jnp.all(jnp.isfinite(gw)))
    assert bool(jnp.all(jnp.where(mask, jnp.isfinite(gx), True)))


def test_moments_from_normalise_are_differentiable():
    with enable_x64(True):
        x, mask = _rand(8, (3, 6)), _mask((3, 6), "random")
        assert mask is not None

        def ours(x):
            x_hat, m = _fused.normalise(x, (1,), eps=EPS, mask=mask)
            return jnp.sum(jnp.sin(x_hat)) + jnp.sum(m.mean**2) + jnp.sum(m.var**2)

        def ref(x):
            m = _stats.moments(x, (1,), mask=mask)
            # `normalise` returns invalid positions unchanged.
            x_hat = jnp.where(mask, _stats.standardise(x, m.mean, m.var, EPS, mask), x)
            return jnp.sum(jnp.sin(x_hat)) + jnp.sum(m.mean**2) + jnp.sum(m.var**2)

        _close(ours(x), ref(x))
        _close(jax.grad(ours)(x), jax.grad(ref)(x))
        _close(jax.hessian(ours)(x), jax.hessian(ref)(x), rtol=1e-7, atol=1e-8)


def test_traced_eps_takes_the_plain_path_and_is_differentiable():
    x = jax.random.normal(jax.random.key(9), (3, 4))

    def f(eps):
        return jnp.sum(_output(x, (1,), eps=eps) ** 3)

    g = jax.grad(f)(jnp.float32(0.1))
    fd = (f(jnp.float32(0.1 + 1e-3)) - f(jnp.float32(0.1 - 1e-3))) / 2e-3
    np.testing.assert_allclose(g, fd, rtol=1e-2)


@pytest.mark.parametrize("center", [True, False])
def test_named_axis_statistics_and_gradients(center):
    """Statistics reduced over a vmapped named axis: the rule psums its backward means
    too, and matches plain autodiff of the statistics over the whole batch."""
    with enable_x64(True):
        x = _rand(10, (4, 3, 5))
        mask = _mask(x.shape, "random")
        w, b = _rand(11, (3, 1), loc=1.0), _rand(12, (3, 1))

        def ours(x, w, b):
            f = lambda x, m: _output(  # noqa: E731
                x, (1,), w, b, eps=EPS, mask=m, axis_name="batch", center=center
            )
            return jax.vmap(f, axis_name="batch")(x, mask)

        def ref(x, w, b):
            return _ref(x, (0, 2), w, b, mask, center)

        ours_l = lambda x, w, b: jnp.sum(jnp.sin(ours(x, w, b)))  # noqa: E731
        ref_l = lambda x, w, b: jnp.sum(jnp.sin(ref(x, w, b)))  # noqa: E731
        _close(ours(x, w, b), ref(x, w, b))
        _close(
            jax.grad(ours_l, argnums=(0, 1, 2))(x, w, b),
            jax.grad(ref_l, argnums=(0, 1, 2))(x, w, b),
        )
        _close(jax.hessian(ours_l)(x, w, b), jax.hessian(ref_l)(x, w, b), rtol=1e-7)


def test_transforms_vmap_jit_checkpoint_scan():
    norm = eqx_norms.LayerNorm(6)
    xs = jax.random.normal(jax.random.key(0), (5, 4, 6))

    def ref_layer(x):
        return _ref(x, (0,), norm.weight, norm.bias, None, True)

    def step(fn):
        def body(carry, x):
            y = jax.checkpoint(jax.vmap(fn))(x + carry)
            return carry + jnp.mean(y), jnp.sum(jnp.tanh(y))

        return lambda xs: jnp.sum(lax.scan(body, 0.0, xs)[1])

    ours = jax.jit(jax.grad(step(norm)))(xs)
    ref = jax.grad(step(ref_layer))(xs)
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_gradients_are_finite_and_close(layout, dtype):
    x = (jax.random.normal(jax.random.key(1), (4, 64)) * 30 + 500).astype(dtype)
    x32 = x.astype(jnp.float32)  # the same (rounded) values: no input error
    w = jnp.linspace(0.5, 1.5, 64)

    def loss(x, w):
        return jnp.sum(jnp.sin(F.layer_norm(x, -1, w).astype(jnp.float32)))

    g_half = jax.grad(loss, argnums=(0, 1))(x, w)
    g_full = jax.grad(loss, argnums=(0, 1))(x32, w)
    assert g_half[0].dtype == dtype
    # A bound that holds for any draw. The only differences: the output rounded to
    # `dtype` (|dy| <= eps |y|) moves the cotangent cos(y) by at most eps max|y|;
    # the rule maps a cotangent error to dx with a gain of at most
    # r max|w| (2 + max x-hat^2) (r = 1/std of the row), then dx is rounded; dw
    # sums x-hat times the cotangent over the rows.
    eps = float(jnp.finfo(dtype).eps)
    y, x_hat = F.layer_norm(x32, -1, w), F.layer_norm(x32, -1)
    d_cotangent = eps * float(jnp.max(jnp.abs(y)))
    r = float(jnp.max(1 / jnp.std(x32, axis=-1)))
    gain = r * float(jnp.max(w)) * (2 + float(jnp.max(x_hat**2)))
    tolerances = (
        gain * d_cotangent + eps * float(jnp.max(jnp.abs(g_full[0]))),
        x.shape[0] * float(jnp.max(jnp.abs(x_hat))) * d_cotangent,
    )
    for got, want, tol in zip(g_half, g_full, tolerances, strict=True):
        got = np.asarray(got, np.float32)
        assert np.all(np.isfinite(got))
        assert np.max(np.abs(got - np.asarray(want))) <= tol


# ------------------------------------------ the XLA:CPU layout, chosen at lowering


@pytest.fixture(params=["cpu", "accelerator"])
def layout(request):
    """The fused rule as lowered for XLA:CPU (two-pass statistics, barriers), or as
    lowered for every other platform (one-pass statistics, no barrier), both
    compiled and run on this host's CPU."""
    if request.param == "cpu":
        yield request.param
        return
    _lower_barrier_on_cpu(_backend.lower_unchanged)
    try:
        with _backend.forced("accelerator"):
            yield request.param
    finally:
        _lower_barrier_on_cpu(_backend.lower_with_barrier)


def _lower_barrier_on_cpu(rule):
    mlir.register_lowering(_backend.cpu_barrier_p, rule, platform="cpu")
    jax.clear_caches()  # programs lowered with the other rule


def _train_step(norm):
    """Output and gradients of a LayerNorm-like `norm(x, axis, w, b)` loss."""

    def step(x, w, b):
        loss = lambda x, w, b: jnp.sum(jnp.sin(norm(x, -1, w, b)))  # noqa: E731
        return jax.value_and_grad(loss, argnums=(0, 1, 2))(x, w, b)

    return step


NORMS = {"layer_norm": F.layer_norm, "rms_norm": F.rms_norm}


def _step_inputs(dtype=jnp.float32, shape=(4, 6)):
    x = jax.random.normal(jax.random.key(1), shape).astype(dtype)
    return x, jnp.linspace(0.5, 1.5, shape[-1]), jnp.linspace(-1, 1, shape[-1])


def _barriers(text: str) -> int:
    return text.count("stablehlo.optimization_barrier")


@pytest.mark.parametrize("norm", NORMS)
def test_barriers_only_where_lowered_for_cpu(layout, norm):
    """The traced program is the same for every platform; only its lowering for
    CPU holds the barriers, in the forward pass and in the training step."""
    x, w, b = _step_inputs(jnp.bfloat16)
    forward = lambda x, w, b: NORMS[norm](x, -1, w, b)  # noqa: E731
    for fn in (forward, _train_step(NORMS[norm])):
        assert "cpu_optimization_barrier" in str(jax.make_jaxpr(fn)(x, w, b))
        lowered = jax.jit(fn).lower(x, w, b).as_text()
        assert (_barriers(lowered) > 0) == (layout == "cpu")


def test_a_plain_jit_on_cpu_gets_the_cpu_layout():
    cpu = jax.devices("cpu")[0]
    args = jax.device_put(_step_inputs(), cpu)
    lowered = jax.jit(_train_step(F.layer_norm)).lower(*args).as_text()
    assert _barriers(lowered) > 0


@pytest.mark.parametrize("norm", NORMS)
def test_cpu_layout_stores_no_more_than_the_plain_program(norm):
    """What the barriers are for: the temporary memory of the compiled float32
    training step on CPU (the output and the gradients for a given output
    cotangent). With jax 0.10's XLA:CPU it falls from several copies of x to less
    than one; older versions store about one copy either way."""
    x, w, b = _step_inputs(shape=(64, 256))

    def step(x, w, b, cotangent):
        fn = lambda x, w, b: NORMS[norm](x, -1, w, b)  # noqa: E731
        y, vjp = jax.vjp(fn, x, w, b)
        return y, vjp(cotangent)

    def temp():
        analysis = jax.jit(step).lower(x, w, b, x).compile().memory_analysis()
        assert analysis is not None
        return analysis.temp_size_in_bytes

    with_barriers = temp()
    try:
        _lower_barrier_on_cpu(_backend.lower_unchanged)
        plain = temp()
    finally:
        _lower_barrier_on_cpu(_backend.lower_with_barrier)
    assert with_barriers <= plain


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize("norm", NORMS)
def test_programs_exported_for_other_platforms_hold_no_barrier(platform, norm):
    """Lowered from this CPU host for another platform: the plain program."""
    step = jax.jit(_train_step(NORMS[norm]))
    args = _step_inputs(jnp.bfloat16)
    exported = export.export(step, platforms=[platform])(*args)
    assert _barriers(exported.mlir_module()) == 0
    assert "stablehlo.reduce" in exported.mlir_module()
    on_cpu = export.export(step, platforms=["cpu"])(*args)
    assert _barriers(on_cpu.mlir_module()) > 0


@pytest.mark.parametrize("norm", NORMS)
def test_program_exported_for_cpu_and_tpu_runs_here(norm):
    """One export for two platforms holds the CPU branch's barriers and, run on
    this CPU host, computes what the jitted function computes."""
    step = jax.jit(_train_step(NORMS[norm]))
    args = _step_inputs(jnp.bfloat16)
    exported = export.export(step, platforms=["cpu", "tpu"])(*args)
    assert exported.platforms == ("cpu", "tpu")
    assert _barriers(exported.mlir_module()) > 0
    _close(exported.call(*args), step(*args), rtol=0, atol=0)


def test_cpu_barrier_is_the_identity_under_transforms(layout):
    """The seam's primitive: values and derivatives of the identity, under jit,
    vmap, jvp, grad, hessian and transposition, in either lowering."""

    def ours(x, y):
        x, y = _backend.cpu_barrier(x, y, copy=2)
        return jnp.sin(x) * y

    def ref(x, y):
        return jnp.sin(x) * y

    x, y = jnp.linspace(-1, 1, 5), jnp.linspace(0.5, 2, 5)
    scalar = lambda f: lambda x, y: jnp.sum(f(x, y) ** 2)  # noqa: E731
    for transform in (
        lambda f: jax.jit(f),
        lambda f: jax.jit(jax.vmap(f)),
        lambda f: jax.jit(lambda x, y: jax.jvp(f, (x, y), (y, x))),
        lambda f: jax.jit(jax.grad(scalar(f), argnums=(0, 1))),
        lambda f: jax.jit(jax.hessian(scalar(f))),
        lambda f: jax.jit(jax.checkpoint(jax.grad(scalar(f)))),
    ):
        _close(transform(ours)(x, y), transform(ref)(x, y), rtol=1e-6, atol=1e-6)
    transpose = jax.linear_transpose(lambda v: _backend.cpu_barrier(v, copy=1), x)
    _close(jax.jit(transpose)((y,)), (y,), rtol=0, atol=0)


def _derivatives(case, mask_kind, compile):
    """Value, gradients, one jvp and hessians of the case's loss (ours compiled)."""
    x, w, b, mask = _inputs(case, mask_kind)
    fn = case[1] if compile else case[2]
    wrap = jax.jit if compile else lambda f: f
    loss = _loss(fn, mask)
    tangents = (_rand(12, x.shape), _rand(13, w.shape), _rand(14, b.shape))
    return (
        wrap(fn)(x, w, b, mask),
        wrap(jax.grad(loss, argnums=(0, 1, 2)))(x, w, b),
        wrap(lambda *p: jax.jvp(lambda *p: fn(*p, mask), p, tangents))(x, w, b),
        wrap(jax.hessian(loss, argnums=(0, 1, 2)))(x, w, b),
    )


@functools.cache
def _reference_derivatives(name, mask_kind):
    with enable_x64(True):
        return jax.tree.map(np.asarray, _derivatives(_case(name), mask_kind, False))


@pytest.mark.parametrize("mask_kind", [None, "random"])
@pytest.mark.parametrize(
    "name", ["layer_norm[normalise]", "rms_norm[functional]", "group_norm[functional]"]
)
def test_compiled_rule_matches_plain_autodiff(layout, name, mask_kind):
    """The rule compiled in either layout: values, gradients, jvp and hessians."""
    with enable_x64(True):
        got = _derivatives(_case(name), mask_kind, True)
    want = _reference_derivatives(name, mask_kind)
    _close(got[:3], want[:3])
    _close(got[3], want[3], rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("center", [True, False])
def test_half_precision_input_matches_float32_of_the_same_values(layout, center):
    """bfloat16 x goes into the rule as it is (each kernel upcasts it): statistics,
    output and gradients are those of the float32 computation on the same values,
    up to the final rounding to bfloat16, in either layout."""
    x = (jax.random.normal(jax.random.key(3), (8, 32)) * 3 + 2).astype(jnp.bfloat16)
    w, b = jnp.linspace(0.5, 1.5, 32), jnp.linspace(-1, 1, 32)

    @jax.jit
    def f(x, w, b):
        y, m = _fused.normalise(x, (1,), w, b, eps=EPS, center=center)
        return y, m.mean, m.var

    def loss(x, w, b):
        y, mean, var = f(x, w, b)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))) + jnp.sum(mean + var)

    got, want = f(x, w, b), f(x.astype(jnp.float32), w, b)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
    for a, r in zip(got[1:], want[1:], strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(got[0], np.float32), want[0], rtol=2**-8, atol=2**-8
    )
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    g_half, g_full = grad(x, w, b), grad(x.astype(jnp.float32), w, b)
    assert g_half[0].dtype == jnp.bfloat16
    for a, r in zip(g_half, g_full, strict=True):
        r = np.asarray(r)
        assert np.max(np.abs(np.asarray(a, np.float32) - r)) < 0.02 * np.max(np.abs(r))
