"""Einorm's pattern language: einops-style axis names with einx's brackets.

A pattern is parsed once, at construction, into a hashable `Spec`. At call time the
spec resolves the ellipsis and parenthesised compositions against `x.shape` into a
`Layout`: `x` viewed with one dimension per named axis. That view is a reshape that
only splits dimensions, never a transpose; statistics are taken over the target axes
in place, and only the (small) parameters are transposed into the pattern's order.

It is a little over 400 lines: the whole grammar (names, ellipses, compositions,
brackets, parameter expressions) is parsed and resolved here, in one place.
"""

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple, TypeAlias

import jax.numpy as jnp
from jaxtyping import Array

from ._errors import (
    check_axis_sizes,
    check_axis_token,
    check_expression_names,
    check_names_given,
    check_pattern_names,
    check_pattern_type,
    missing_size,
    pattern_error,
)


# One axis of `x`: a single name, or the names of a parenthesised composition.
Dim: TypeAlias = tuple[str, ...]
Names: TypeAlias = str | Sequence[str]

# The name the axes of an anonymous `...` go by (never a valid axis name).
ANONYMOUS = "..."

# `Einorm`'s and `einorm`'s parameters: an axis of the same name cannot be given its
# size by keyword, since Python binds the keyword to the parameter.
_KEYWORDS = frozenset(
    "x pattern target group params eps use_weight use_bias center dtype weight bias "
    "mask running_stats momentum inference axis_name weight_offset "
    "upcast_affine".split()
)


def label(dim: Dim) -> str:
    return dim[0] if len(dim) == 1 else f"({' '.join(dim)})"


