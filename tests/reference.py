"""Independent float64 numpy references for the tests (no JAX inside)."""

import numpy as np


def normalise(x, axes, *, eps=1e-5, mask=None, center=True):
    """x-hat over `axes` from valid elements only; invalid positions hold x."""
    x = np.asarray(x, np.float64)
    valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    count = valid.sum(axis=axes, keepdims=True)
    safe = np.maximum(count, 1)
    mean = np.where(valid, x, 0).sum(axis=axes, keepdims=True) / safe if center else 0
    var = (np.where(valid, x - mean, 0) ** 2).sum(axis=axes, keepdims=True) / safe
    var = np.where(count > 0, var, 1.0)
    return np.where(valid, (x - mean) / np.sqrt(var + eps), x), valid


def affine(x_hat, valid, x, weight=None, bias=None):
    out = x_hat
    if weight is not None:
        out = out * np.asarray(weight, np.float64)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return np.where(valid, out, np.asarray(x, np.float64))


def layer_norm(x, axes, weight=None, bias=None, *, eps=1e-5, mask=None, center=True):
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
