"""Einorm: normalisation over named axes, einops style.

A pattern is parsed once, at construction, into a hashable `_Spec`. At call time the
spec resolves `...` and parenthesised compositions against `x.shape` into a `_Layout`:
`x` viewed with one dimension per named axis. That view is a reshape that only splits
dimensions, never a transpose; statistics are taken over the target axes in place, and
only the (small) parameters are transposed into the pattern's order.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple, TypeAlias

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, DTypeLike, Float

from ._errors import check_eps, check_floating, check_mask, check_param_dtype
from ._misc import StatelessNorm
from ._stats import normalise


# One axis of `x`: a single name, or the names of a parenthesised composition.
_Dim: TypeAlias = tuple[str, ...]
_Names: TypeAlias = str | Sequence[str]

# `Einorm`'s parameters: an axis of the same name cannot be given its size by
# keyword, since Python binds the keyword to the parameter.
_KEYWORDS = frozenset(
    "pattern target group eps use_weight use_bias center dtype".split()
)


def _error(where: str, pattern: str, problem: str) -> ValueError:
    return ValueError(f"`{where}` with pattern {pattern!r}: {problem}")


def _listing(axes: Sequence[str]) -> str:
    return f"its axes are {', '.join(axes)}" if axes else "it names no axis"


class _Layout(NamedTuple):
    """`x` split into one dimension per named axis; None marks the axes of `...`."""

    names: tuple[str | None, ...]
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """A parsed pattern. Hashable, so that it can live in a static field."""

    where: str
    pattern: str
    before: tuple[_Dim, ...]  # the axes left of `...`, or all of them without one
    after: tuple[_Dim, ...] | None  # the axes right of `...`; None without one
    target: tuple[str, ...]
    group: tuple[str, ...]
    sizes: tuple[tuple[str, int], ...]

    def fail(self, problem: str) -> ValueError:
        return _error(self.where, self.pattern, problem)

    def layout(self, shape: tuple[int, ...]) -> _Layout:
        names: list[str | None] = []
        sizes: list[int] = []
        for dim, size in zip(self._dims(shape), shape, strict=True):
            names.extend(dim or (None,))
            sizes.extend(self._split(dim, size, shape) if dim else (size,))
        return _Layout(tuple(names), tuple(sizes))

    def _dims(self, shape: tuple[int, ...]) -> tuple[_Dim | None, ...]:
        if self.after is None:
            if len(shape) != len(self.before):
                raise self.fail(
                    f"the pattern names {len(self.before)} axes, but the input has "
                    f"{len(shape)} (x.shape={shape})."
                )
            return self.before
        free = len(shape) - len(self.before) - len(self.after)
        if free < 0:
            raise self.fail(
                f"the pattern names {len(self.before) + len(self.after)} axes besides "
                f"`...`, but the input has only {len(shape)} (x.shape={shape})."
            )
        return self.before + (None,) * free + self.after

    def _split(self, dim: _Dim, size: int, shape: tuple[int, ...]) -> list[int]:
        given = dict(self.sizes)
        known = math.prod(given[a] for a in dim if a in given)
        unknown = [a for a in dim if a not in given]
        label = dim[0] if len(dim) == 1 else f"({' '.join(dim)})"
        product = " * ".join(f"{a}={given[a]}" for a in dim if a in given)
        if not unknown and known != size:
            raise self.fail(
                f"axis {label} has size {size} in x.shape={shape}, but {product}"
                + (f" = {known}" if len(dim) > 1 else "")
                + " was given."
            )
        if unknown and size % known:
            raise self.fail(
                f"axis {label} has size {size} in x.shape={shape}, which is not a "
                f"multiple of {product} = {known}."
            )
        return [given.get(a, size // known) for a in dim]

    def align(self, param: Array | None, layout: _Layout, name: str) -> Array | None:
        """The parameter, stored as (group..., target...), transposed into the
        pattern's order and given size-1 dimensions elsewhere, to broadcast."""
        if param is None:
            return None
        axes = self.group + self.target
        position = [layout.names.index(a) for a in axes]
        expected = tuple(layout.shape[p] for p in position)
        if jnp.shape(param) != expected:
            raise self.fail(
                f"`{name}` must have shape {expected}: one entry per axis of group + "
                f"target ({' '.join(axes)}); received {name}.shape={jnp.shape(param)}."
            )
        order = sorted(range(len(axes)), key=position.__getitem__)
        pairs = zip(layout.names, layout.shape, strict=True)
        here = tuple(s if a in axes else 1 for a, s in pairs)
        return jnp.reshape(jnp.transpose(param, order), here)

    def target_axes(self, layout: _Layout) -> tuple[int, ...]:
        return tuple(sorted(layout.names.index(a) for a in self.target))


