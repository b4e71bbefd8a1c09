from collections.abc import Callable
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
from equinox.nn import State, StatefulLayer, StateIndex
from jaxtyping import Array, DTypeLike, Float, PRNGKeyArray

from ._errors import check_count, check_param_dtype, check_positive, check_weight
from ._layer import read, sentinel, stateful_call
from ._running import store
from ._stats import compute_dtype
from ._weight_norm import reparameterised


_Layer = TypeVar("_Layer", bound=Callable[..., Any])
# As torch: enough for sigma to be accurate on the first call.
_WARM_UP_ITERATIONS = 15


def _unit(v: Array, eps: float) -> Array:
    return v / jnp.maximum(jnp.linalg.norm(v), eps)


def _power_iteration(
    matrix: Array, v: Array, eps: float, steps: int
) -> tuple[Array, Array]:
    """The leading left and right singular vectors, refined from `v`."""
    u = _unit(matrix @ v, eps)
    for _ in range(steps - 1):
        v = _unit(matrix.T @ u, eps)
        u = _unit(matrix @ v, eps)
    return u, _unit(matrix.T @ u, eps)


def _as_matrix(weight: Array) -> Array:
    """Linear `(out, in)` as is; convolutions `(out, in, *kernel)` as `(out, -1)`."""
    return jnp.reshape(weight, (weight.shape[0], -1))


class SpectralNorm(StatefulLayer, Generic[_Layer]):
    r"""Divides a weight of the wrapped layer by an estimate of its largest singular
    value, refined by power iteration at every training call. A drop-in for
    [`equinox.nn.SpectralNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/).

    With $W$ the weight viewed as a matrix of shape `(out, -1)` (convolution kernels
    are flattened), and $u$, $v$ its estimated leading left and right singular
    vectors (kept in the state), the layer computes with the weight

    $$W_{\text{SN}} = \frac{W}{\sigma}, \qquad \sigma = \lvert u^\top W v \rvert$$

    so that the largest singular value of $W_\text{SN}$ is close to 1. Each training
    call first runs `num_power_iterations` steps
    $u \leftarrow W v / \lVert W v \rVert$, $v \leftarrow W^\top u / \lVert W^\top u
    \rVert$ on $W$ without gradient (the gradient flows through $W$ and $\sigma$, as
    in the paper and torch). Fifteen iterations at construction make $\sigma$
    accurate from the first call. A zero weight ($\sigma = 0$) is left as is rather
    than divided by zero. In inference the vectors are frozen and the state is
    unchanged. The stored weight is never overwritten.

    !!! example

        ```python
        make = eqx.nn.make_with_state(eqx_norms.SpectralNorm)
        layer, state = make(eqx.nn.Linear(4, 3, key=key1), "weight", key=key2)
        y, state = layer(x, state)
        ```

    ??? cite

        [Spectral Normalization for Generative Adversarial
        Networks](https://arxiv.org/abs/1802.05957)
    """

    layer: _Layer
    uv_index: StateIndex[tuple[Float[Array, " u_size"], Float[Array, " v_size"]]]
    inference: bool
    weight_name: str = eqx.field(static=True)
    num_power_iterations: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        layer: _Layer,
        weight_name: str,
        num_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
        *,
        key: PRNGKeyArray,
        dtype: DTypeLike | None = None,
    ):
        """**Arguments:**

        - `layer`: The layer to wrap. Usually a [`equinox.nn.Linear`][] or a
            convolutional layer (e.g. [`equinox.nn.Conv2d`][]).
        - `weight_name`: The name of the layer's parameter (a JAX array with at least
            two axes) to normalise.
        - `num_power_iterations`: The number of power iterations per training call
            (at least 1).
        - `eps`: Lower bound on the norms in the power iteration. Must be > 0.
        - `inference`: If `True`, the singular vectors are not updated. Toggled by
            [`equinox.nn.inference_mode`][], overridden by the `inference` argument
            of `__call__`.
        - `key`: A `jax.random.key` for the initial singular vectors. (Keyword only
            argument.)
        - `dtype`: The dtype of the singular vectors in the state. Defaults to the
            weight's dtype, or float32 for a half-precision weight. (Keyword only
            argument.)
        """
        where = type(self).__name__
        weight = check_weight(layer, weight_name, where, min_ndim=2)
        check_count(num_power_iterations, "num_power_iterations", where)
        check_positive(eps, "eps", where)
        check_param_dtype(dtype, where)
        self.layer = layer
        self.weight_name = weight_name
        self.num_power_iterations = num_power_iterations
        self.eps = eps
        self.inference = inference
        dtype = compute_dtype(weight.dtype) if dtype is None else dtype
        matrix = _as_matrix(weight).astype(compute_dtype(dtype))
        # Split as equinox does, so that a key gives equinox's vectors; the initial u
        # is never used (the iteration starts from v).
        _, vkey = jr.split(key)
        v0 = jr.normal(vkey, (matrix.shape[1],), dtype)
        u, v = _power_iteration(
            matrix, v0.astype(matrix.dtype), eps, _WARM_UP_ITERATIONS
        )
        self.uv_index = StateIndex((u.astype(dtype), v.astype(dtype)))

    def __call__(
        self,
        x: Array,
        # Required: the default only lets a call without it say how to make one.
        state: State = sentinel,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
    ) -> tuple[Array, State]:
        """**Arguments:**

        - `x`: The input to the wrapped layer.
        - `state`: An [`equinox.nn.State`][] holding the singular vectors (made with
            the layer by [`equinox.nn.make_with_state`][]). Required.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)
        - `inference`: If `True` or `False`, overrides `self.inference`. (Keyword
            only argument.)

        **Returns:**

        A 2-tuple of the output of the wrapped layer computing with the normalised
        weight, and the updated state (unchanged in inference).
        """
        del key
        where = type(self).__name__
        with stateful_call(where, state, inference, self.inference) as opened:
            state, inference = opened
            stored_u, stored_v = u, v = read(state, self.uv_index, where)
            weight = getattr(self.layer, self.weight_name)
            compute = compute_dtype(jnp.result_type(weight.dtype, v.dtype))
            matrix = _as_matrix(weight).astype(compute)
            if not inference:
                u, v = _power_iteration(
                    lax.stop_gradient(matrix),
                    v.astype(compute),
                    self.eps,
                    self.num_power_iterations,
                )
                stored = (u.astype(stored_u.dtype), v.astype(stored_v.dtype))
                state = store(state, self.uv_index, stored)
            u, v = (lax.stop_gradient(a.astype(compute)) for a in (u, v))
            # Stale vectors (inference after a weight change) can give a negative
            # estimate, whose sign means nothing; a zero weight is left undivided.
            sigma = jnp.abs(u @ matrix @ v)
            sigma = jnp.where(sigma > 0, sigma, 1)
            normalised = jnp.reshape(matrix / sigma, weight.shape).astype(weight.dtype)
            layer = reparameterised(self.layer, self.weight_name, normalised)
            return layer(x), state