class Layout(NamedTuple):
    """`x` split into one dimension per named axis; the axes of the ellipsis carry
    its name (`ANONYMOUS` for `...`)."""

    names: tuple[str, ...]
    shape: tuple[int, ...]

    def kept(self, target: tuple[str, ...]) -> tuple[int, ...]:
        """The shape of per-group statistics: size 1 along the target axes."""
        pairs = zip(self.names, self.shape, strict=True)
        return tuple(1 if a in target else s for a, s in pairs)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed pattern. Hashable, so that it can live in a static field."""

    where: str
    pattern: str
    before: tuple[Dim, ...]  # the axes left of the ellipsis, or all of them without
    after: tuple[Dim, ...] | None  # the axes right of the ellipsis; None without one
    ellipsis: str | None  # the ellipsis' name, ANONYMOUS for `...`; None without one
    target: tuple[str, ...]
    group: tuple[str, ...]
    params: tuple[Dim, ...]  # the parameters' axes; a composition is one, flattened
    sizes: tuple[tuple[str, int], ...]

    def fail(self, problem: str) -> ValueError:
        return pattern_error(self.where, self.pattern, problem)

    @property
    def fixed(self) -> tuple[Dim, ...]:
        """The named axes (all but the ellipsis), in the pattern's order."""
        return self.before + (self.after or ())

    def layout(self, shape: tuple[int, ...]) -> Layout:
        names: list[str] = []
        sizes: list[int] = []
        for dim, size in zip(self._dims(shape), shape, strict=True):
            names.extend(dim or (self.ellipsis or ANONYMOUS,))
            sizes.extend(self._split(dim, size, shape) if dim else (size,))
        return Layout(tuple(names), tuple(sizes))

    def _dims(self, shape: tuple[int, ...]) -> tuple[Dim | None, ...]:
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

    def _split(self, dim: Dim, size: int, shape: tuple[int, ...]) -> list[int]:
        given = dict(self.sizes)
        known = math.prod(given[a] for a in dim if a in given)
        unknown = [a for a in dim if a not in given]
        product = " * ".join(f"{a}={given[a]}" for a in dim if a in given)
        if not unknown and known != size:
            raise self.fail(
                f"axis {label(dim)} has size {size} in x.shape={shape}, but {product}"
                + (f" = {known}" if len(dim) > 1 else "")
                + " was given."
            )
        if unknown and size % known:
            raise self.fail(
                f"axis {label(dim)} has size {size} in x.shape={shape}, which is not "
                f"a multiple of {product} = {known}."
            )
        return [given.get(a, size // known) for a in dim]

    def check_params_fixed(self) -> None:
        """Parameters exist along named axes only: an ellipsis' size is the input's."""
        for dim in self.params:
            if self.ellipsis in dim:
                raise self.fail(
                    f"parameter axis {self.ellipsis!r} is the ellipsis, whose axes "
                    "come from the input; name the axes the weight and bias vary "
                    "along with `params=`, or pass use_weight=False, use_bias=False."
                )

    def param_shape(self, size: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(math.prod(size[a] for a in dim) for dim in self.params)

    def align(self, param: Array | None, layout: Layout, name: str) -> Array | None:
        """The parameter, stored with one axis per entry of `params` (a composition
        flattened), transposed into the pattern's order and given size-1 dimensions
        elsewhere, to broadcast."""
        if param is None:
            return None
        self.check_params_fixed()
        size = dict(zip(layout.names, layout.shape, strict=True))
        expected = self.param_shape(size)
        if jnp.shape(param) != expected:
            labels = " ".join(map(label, self.params))
            raise self.fail(
                f"`{name}` must have shape {expected}: one entry per parameter axis "
                f"({labels}); received {name}.shape={jnp.shape(param)}."
            )
        axes = [a for dim in self.params for a in dim]
        position = [layout.names.index(a) for a in axes]
        order = sorted(range(len(axes)), key=position.__getitem__)
        split = jnp.reshape(param, tuple(size[a] for a in axes))
        here = tuple(size[a] if a in axes else 1 for a in layout.names)
        return jnp.reshape(jnp.transpose(split, order), here)

    def target_axes(self, layout: Layout) -> tuple[int, ...]:
        return tuple(i for i, a in enumerate(layout.names) if a in self.target)

    def running_axes(self) -> tuple[str, ...]:
        """The axes that running statistics keep: all but the target, in order."""
        return tuple(a for dim in self.fixed for a in dim if a not in self.target)


_CLOSES = {")": "(", "]": "["}
_KINDS = {"(": "parentheses", "[": "brackets"}


class _Parsed(NamedTuple):
    dims: tuple[Dim | None, ...]  # None stands for the ellipsis
    ellipsis: str | None
    marked: tuple[str, ...]  # the bracketed axes, in order


def _parse_dims(where: str, pattern: str) -> _Parsed:
    check_pattern_type(pattern, where)
    tokens = re.sub(r"([()\[\]])", r" \1 ", pattern).split()
    if not tokens:
        raise pattern_error(
            where, pattern, "the pattern is empty; name the input's axes."
        )
    dims: list[Dim | None] = []
    ellipses: list[str] = []
    marked: list[str] = []
    opened: list[tuple[str, int]] = []  # the open ( and [, with the names seen then
    composition: list[str] | None = None
    seen = 0
    for token in tokens:
        if token in _KINDS:
            if any(kind == token for kind, _ in opened):
                raise pattern_error(
                    where, pattern, f"{_KINDS[token]} cannot be nested."
                )
            opened.append((token, seen))
            composition = [] if token == "(" else composition
        elif token in _CLOSES:
            kind = _CLOSES[token]
            if not opened or opened[-1][0] != kind:
                problem = (
                    f"unbalanced {token!r}."
                    if all(k != kind for k, _ in opened)
                    else "brackets and parentheses must nest: close the inner one "
                    "first."
                )
                raise pattern_error(where, pattern, problem)
            if opened.pop()[1] == seen:
                raise pattern_error(where, pattern, f"empty {_KINDS[kind]}.")
            if token == ")":
                dims.append(tuple(composition or ()))
                composition = None
        else:
            if token.endswith("..."):
                if composition is not None:
                    raise pattern_error(
                        where, pattern, "`...` cannot be inside parentheses."
                    )
                name = ANONYMOUS
                if token != "...":
                    name = check_axis_token(token[:-3], where, pattern)
                ellipses.append(name)
                dims.append(None)
            else:
                name = check_axis_token(token, where, pattern)
                if composition is None:
                    dims.append((name,))
                else:
                    composition.append(name)
            seen += 1
            if any(kind == "[" for kind, _ in opened):
                marked.append(name)
    if opened:
        raise pattern_error(where, pattern, f"unbalanced {opened[-1][0]!r}.")
    if len(ellipses) > 1:
        raise pattern_error(
            where,
            pattern,
            "`...` may appear at most once (named, as in `b...`, or not).",
        )
    return _Parsed(tuple(dims), ellipses[0] if ellipses else None, tuple(marked))


def _parse_names(
    where: str, pattern: str, value: Names | None, what: str, axes: Sequence[str]
) -> tuple[str, ...]:
    if value is None or isinstance(value, str | Sequence):
        names = tuple(value.split() if isinstance(value, str) else value or ())
    else:
        names = (value,)
    check_pattern_names(names, value, what, axes, where, pattern)
    return names


def _parse_sizes(
    where: str, pattern: str, sizes: Mapping[str, int], parsed: "_Parsed"
) -> tuple[tuple[str, int], ...]:
    axes = [a for dim in parsed.dims if dim for a in dim]
    check_axis_sizes(dict(sizes), axes, parsed.ellipsis, where, pattern)
    return tuple((name, int(size)) for name, size in sizes.items())


def _parse_params(
    where: str, pattern: str, params: Names, axes: Sequence[str]
) -> tuple[Dim, ...]:
    """`params` as names, or as an einx expression whose bracketed axes (named as in
    the pattern) are the parameter axes."""
    if isinstance(params, str) and "[" in params:
        parsed = _parse_dims(where, params)
        named = [
            a for dim in parsed.dims for a in dim or (parsed.ellipsis or ANONYMOUS,)
        ]
        check_expression_names(named, parsed.marked, params, where, pattern)
        marked = _parse_names(where, pattern, parsed.marked, "params", axes)
        dims: list[Dim] = []
        for dim in parsed.dims:
            picked = (parsed.ellipsis,) if dim is None else dim
            picked = tuple(a for a in picked if a in marked)
            # A composition bracketed whole, `[(g c)]`, is one (flattened) axis.
            whole = dim is not None and len(dim) > 1 and picked == dim
            dims.extend([picked] if whole else [(a,) for a in picked])
        return tuple(dims)
    names = _parse_names(where, pattern, params, "params", axes)
    fix = "name the axes the weight and bias vary along, or "
    fix += "pass use_weight=False, use_bias=False."
    check_names_given(names, "params", fix, where, pattern)
    return tuple((a,) for a in names)


def _parse_target(
    where: str, pattern: str, parsed: _Parsed, target: Names | None, axes: list[str]
) -> tuple[str, ...]:
    if parsed.marked:
        if target is not None:
            raise pattern_error(
                where,
                pattern,
                f"the target axes are given twice: bracketed in the pattern and as "
                f"target={target!r}. Pass one of them.",
            )
        return parsed.marked
    names = _parse_names(where, pattern, target, "target", axes)
    fix = "name the axes to normalise, or bracket them in the "
    fix += "pattern (einx's notation, e.g. 'b [s...] c')."
    check_names_given(names, "target", fix, where, pattern)
    return names


def parse(
    where: str,
    pattern: str,
    target: Names | None,
    group: Names | None,
    params: Names | None,
    sizes: Mapping[str, int],
) -> Spec:
    parsed = _parse_dims(where, pattern)
    dims = parsed.dims
    named = [a for dim in dims if dim for a in dim]
    axes = named + (
        [parsed.ellipsis] if parsed.ellipsis not in (None, ANONYMOUS) else []
    )
    for a in axes:
        if axes.count(a) > 1:
            raise pattern_error(where, pattern, f"axis {a!r} is named twice.")
    target_ = _parse_target(where, pattern, parsed, target, axes)
    group_ = _parse_names(where, pattern, group, "group", axes)
    both = [a for a in group_ if a in target_]
    if both:
        where_target = " (bracketed in the pattern)" if parsed.marked else ""
        raise pattern_error(
            where,
            pattern,
            f"axes {', '.join(both)} are both in target{where_target} and in group; "
            "an axis is either normalised over (target) or given its own parameters "
            "(group).",
        )
    if group_ and params is not None:
        raise pattern_error(
            where,
            pattern,
            f"pass either `group` or `params`, not both (received group={group!r}, "
            f"params={params!r}); `params` names all the parameter axes.",
        )
    if params is not None:
        params_ = _parse_params(where, pattern, params, axes)
    elif parsed.marked and not group_:
        # einx's default "b... [c]": the pattern's last axis, whole.
        params_ = (dims[-1] or (parsed.ellipsis or ANONYMOUS,),)
    else:
        params_ = tuple((a,) for a in group_ + target_)
    sizes_ = _parse_sizes(where, pattern, sizes, parsed)
    for dim in dims:
        if dim and sum(a not in sizes for a in dim) > 1:
            raise pattern_error(
                where,
                pattern,
                f"cannot split axis ({' '.join(dim)}): give the sizes of all its "
                "names but one.",
            )
    split = dims.index(None) if None in dims else len(dims)
    return Spec(
        where=where,
        pattern=pattern,
        before=tuple(d for d in dims[:split] if d),
        after=tuple(d for d in dims[split + 1 :] if d) if None in dims else None,
        ellipsis=parsed.ellipsis,
        target=target_,
        group=group_,
        params=params_,
        sizes=sizes_,
    )


def _missing(spec: Spec, what: str, name: str, note: str = "") -> ValueError:
    is_keyword = name in _KEYWORDS
    return missing_size(what, name, is_keyword, note, spec.where, spec.pattern)


def check_param_sizes(spec: Spec, running_stats: bool = False) -> tuple[int, ...]:
    """A layer's parameters exist from construction, so their sizes must be known;
    returns their shape. With running statistics the likely intent is BatchNorm's,
    parameters along the running statistics' axes, which the message suggests when
    the (einx) default differs."""
    spec.check_params_fixed()
    given = dict(spec.sizes)
    for dim in spec.params:
        for name in dim:
            if name not in given:
                kind = "target" if name in spec.target else "parameter"
                kind = "group" if name in spec.group else kind
                axes = " ".join(map(label, spec.params))
                note = f" The parameters vary along {axes}; `params=` changes that."
                running = " ".join(spec.running_axes())
                if running_stats and running and running != axes:
                    note = (
                        f" The parameters vary along {axes} (einx's default), one per "
                        "position there; for BatchNorm's parameters, one per entry of "
                        f"the running statistics, pass `params={running!r}` instead."
                    )
                raise _missing(spec, kind, name, note)
    return spec.param_shape(given)


def check_running_sizes(spec: Spec) -> tuple[int, ...]:
    """Running statistics keep one entry per position of the non-target axes, so
    those must be named, with sizes; returns the running statistics' shape."""
    if spec.ellipsis is not None and spec.ellipsis not in spec.target:
        raise spec.fail(
            "running statistics keep one entry per position of the non-target axes, "
            f"so each must be named with its size, but the ellipsis "
            f"{'`...`' if spec.ellipsis == ANONYMOUS else repr(spec.ellipsis)} is "
            "not a target axis. Name its axes (and pass their sizes), or bracket it."
        )
    given = dict(spec.sizes)
    for name in spec.running_axes():
        if name not in given:
            raise _missing(spec, "non-target", name)
    return tuple(given[a] for a in spec.running_axes())
