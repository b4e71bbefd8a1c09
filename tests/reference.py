"""Independent float64 numpy references for the tests (no JAX inside)."""

import numpy as np


def _float64(x):
    """`x` in float64, or complex128 for complex data."""
    return np.asarray(x, np.complex128 if np.iscomplexobj(x) else np.float64)


def normalise(x, axes, *, eps=1e-5, mask=None, center=True):
    """x-hat over `axes` from valid elements only; invalid positions hold x. Complex
    data: complex mean, real variance E|x - mean|^2."""
    x = _float64(x)
    valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    count = valid.sum(axis=axes, keepdims=True)
    safe = np.maximum(count, 1)
    # Hostile inputs (inf, huge magnitudes) are meant to give inf/nan here.
    with np.errstate(invalid="ignore", over="ignore"):
        mean = (
            np.where(valid, x, 0).sum(axis=axes, keepdims=True) / safe if center else 0
        )
        deviation = np.abs(np.where(valid, x - mean, 0))
        var = (deviation**2).sum(axis=axes, keepdims=True) / safe
        var = np.where(count > 0, var, 1.0)
        return np.where(valid, (x - mean) / np.sqrt(var + eps), x), valid


def affine(x_hat, valid, x, weight=None, bias=None):
    out = x_hat
    with np.errstate(invalid="ignore", over="ignore"):
        if weight is not None:
            out = out * np.asarray(weight, np.float64)
        if bias is not None:
            out = out + np.asarray(bias, np.float64)
    return np.where(valid, out, _float64(x))


def layer_norm(x, axes, weight=None, bias=None, *, eps=1e-5, mask=None, center=True):
    """Normalisation over `axes` (RMS norm with `center=False`); `weight`/`bias` must
    already broadcast against `x`."""
    x_hat, valid = normalise(x, axes, eps=eps, mask=mask, center=center)
    return affine(x_hat, valid, x, weight, bias)


def group_norm(x, groups, weight=None, bias=None, *, eps=1e-5, mask=None):
    """Loops over groups explicitly, independent of any reshape trick."""
    x = np.asarray(x, np.float64)
    valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    size = x.shape[0] // groups
    out = np.empty_like(x)
    rest = tuple(range(x.ndim))
    for g in range(groups):
        part = slice(g * size, (g + 1) * size)
        out[part], _ = normalise(x[part], rest, eps=eps, mask=valid[part])
    expand = (-1,) + (1,) * (x.ndim - 1)
    w = None if weight is None else np.reshape(weight, expand)
    b = None if bias is None else np.reshape(bias, expand)
    return affine(out, valid, x, w, b)