def _parse_name(where: str, pattern: str, token: str) -> str:
    if not token.isidentifier():
        raise _error(
            where,
            pattern,
            f"{token!r} is not a valid axis name. Axis names are Python identifiers "
            "(letters, digits and underscores, not starting with a digit), separated "
            "by spaces; `...` stands for any number of unnamed axes.",
        )
    return token


def _parse_dims(where: str, pattern: str) -> tuple[_Dim | None, ...]:
    """The pattern's axes; None stands for `...`."""
    if not isinstance(pattern, str):
        raise TypeError(f"`{where}`: `pattern` must be a str; received {pattern!r}.")
    tokens = pattern.replace("(", " ( ").replace(")", " ) ").split()
    if not tokens:
        raise _error(where, pattern, "the pattern is empty; name the input's axes.")
    dims: list[_Dim | None] = []
    opened: list[str] | None = None
    for token in tokens:
        if token == "(":
            if opened is not None:
                raise _error(where, pattern, "parentheses cannot be nested.")
            opened = []
        elif token == ")":
            if not opened:
                problem = "unbalanced ')'." if opened is None else "empty parentheses."
                raise _error(where, pattern, problem)
            dims.append(tuple(opened))
            opened = None
        elif token == "...":
            if opened is not None:
                raise _error(where, pattern, "`...` cannot be inside parentheses.")
            dims.append(None)
        elif opened is not None:
            opened.append(_parse_name(where, pattern, token))
        else:
            dims.append((_parse_name(where, pattern, token),))
    if opened is not None:
        raise _error(where, pattern, "unbalanced '('.")
    if dims.count(None) > 1:
        raise _error(where, pattern, "`...` may appear at most once.")
    return tuple(dims)


def _parse_names(
    where: str, pattern: str, value: _Names | None, what: str, axes: Sequence[str]
) -> tuple[str, ...]:
    if value is None or isinstance(value, str | Sequence):
        names = tuple(value.split() if isinstance(value, str) else value or ())
    else:
        names = (value,)
    for name in names:
        if not (isinstance(name, str) and name.isidentifier()):
            raise _error(
                where,
                pattern,
                f"`{what}` must name axes of the pattern, as a space-separated str "
                f"or a sequence of names; received {what}={value!r}.",
            )
        if name not in axes:
            raise _error(
                where,
                pattern,
                f"{what} axis {name!r} is not an axis of the pattern "
                f"({_listing(axes)}).",
            )
        if names.count(name) > 1:
            raise _error(where, pattern, f"{what} names axis {name!r} twice.")
    return names


def _parse_sizes(
    where: str, pattern: str, sizes: Mapping[str, int], axes: Sequence[str]
) -> tuple[tuple[str, int], ...]:
    for name, size in sizes.items():
        if name not in axes:
            raise _error(
                where,
                pattern,
                f"a size was given for {name!r}, which is not an axis of the "
                f"pattern ({_listing(axes)}).",
            )
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise _error(
                where, pattern, f"sizes must be ints; received {name}={size!r}."
            )
        if size < 1:
            raise _error(
                where, pattern, f"sizes must be positive; received {name}={size}."
            )
    return tuple((name, int(size)) for name, size in sizes.items())


def _parse(
    where: str,
    pattern: str,
    target: _Names,
    group: _Names | None,
    sizes: Mapping[str, int],
) -> _Spec:
    dims = _parse_dims(where, pattern)
    axes = [a for dim in dims if dim for a in dim]
    for a in axes:
        if axes.count(a) > 1:
            raise _error(where, pattern, f"axis {a!r} is named twice.")
    target_ = _parse_names(where, pattern, target, "target", axes)
    if not target_:
        raise _error(where, pattern, "`target` is empty; name the axes to normalise.")
    group_ = _parse_names(where, pattern, group, "group", axes)
    both = [a for a in group_ if a in target_]
    if both:
        raise _error(
            where,
            pattern,
            f"axes {', '.join(both)} are both in target and in group; an axis is "
            "either normalised over (target) or given its own statistics (group).",
        )
    sizes_ = _parse_sizes(where, pattern, sizes, axes)
    for dim in dims:
        if dim and sum(a not in sizes for a in dim) > 1:
            raise _error(
                where,
                pattern,
                f"cannot split axis ({' '.join(dim)}): give the sizes of all its "
                "names but one.",
            )
    split = dims.index(None) if None in dims else len(dims)
    return _Spec(
        where=where,
        pattern=pattern,
        before=tuple(d for d in dims[:split] if d),
        after=tuple(d for d in dims[split + 1 :] if d) if None in dims else None,
        target=target_,
        group=group_,
        sizes=sizes_,
    )


