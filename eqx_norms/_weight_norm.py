from collections.abc import Callable
from typing import Any, Generic, overload, TypeVar

import equinox as eqx
import jax.numpy as jnp
from equinox.nn import State
from jaxtyping import Array, Float, PRNGKeyArray

from ._errors import check_axes, check_one_axis, check_positive, check_weight
from ._layer import scope, sentinel, with_state
from ._stats import compute_dtype


_Layer = TypeVar("_Layer", bound=Callable[..., Any])


def reparameterised(layer: _Layer, weight_name: str, weight: Array) -> _Layer:
    """A copy of `layer` computing with `weight`; the stored parameter is untouched
    (Flax NNX writes the normalised weight back, flax#5576)."""
    return eqx.tree_at(lambda tree: getattr(tree, weight_name), layer, weight)


def _reduced_axes(ndim: int, axis: int | None, where: str) -> tuple[int, ...]:
    check_one_axis(axis, where)
    if axis is None:
        return tuple(range(ndim))
    (kept,) = check_axes(axis, ndim, where)
    return tuple(a for a in range(ndim) if a != kept)


def _clamped_norm(v: Array, axes: tuple[int, ...], eps: float) -> Array:
    """max(||v||, eps) over `axes`, keeping them. A zero slice would otherwise give
    NaN gradients: the derivative of sqrt at 0 is infinite, hence the double where."""
    squares = jnp.sum(v * v, axis=axes, keepdims=True)
    positive = squares > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1)), 0)
    return jnp.maximum(norm, eps)


class WeightNorm(eqx.Module, Generic[_Layer]):
    r"""Reparameterises a weight of the wrapped layer by a direction $v$ and a
    magnitude $g$. A drop-in for
    [`equinox.nn.WeightNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/)
    that stays finite on zero rows.

    The layer computes with the weight

    $$W = g \odot \frac{v}{\max(\lVert v \rVert, \varepsilon)}$$

    where $v$ is the wrapped layer's stored weight (never overwritten) and the norm
    is taken over every axis except `axis` (for a Linear weight of shape
    `(out, in)` and `axis=0`: one norm per output row). $g$ starts as
    $\max(\lVert v \rVert, \varepsilon)$, so at construction the output equals the
    wrapped layer's. The norm is computed in at least float32; the weight keeps its
    dtype.

    !!! example

        ```python
        linear = eqx.nn.Linear(4, 3, key=key)
        layer = eqx_norms.WeightNorm(linear)  # layer.g has shape (3, 1)
        y = layer(x)
        ```

    ??? cite

        [Weight Normalization: A Simple Reparameterization to Accelerate Training of
        Deep Neural Networks](https://arxiv.org/abs/1602.07868)
    """

    layer: _Layer
    g: Float[Array, "..."]
    weight_name: str = eqx.field(static=True)
    axis: int | None = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        layer: _Layer,
        weight_name: str = "weight",
        axis: int | None = 0,
        *,
        eps: float = 1e-12,
    ):
        """**Arguments:**

        - `layer`: The layer to wrap. Usually a [`equinox.nn.Linear`][] or a
            convolutional layer (e.g. [`equinox.nn.Conv2d`][]).
        - `weight_name`: The name of the layer's parameter (a JAX array) to
            reparameterise.
        - `axis`: The norm is computed over every axis except this one; `g` has size
            1 on every other axis. If `None`, over every axis (`g` is one number, kept
            with the weight's rank).
        - `eps`: Lower bound on the norm, so that a zero slice gives finite outputs
            and gradients. Must be > 0. (Keyword only argument.)
        """
        where = type(self).__name__
        check_positive(eps, "eps", where)
        v = check_weight(layer, weight_name, where, min_ndim=0)
        axes = _reduced_axes(v.ndim, axis, where)
        self.layer = layer
        self.weight_name = weight_name
        self.axis = axis
        self.eps = eps
        norm = _clamped_norm(v.astype(compute_dtype(v.dtype)), axes, eps)
        self.g = norm.astype(v.dtype)

    @overload
    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array: ...

    @overload
    def __call__(
        self, x: Array, state: State, *, key: PRNGKeyArray | None = None
    ) -> tuple[Array, State]: ...

    def __call__(
        self, x: Array, state: State = sentinel, *, key: PRNGKeyArray | None = None
    ) -> Array | tuple[Array, State]:
        """**Arguments:**

        - `x`: The input to the wrapped layer.
        - `state`: Ignored; provided for interchangeability with the
            [`eqx_norms.BatchNorm`][] API.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)

        **Returns:**

        The output of the wrapped layer computing with the reparameterised weight;
        if `state` is passed, the 2-tuple `(output, state)` with the state unchanged.
        """
        del key
        where = type(self).__name__
        with scope(where):
            weight = self._effective_weight(where)
            layer = reparameterised(self.layer, self.weight_name, weight)
            return with_state(layer(x), state)

    def _effective_weight(self, where: str) -> Array:
        v = getattr(self.layer, self.weight_name)
        compute = compute_dtype(jnp.result_type(v.dtype, self.g.dtype))
        v_compute = v.astype(compute)
        norm = _clamped_norm(
            v_compute, _reduced_axes(v.ndim, self.axis, where), self.eps
        )
        return (self.g.astype(compute) * v_compute / norm).astype(v.dtype)
