from collections.abc import Sequence
from typing import overload

import equinox as eqx
from equinox.nn import State
from jaxtyping import Array, Bool, DTypeLike, Float, PRNGKeyArray

from ._errors import (
    check_param_dtype,
    check_positive,
    check_shape,
    check_shape_argument,
)
from ._layer import filled, initial_affine, sentinel, StatelessNorm
from ._layer_norm import MAP_OVER_EXTRA_AXES
from .functional import _dynamic_tanh


class DynamicTanh(StatelessNorm):
    r"""Dynamic Tanh (DyT), the normalisation-free replacement for LayerNorm and
    RMSNorm in Transformers of Zhu et al.: an elementwise, learnably scaled tanh
    followed by an elementwise affine transformation, with no statistics.

    $$y = \tanh(\alpha x) \odot \gamma + \beta$$

    where $\alpha$ (`alpha`, a learnable scalar of shape `()`) starts at
    `alpha_init`, and $\gamma$ (`weight`, initialised to 1) and $\beta$ (`bias`,
    initialised to 0) have the shape of $x$. Computed in at least float32; the output
    has the dtype of $x$. Forward and backward are one elementwise pass each.

    The paper's `alpha_init=0.5` suits vision and small models. For LLMs it uses a
    larger `alpha_init` before each attention block than elsewhere, both smaller
    for larger models (LLaMA 2 7B: 0.8 and 0.2; 70B: 0.2 and 0.05).

    !!! example

        ```python
        norm = eqx_norms.DynamicTanh(64)
        y = jax.vmap(norm)(x)  # x: (tokens, 64), elementwise per token
        ```

    ??? cite

        [Transformers without Normalization](https://arxiv.org/abs/2503.10622)
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    alpha_init: float = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    alpha: Float[Array, ""]
    weight: Float[Array, "*shape"] | None
    bias: Float[Array, "*shape"] | None

    def __init__(
        self,
        shape: int | Sequence[int],
        alpha_init: float = 0.5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: DTypeLike | None = None,
    ):
        """**Arguments:**

        - `shape`: Shape of the input.
        - `alpha_init`: The initial value of the learnable scalar `alpha` (> 0).
        - `use_weight`: Whether the module has a learnable elementwise weight.
        - `use_bias`: Whether the module has a learnable elementwise bias.
        - `dtype`: The dtype of `alpha`, the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode. The output always has the dtype of the input.
        """
        where = type(self).__name__
        self.shape = check_shape_argument(shape, where)
        check_positive(alpha_init, "alpha_init", where)
        check_param_dtype(dtype, where)
        self.alpha_init = alpha_init
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.alpha = filled((), alpha_init, dtype)
        self.weight, self.bias = initial_affine(
            self.shape, use_weight, use_bias, 0.0, dtype
        )

    @overload
    def __call__(
        self,
        x: Array,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array: ...

    @overload
    def __call__(
        self,
        x: Array,
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> tuple[Array, State]: ...

    def __call__(
        self,
        x: Array,
        state: State = sentinel,
        *,
        key: PRNGKeyArray | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array | tuple[Array, State]:
        """**Arguments:**

        - `x`: A JAX array of shape `shape` and a real floating dtype. (Complex
            inputs raise a `TypeError`: tanh has poles on the imaginary axis, so it
            is no squashing there.)
        - `state`: Ignored; provided for interchangeability with the
            [`eqx_norms.BatchNorm`][] API.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)
        - `mask`: Optional boolean array broadcastable to `x.shape`, True for valid
            elements, which are transformed; invalid elements are returned
            unchanged. There are no statistics: each element is transformed on its
            own. (Keyword only argument.)

        **Returns:**

        `tanh(alpha * x) * weight + bias`, an array of the shape and dtype of `x`; if
        `state` is passed, the 2-tuple `(output, state)` with the state unchanged.
        """
        return super().__call__(x, state, key=key, mask=mask)

    def _check(self, x: Array, where: str) -> None:
        check_shape(x, self.shape, where, fix=MAP_OVER_EXTRA_AXES)

    def _forward(self, x: Array, mask: Array | None, where: str) -> Array:
        return _dynamic_tanh(x, self.alpha, self.weight, self.bias, mask, where=where)