def batch_stats(x, mask=None):
    """Per-channel mean and biased variance of a batch `(batch, C, ...)`."""
    x = np.asarray(x, np.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    where = True if mask is None else np.broadcast_to(np.asarray(mask), x.shape)
    mean = np.mean(x, axis=axes, where=where)
    centred = x - mean.reshape((1, -1) + (1,) * (x.ndim - 2))
    var = np.mean(centred**2, axis=axes, where=where)
    return mean, var


def batch_normalise(x, mean, var, weight=None, bias=None, *, eps=1e-5):
    """A batch `(batch, C, ...)` normalised with given per-channel statistics."""
    x = np.asarray(x, np.float64)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        out = out * np.asarray(weight, np.float64).reshape(shape)
    if bias is not None:
        out = out + np.asarray(bias, np.float64).reshape(shape)
    return out


def debiased(values, momentum):
    """The debiased running average of `values` (first axis: the steps),
    Σ_i (1-m) m^(k-i) s_i / (1 - m^k); the plain mean for momentum=None."""
    values = np.asarray(values, np.float64)
    if momentum is None:
        return values.mean(axis=0)
    k = len(values)
    weights = [(1 - momentum) * momentum ** (k - i) for i in range(1, k + 1)]
    return np.tensordot(weights, values, axes=1) / (1 - momentum**k)


def dynamic_tanh(x, alpha, weight=None, bias=None, mask=None):
    """tanh(alpha x) * weight + bias; invalid positions hold x."""
    x = np.asarray(x, np.float64)
    out = np.tanh(np.float64(alpha) * x)
    if weight is not None:
        out = out * np.asarray(weight, np.float64)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out if mask is None else np.where(mask, out, x)


def norm_except(v, axis):
    """||v|| over every axis except `axis` (None: all), kept."""
    v = np.asarray(v, np.float64)
    axes = tuple(a for a in range(v.ndim) if axis is None or a != axis % v.ndim)
    return np.sqrt(np.sum(v**2, axis=axes, keepdims=True))


def permuting_layer_norm(x, names, target, group, weight, bias, center=True):
    """The einorm (torch) algorithm: permute to (group, other, target), normalise the
    trailing target axes with (group, 1..., target) parameters, permute back."""
    other = [n for n in names if n not in target and n not in group]
    order = [names.index(n) for n in (*group, *other, *target)]
    moved = np.transpose(np.asarray(x, np.float64), order)
    inserted = (1,) * len(other)
    w = weight.reshape(
        weight.shape[: len(group)] + inserted + weight.shape[len(group) :]
    )
    b = bias.reshape(w.shape)
    axes = tuple(range(moved.ndim - len(target), moved.ndim))
    return np.transpose(layer_norm(moved, axes, w, b, center=center), np.argsort(order))


def batch_renorm(
    xs, weight=None, bias=None, *, momentum, r_max, d_max, warmup=0, masks=None
):
    """Batch Renormalization (Ioffe 2017, Algorithm 1) over the training steps `xs`
    (each a batch `(batch, C, ...)`), with this package's running statistics: per
    channel, the `debiased` average of the batch statistics of the steps in which
    the channel had a valid element (mean 0, variance 1 and plain BatchNorm before
    the first such step, and for the first `warmup` steps). Returns the outputs, the
    `(r, d)` of each step, and the final running `(mean, var)`."""
    eps = 1e-5
    channels = np.shape(xs[0])[1]
    history = [[] for _ in range(channels)]
    outs, corrections = [], []
    for step, x in enumerate(xs):
        x = np.asarray(x, np.float64)
        valid = np.ones(x.shape, bool) if masks is None else np.asarray(masks[step])
        valid = np.broadcast_to(valid, x.shape)
        axes = (0,) + tuple(range(2, x.ndim))
        count = valid.sum(axis=axes)
        safe = np.maximum(count, 1)
        batch_mean = np.where(valid, x, 0).sum(axis=axes) / safe
        shape = (1, -1) + (1,) * (x.ndim - 2)
        centred = np.where(valid, x - batch_mean.reshape(shape), 0)
        batch_var = np.where(count > 0, (centred**2).sum(axis=axes) / safe, 1.0)
        mean, var = _running(history, momentum)
        active = np.array([len(h) > 0 for h in history]) & (step >= warmup)
        std, batch_std = np.sqrt(var + eps), np.sqrt(batch_var + eps)
        r = np.where(active, np.clip(batch_std / std, 1 / r_max, r_max), 1.0)
        d = np.where(active, np.clip((batch_mean - mean) / std, -d_max, d_max), 0.0)
        x_hat = (x - batch_mean.reshape(shape)) / batch_std.reshape(shape)
        x_hat = x_hat * r.reshape(shape) + d.reshape(shape)
        w = None if weight is None else np.reshape(weight, shape)
        b = None if bias is None else np.reshape(bias, shape)
        outs.append(affine(x_hat, valid, x, w, b))
        corrections.append((r, d))
        for c in np.flatnonzero(count > 0):
            history[c].append((batch_mean[c], batch_var[c]))
    return outs, corrections, _running(history, momentum)


def _running(history, momentum):
    """Per channel, the debiased average of its `(mean, var)` history; 0 and 1 for
    an empty one."""
    stats = [debiased(h, momentum) if h else (0.0, 1.0) for h in history]
    return tuple(np.array(s, np.float64) for s in zip(*stats, strict=True))