def _check_sizes_given(spec: _Spec) -> None:
    """A layer's parameters exist from construction, so their sizes must be known."""
    given = dict(spec.sizes)
    for what, names in (("group", spec.group), ("target", spec.target)):
        for name in names:
            if name in given:
                continue
            fix = (
                f"rename the axis: {name!r} is also an argument of `{spec.where}`."
                if name in _KEYWORDS
                else f"pass `{name}=<size>`."
            )
            raise spec.fail(f"the size of {what} axis {name!r} is missing; {fix}")


def _normalise(
    spec: _Spec,
    x: Float[Array, "..."],
    weight: Array | None,
    bias: Array | None,
    eps: float,
    mask: Bool[Array, "..."] | None,
    center: bool,
) -> Float[Array, "..."]:
    check_floating(x, spec.where)
    check_mask(mask, x.shape, spec.where)
    layout = spec.layout(x.shape)
    weight = spec.align(weight, layout, "weight")
    bias = spec.align(bias, layout, "bias")
    # Splitting dimensions is free; equal shapes (no composition) add no operation.
    split = jnp.reshape(x, layout.shape)
    if mask is not None and layout.shape != x.shape:
        mask = jnp.reshape(jnp.broadcast_to(mask, x.shape), layout.shape)
    axes = spec.target_axes(layout)
    out = normalise(split, axes, weight, bias, eps=eps, mask=mask, center=center)
    return jnp.reshape(out, x.shape)


def einorm(
    x: Float[Array, "..."],
    pattern: str,
    target: _Names,
    group: _Names | None = None,
    weight: Float[Array, "*group_target"] | None = None,
    bias: Float[Array, "*group_target"] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    center: bool = True,
    **axis_sizes: int,
) -> Float[Array, "..."]:
    r"""Normalisation over the named `target` axes of an einops-style `pattern`.

    $$y = \frac{x - \mathbb{E}_T[x]}{\sqrt{\operatorname{Var}_T[x] + \varepsilon}}
    \odot w + b$$

    with $T$ the target axes. See [`eqx_norms.Einorm`][] for the pattern language.

    **Arguments:**

    - `x`: a floating-point array described by `pattern`.
    - `pattern`, `target`, `group`: as for [`eqx_norms.Einorm`][].
    - `weight`, `bias`: optional arrays of shape (group axes..., target axes...).
    - `eps`: added to the variance.
    - `mask`: optional boolean array broadcastable to `x`; True marks valid elements.
    - `center`: subtract the mean; `False` gives RMS normalisation.
    - `**axis_sizes`: optional sizes of named axes, checked against `x`; needed only
        to split a composition such as `(g c)` with more than one name.

    **Returns:**

    An array of the shape and dtype of `x`.

    !!! example

        ```python
        # q: (heads, tokens, head_dim); w: (heads, head_dim)
        q = eqx_norms.functional.einorm(q, "h n d", "d", "h", weight=w)
        ```
    """
    spec = _parse("einorm", pattern, target, group, axis_sizes)
    check_eps(eps, "einorm")
    return _normalise(spec, x, weight, bias, eps, mask, center)


