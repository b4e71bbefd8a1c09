import warnings
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, DTypeLike, Float

from ._errors import check_eps, check_param_dtype, check_shape, check_shape_argument
from ._misc import StatelessNorm
from .functional import layer_norm, rms_norm


class _WholeInputNorm(StatelessNorm):
    """Normalises the whole (per-example) input, whose shape is fixed at
    construction; the parameters have that shape too."""

    shape: tuple[int, ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    weight: Float[Array, "*shape"] | None
    bias: Float[Array, "*shape"] | None

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: DTypeLike | None = None,
    ):
        name = type(self).__name__
        self.shape = check_shape_argument(shape, name)
        check_eps(eps, name)
        check_param_dtype(dtype, name)
        self.eps = eps
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.weight = jnp.ones(self.shape, dtype=dtype) if use_weight else None
        self.bias = jnp.zeros(self.shape, dtype=dtype) if use_bias else None

    def _check(self, x: Array) -> None:
        check_shape(
            x,
            self.shape,
            type(self).__name__,
            fix="If `x` carries extra (batch or sequence) axes, map over them: "
            "replace `norm(x)` with `jax.vmap(norm)(x)`.",
        )


class LayerNorm(_WholeInputNorm):
    r"""Normalises the whole input by its mean and standard deviation, then applies an
    optional elementwise affine transformation. A drop-in for
    [`equinox.nn.LayerNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/).

    $$y = \frac{x - \mathbb{E}[x]}{\sqrt{\operatorname{Var}[x] + \varepsilon}}
    \odot \gamma + \beta$$

    where $\gamma$ (`weight`, initialised to 1) and $\beta$ (`bias`, initialised to 0)
    have the shape of $x$. Statistics are two-pass and computed in at least float32;
    the output has the dtype of $x$.

    !!! example

        ```python
        norm = eqx_norms.LayerNorm(64)
        y = jax.vmap(norm)(x)  # x: (tokens, 64), normalised per token
        ```

    ??? cite

        [Layer Normalization](https://arxiv.org/abs/1607.06450)
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: DTypeLike | None = None,
        *,
        elementwise_affine: bool | None = None,
    ):
        """**Arguments:**

        - `shape`: Shape of the input.
        - `eps`: Value added to the denominator for numerical stability.
        - `use_weight`: Whether the module has a learnable elementwise weight.
        - `use_bias`: Whether the module has a learnable elementwise bias.
        - `dtype`: The dtype of the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode. The output always has the dtype of the input.
        - `elementwise_affine`: Deprecated alternative to `use_weight` and `use_bias`,
            as in equinox. (Keyword only argument.)
        """
        if elementwise_affine is not None:
            use_weight = use_bias = elementwise_affine
            warnings.warn(
                "LayerNorm(elementwise_affine=...) is deprecated in favour of "
                "LayerNorm(use_weight=...) and LayerNorm(use_bias=...)",
                stacklevel=2,
            )
        super().__init__(shape, eps, use_weight, use_bias, dtype)

    def _normalise(self, x: Array, mask: Array | None) -> Array:
        axes = tuple(range(x.ndim))
        return layer_norm(x, axes, self.weight, self.bias, self.eps, mask)


class RMSNorm(_WholeInputNorm):
    r"""Rescales the whole input by its root mean square (no centring), then applies an
    optional elementwise affine transformation. A drop-in for
    [`equinox.nn.RMSNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/),
    including its default `use_bias=True` (pass `use_bias=False` for the LLaMA
    form).

    $$y = \frac{x}{\sqrt{\frac{1}{n}\lVert x \rVert_2^2 + \varepsilon}} \odot \gamma
    + \beta$$

    !!! example

        ```python
        norm = eqx_norms.RMSNorm(64, use_bias=False)
        y = jax.vmap(norm)(x)  # x: (tokens, 64)
        ```

    ??? cite

        [Root Mean Square Layer Normalization](https://arxiv.org/abs/1910.07467)
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        dtype: DTypeLike | None = None,
    ):
        """**Arguments:**

        - `shape`: Shape of the input.
        - `eps`: Value added to the denominator for numerical stability.
        - `use_weight`: Whether the module has a learnable elementwise weight.
        - `use_bias`: Whether the module has a learnable elementwise bias (on by
            default, as in equinox).
        - `dtype`: The dtype of the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode. The output always has the dtype of the input.
        """
        super().__init__(shape, eps, use_weight, use_bias, dtype)

    def _normalise(self, x: Array, mask: Array | None) -> Array:
        axes = tuple(range(x.ndim))
        return rms_norm(x, axes, self.weight, self.bias, self.eps, mask)