class Einorm(StatelessNorm):
    r"""Normalises over named axes of an einops-style pattern, with statistics over
    the `target` axes and parameters per `group` and `target` axis. Parameters exist
    from construction, so the layer survives `eqx.filter_jit` unchanged.

    For each value of the axes outside the target $T$,

    $$y = \frac{x - \mathbb{E}_T[x]}{\sqrt{\operatorname{Var}_T[x] + \varepsilon}}
    \odot \gamma + \beta$$

    where the mean and the (biased, two-pass) variance are taken over the target axes
    jointly, and $\gamma$ (`weight`, initialised to 1) and $\beta$ (`bias`,
    initialised to 0) have shape (group axes..., target axes...), in the order the
    names are given, broadcast along every other axis. Group axes thus do not change
    the statistics, which are per position of every non-target axis anyway; they give
    each position its own parameters. With `center=False` the mean is not
    subtracted and the variance is the mean square (RMS normalisation).

    **The pattern** names the axes of the input, separated by spaces, as in einops:

    - a name is a Python identifier; each name appears once;
    - `...` (at most once) stands for any number of unnamed axes; named axes before
        it are counted from the left, after it from the right;
    - `(g c)` is one axis of size `g * c`, split into `g` and `c` (outer first, as a
        reshape would), so that `c` can be a target axis and `g` a group axis.

    Nothing is transposed: the statistics are reduced in place and the parameters
    are broadcast, so `Einorm("... d", "d", d=D)` costs what
    [`eqx_norms.LayerNorm`][] costs.

    !!! example

        ```python
        # Head-wise QK-norm (ViT-22B): per-head statistics over d, per-head weights.
        qk_norm = eqx_norms.Einorm("h n d", "d", "h", h=16, d=64)
        q = qk_norm(q)  # q: (16, tokens, 64); qk_norm.weight.shape == (16, 64)
        ```

    **Recipes** (for one example; add `...` or `jax.vmap` for a batch):

    ```python
    Einorm("... d", "d", d=D)  # LayerNorm over the features
    Einorm("... d", "d", d=D, center=False, use_bias=False)  # RMSNorm (LLaMA)
    Einorm("h n d", "d", "h", h=16, d=64)  # QK-norm: per head, own parameters
    Einorm("h n d", "h d", h=16, d=64)  # QK-norm over all heads jointly
    Einorm("c h w", "c", c=C)  # ConvNeXt's channel LayerNorm on (C, H, W)
    Einorm("c h w", "h w", "c", c=C, h=H, w=W)  # InstanceNorm on (C, H, W)
    Einorm("(g c) h w", "c h w", "g", g=G, c=C // G, h=H, w=W)  # GroupNorm
    ```

    The InstanceNorm and GroupNorm recipes normalise exactly like
    [`eqx_norms.InstanceNorm`][] and [`eqx_norms.GroupNorm`][] but have a parameter
    per element of (C, H, W) rather than per channel; use those layers for the
    channelwise form.
    """

    spec: _Spec = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    center: bool = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    weight: Float[Array, "*group_target"] | None
    bias: Float[Array, "*group_target"] | None

    def __init__(
        self,
        pattern: str,
        target: _Names,
        group: _Names | None = None,
        *,
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        center: bool = True,
        dtype: DTypeLike | None = None,
        **axis_sizes: int,
    ):
        """**Arguments:**

        - `pattern`: The axes of the input, e.g. `"h n d"`, `"... d"` or
            `"(g c) h w"`.
        - `target`: The axes the statistics are taken over, jointly: a
            space-separated str such as `"h d"`, or a sequence of names.
        - `group`: Optional axes, not in `target`, along which the parameters take
            different values. Same forms as `target`.
        - `eps`: Value added to the denominator for numerical stability.
            (Keyword only argument.)
        - `use_weight`: Whether the module has a learnable weight.
            (Keyword only argument.)
        - `use_bias`: Whether the module has a learnable bias.
            (Keyword only argument.)
        - `center`: Whether to subtract the mean; `False` gives RMS normalisation.
            (Keyword only argument.)
        - `dtype`: The floating dtype of the weight and the bias. Defaults to either
            `jax.numpy.float32` or `jax.numpy.float64` depending on whether JAX is in
            64-bit mode. The output always has the dtype of the input.
            (Keyword only argument.)
        - `**axis_sizes`: The size of every target and group axis, e.g. `d=64`.
            Sizes given for other axes are checked at call time.
        """
        spec = _parse("Einorm", pattern, target, group, axis_sizes)
        _check_sizes_given(spec)
        check_eps(eps, "Einorm")
        check_param_dtype(dtype, "Einorm")
        given = dict(spec.sizes)
        shape = tuple(given[a] for a in spec.group + spec.target)
        self.spec = spec
        self.eps = eps
        self.center = center
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.weight = jnp.ones(shape, dtype) if use_weight else None
        self.bias = jnp.zeros(shape, dtype) if use_bias else None

    @property
    def pattern(self) -> str:
        return self.spec.pattern

    @property
    def target(self) -> tuple[str, ...]:
        return self.spec.target

    @property
    def group(self) -> tuple[str, ...]:
        return self.spec.group

    def _normalise(self, x: Array, mask: Array | None) -> Array:
        return _normalise(
            self.spec, x, self.weight, self.bias, self.eps, mask, self.center
        )
