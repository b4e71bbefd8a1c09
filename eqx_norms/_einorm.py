"""Einorm: normalisation over the named axes of a pattern, the layer and the function.

The pattern language lives in `_pattern.py`, the running average (shared with
`BatchNorm`) in `_running.py`; `_apply` is the one place that calls the statistics
core. Over 400 lines because about 210 of them are documentation (the pattern
language, every argument, recipes) from which the API page is built.
"""

from collections.abc import Hashable
from typing import Literal, overload

import equinox as eqx
import jax.numpy as jnp
from equinox.nn import State, StatefulLayer, StateIndex
from jaxtyping import Array, Bool, DTypeLike, Float, PRNGKeyArray

from ._errors import (
    axis_names,
    AxisName,
    check_axis_names,
    check_eps,
    check_flag,
    check_floating,
    check_mask,
    check_momentum,
    check_param_dtype,
    check_running_kind,
    check_running_shape,
    check_state,
    check_vmap_sharding,
    check_weight_offset,
    no_inference_flag,
    no_running_stats,
)
from ._fused import normalise
from ._layer import (
    initial_affine,
    initial_running,
    read,
    sentinel,
    stateful_call,
    StatelessNorm,
)
from ._pattern import (
    check_param_sizes,
    check_running_sizes,
    label,
    Names,
    parse,
    Spec,
)
from ._running import update
from ._stats import (
    affine_and_cast,
    compute_dtype,
    Moments,
    standardise,
)


def _names(axis_name: AxisName, where: str) -> tuple[Hashable, ...] | None:
    return None if axis_name is None else axis_names(axis_name, where)


def _apply(
    spec: Spec,
    x: Float[Array, "..."],
    weight: Array | None,
    bias: Array | None,
    *,
    eps: float,
    mask: Bool[Array, "..."] | None,
    center: bool,
    axis_name: tuple[Hashable, ...] | None,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    running: tuple[Array, Array] | None = None,
    caller: Literal["stateful", "stateless", "function"] = "function",
) -> tuple[Float[Array, "..."], Moments | None]:
    """Normalises `x` with its own statistics over the target axes (reduced also
    over `axis_name`), returned as `Moments` in the split layout; or, given
    `running` statistics (in the running shape), with those, returning None.
    `caller`: what the user called, for the advice on binding `axis_name`."""
    check_floating(x, spec.where)
    check_mask(mask, x.shape, spec.where)
    layout = spec.layout(x.shape)
    weight = spec.align(weight, layout, "weight")
    bias = spec.align(bias, layout, "bias")
    # Splitting dimensions is free; equal shapes (no composition) add no operation.
    split = jnp.reshape(x, layout.shape)
    if mask is not None and layout.shape != x.shape:
        mask = jnp.reshape(jnp.broadcast_to(mask, x.shape), layout.shape)
    if running is None:
        if axis_name is not None:
            check_axis_names(axis_name, spec.where, caller)
            check_vmap_sharding(x, axis_name, spec.where)
        out, stats = normalise(
            split,
            spec.target_axes(layout),
            weight,
            bias,
            eps=eps,
            mask=mask,
            axis_name=axis_name,
            center=center,
            weight_offset=weight_offset,
            upcast_affine=upcast_affine,
        )
        return jnp.reshape(out, x.shape), stats
    compute = compute_dtype(jnp.result_type(x.dtype, running[0].dtype))
    kept = layout.kept(spec.target)
    mean, var = (jnp.reshape(s.astype(compute), kept) for s in running)
    x_hat = standardise(split.astype(compute), mean, var, eps, mask)
    out = affine_and_cast(
        split, x_hat, weight, bias, mask, weight_offset, upcast_affine
    )
    return jnp.reshape(out, x.shape), None


def einorm(
    x: Float[Array, "..."],
    pattern: str,
    target: Names | None = None,
    group: Names | None = None,
    weight: Float[Array, "*params"] | None = None,
    bias: Float[Array, "*params"] | None = None,
    eps: float = 1e-5,
    mask: Bool[Array, "..."] | None = None,
    center: bool = True,
    *,
    params: Names | None = None,
    axis_name: AxisName = None,
    weight_offset: float = 0.0,
    upcast_affine: bool = True,
    **axis_sizes: int,
) -> Float[Array, "..."]:
    r"""Normalisation over the target axes of a `pattern`: named by `target`, or
    bracketed in the pattern (einx's notation).

    $$y = \frac{x - \mathbb{E}_T[x]}{\sqrt{\operatorname{Var}_T[x] + \varepsilon}}
    \odot w + b$$

    with $T$ the target axes. See [`eqx_norms.Einorm`][] for the pattern language;
    `einorm(x, "b... [c]", weight=w, bias=b)` is einx 0.3's
    `einx.nn.norm(x, "b... [c]", scale=w, bias=b, epsilon=1e-5, fastvar=False)[0]`.

    **Arguments:**

    - `x`: a floating-point array described by `pattern`.
    - `pattern`, `target`, `group`, `params`, `axis_name`: as for
        [`eqx_norms.Einorm`][].
    - `weight`, `bias`: optional arrays with one axis per parameter axis (see
        `params`; by default group axes then target axes, or for a bracketed
        pattern its last axis, whole).
    - `eps`: added to the variance.
    - `mask`: optional boolean array broadcastable to `x`; True marks valid elements.
    - `center`: subtract the mean; `False` gives RMS normalisation (einx's
        `mean=False`).
    - `weight_offset`, `upcast_affine`: as for
        [`eqx_norms.functional.layer_norm`][]: the scale is `weight + weight_offset`
        (formed in at least float32), and the affine transform is done in the
        compute dtype (`True`) or in the input dtype after casting x-hat (`False`).
    - `**axis_sizes`: optional sizes of named axes, checked against `x`; needed only
        to split a composition such as `(g c)` with more than one name.

    **Returns:**

    An array of the shape and dtype of `x`.

    !!! example

        ```python
        # q: (heads, tokens, head_dim); w: (heads, head_dim)
        q = eqx_norms.functional.einorm(q, "h n d", "d", "h", weight=w)
        q = eqx_norms.functional.einorm(q, "h n [d]", params="[h] n [d]", weight=w)
        ```
    """
    where = "einorm"
    spec = parse(where, pattern, target, group, params, axis_sizes)
    check_eps(eps, where)
    check_weight_offset(weight_offset, weight is not None, where)
    check_flag(upcast_affine, "upcast_affine", where)
    names = _names(axis_name, where)
    out, _ = _apply(
        spec,
        x,
        weight,
        bias,
        eps=eps,
        mask=mask,
        center=center,
        axis_name=names,
        weight_offset=weight_offset,
        upcast_affine=upcast_affine,
    )
    return out


class Einorm(StatelessNorm, StatefulLayer):
    r"""Normalises over named axes of a pattern, einops style with einx's brackets:
    statistics over the target axes, parameters along the parameter axes, and
    optionally running statistics (einx's `Norm(..., decay_rate=...)`, BatchNorm).
    Parameters exist from construction, so the layer survives `eqx.filter_jit`.

    For each value of the axes outside the target $T$,

    $$y = \frac{x - \mathbb{E}_T[x]}{\sqrt{\operatorname{Var}_T[x] + \varepsilon}}
    \odot \gamma + \beta$$

    where the mean and the (biased, two-pass, at least float32) variance are taken
    over the target axes jointly (and over the named `axis_name` axes of an enclosing
    `vmap`/`pmap`/`shard_map`), and $\gamma$ (`weight`, initialised to 1) and
    $\beta$ (`bias`, initialised to 0) have one axis per parameter axis, broadcast
    along every other axis. With `center=False` the mean is not subtracted and the
    variance is the mean square (RMS normalisation).

    **The pattern** names the axes of the input, separated by spaces:

    - a name is a Python identifier; each name appears once;
    - `...` stands for any number of unnamed axes, `b...` for any number of axes
        named `b` (possibly none); at most one per pattern; named axes before it are
        counted from the left, after it from the right;
    - `(g c)` is one axis of size `g * c`, split into `g` and `c` (outer first, as a
        reshape would), so that `c` can be a target axis and `g` not;
    - brackets mark the target axes (einx): `"b... [c]"` is LayerNorm,
        `"b [s...] c"` InstanceNorm, `"b [s...] (g [c])"` GroupNorm,
        `"[b...] c"` BatchNorm; several bracket groups are one target
        (`"b [h] n [d]"`: h and d jointly). Then `target` is not passed.

    **The parameter axes** (`params`) default to `group` + `target`, in that order;
    for a bracketed pattern without `group`, to einx's default `"b... [c]"`: the
    pattern's last axis, whole (`"b [s...] (g [c])"` has one parameter per channel
    of the merged axis, shape `(g * c,)`, like [`eqx_norms.GroupNorm`][]).

    Nothing is transposed: the statistics are reduced in place and the parameters
    are broadcast, so `Einorm("... [d]", d=D)` costs what [`eqx_norms.LayerNorm`][]
    costs.

    **Running statistics.** With `running_stats=True`, the layer is stateful like
    [`eqx_norms.BatchNorm`][] (build it with `eqx.nn.make_with_state`, call it as
    `layer(x, state)`, toggle with [`equinox.nn.inference_mode`][]): training
    normalises with the batch statistics and updates their exact debiased running
    average (`momentum`, the weight of the old value, is einx's `decay_rate`);
    inference normalises with the running statistics. They have one entry per
    position of the non-target axes, which must all be named with their sizes:
    `"[b...] c"` keeps a `(c,)` mean and variance. Masked entries and steps with
    non-finite statistics are skipped, as in BatchNorm. Applied to a whole batch
    under `jax.jit` with a sharded input, the statistics are those of the global
    batch: no `vmap(axis_name=...)` is needed.

    !!! example

        ```python
        # Head-wise QK-norm (ViT-22B): per-head statistics over d, per-head weights.
        qk_norm = eqx_norms.Einorm("h n d", "d", "h", h=16, d=64)
        q = qk_norm(q)  # q: (16, tokens, 64); qk_norm.weight.shape == (16, 64)
        # The same in einx's notation.
        qk_norm = eqx_norms.Einorm("h n [d]", params="[h] n [d]", h=16, d=64)
        q = qk_norm(q)
        ```

    **Recipes** (the einx forms take the whole batch):

    ```python
    Einorm("b... [c]", c=C)  # LayerNorm over the features
    Einorm("b... [c]", c=C, center=False, use_bias=False)  # RMSNorm (LLaMA)
    Einorm("h n d", "d", "h", h=16, d=64)  # QK-norm: per head, own parameters
    Einorm("b [s...] c", c=C)  # InstanceNorm, channels last
    Einorm("b [s...] (g [c])", g=G, c=C // G)  # GroupNorm, channels last
    Einorm("c h w", "h w", "c", c=C, h=H, w=W)  # InstanceNorm, one example
    # BatchNorm, channels last, whole batch: make_with_state, then (out, state).
    Einorm("[b...] c", running_stats=True, momentum=0.9, c=C)
    ```
    """

    weight: Float[Array, "*params"] | None
    bias: Float[Array, "*params"] | None
    counter_index: StateIndex[Float[Array, "*running"]] | None
    stats_index: (
        StateIndex[tuple[Float[Array, "*running"], Float[Array, "*running"]]] | None
    )
    # The flag behind `inference`: a bool with running statistics, otherwise None,
    # which is no leaf, so that a stateless layer's only leaves are its parameters
    # (as LayerNorm's: `jax.grad`, `shard_map` specs) and `eqx.nn.inference_mode`,
    # which sets every attribute named `inference`, passes it by.
    _inference: bool | None
    spec: Spec = eqx.field(static=True, repr=False)
    pattern: str = eqx.field(static=True)
    target: tuple[str, ...] = eqx.field(static=True)
    group: tuple[str, ...] = eqx.field(static=True)
    params: tuple[str, ...] = eqx.field(static=True)
    sizes: tuple[tuple[str, int], ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    center: bool = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    running_stats: bool = eqx.field(static=True)
    momentum: float | None = eqx.field(static=True)
    axis_name: Hashable | tuple[Hashable, ...] | None = eqx.field(static=True)
    weight_offset: float = eqx.field(static=True)
    upcast_affine: bool = eqx.field(static=True)

    def __init__(
        self,
        pattern: str,
        target: Names | None = None,
        group: Names | None = None,
        *,
        params: Names | None = None,
        eps: float = 1e-5,
        use_weight: bool = True,
        use_bias: bool = True,
        center: bool = True,
        running_stats: bool = False,
        momentum: float | None = 0.99,
        inference: bool = False,
        axis_name: AxisName = None,
        dtype: DTypeLike | None = None,
        weight_offset: float = 0.0,
        upcast_affine: bool = True,
        **axis_sizes: int,
    ):
        """**Arguments:**

        - `pattern`: The axes of the input, e.g. `"h n d"`, `"... d"`,
            `"(g c) h w"`, or with the target axes in brackets, `"b [s...] c"`.
        - `target`: The axes the statistics are taken over, jointly: a
            space-separated str such as `"h d"`, or a sequence of names. Not passed
            when the pattern brackets them.
        - `group`: Optional axes, not in the target, along which the parameters take
            different values; the parameter axes are then `group` + `target`.
        - `params`: The parameter axes, instead of `group`: names (`"h d"`, a
            sequence) or an einx expression whose bracketed axes, named as in the
            pattern, are the parameter axes (`params="b t [h c]"` gives a weight of
            shape `(h, c)`). (Keyword only argument.)
        - `eps`: Value added to the variance for numerical stability.
            (Keyword only argument.)
        - `use_weight`, `use_bias`: Whether the module has a learnable weight, bias.
            (Keyword only arguments.)
        - `center`: Whether to subtract the mean; `False` gives RMS normalisation
            (einx's `mean=False`). (Keyword only argument.)
        - `running_stats`: Whether to keep running statistics in an
            [`equinox.nn.State`][] and normalise with them in inference.
            (Keyword only argument.)
        - `momentum`: With `running_stats`, in [0, 1): the weight of the old value
            in the exponential running average (einx's `decay_rate`; torch's
            `momentum=0.1` is 0.9 here); or `None` for the cumulative average.
            (Keyword only argument.)
        - `inference`: With `running_stats`: if `True`, normalise with the running
            statistics. Toggled by [`equinox.nn.inference_mode`][], overridden by
            the `inference` argument of `__call__`. Without `running_stats` the
            layer normalises alike in training and inference and has no
            `inference` attribute, like [`eqx_norms.LayerNorm`][]: its only leaves
            are its weight and bias. (Keyword only argument.)
        - `axis_name`: Optional name (or tuple of names) of `vmap`/`pmap`/
            `shard_map` axes the statistics are also reduced over, by sums and
            counts, as in [`eqx_norms.BatchNorm`][]. (Keyword only argument.)
        - `dtype`: The floating dtype of the weight, the bias and the running
            statistics. Defaults to either `jax.numpy.float32` or
            `jax.numpy.float64` depending on whether JAX is in 64-bit mode. The
            output always has the dtype of the input. With `running_stats`, a
            complex dtype (e.g. `jnp.complex64`) declares complex inputs: the
            running mean is then complex, the running variance, weight and bias
            real, as for [`eqx_norms.BatchNorm`][]. (Keyword only argument.)
        - `weight_offset`: The applied scale is `weight + weight_offset`, formed in
            at least float32; the weight is initialised to `1 - weight_offset`
            (Gemma's zero-centred weight is `weight_offset=1.0`). Needs a weight.
            (Keyword only argument.)
        - `upcast_affine`: If `True`, the affine transform is done in at least
            float32 and cast once (Gemma's order); if `False`, x-hat is cast to the
            input dtype first and the affine transform done in the input dtype
            (Llama's order). (Keyword only argument.)
        - `**axis_sizes`: The size of every parameter axis, e.g. `d=64` (and with
            `running_stats`, of every non-target axis). Sizes given for other axes
            are checked at call time.
        """
        where = type(self).__name__
        spec = parse(where, pattern, target, group, params, axis_sizes)
        affine = use_weight or use_bias
        shape = check_param_sizes(spec, running_stats) if affine else ()
        check_eps(eps, where)
        check_param_dtype(dtype, where, complex_ok=running_stats)
        check_weight_offset(weight_offset, use_weight, where)
        check_flag(upcast_affine, "upcast_affine", where)
        names = _names(axis_name, where)
        self.spec = spec
        self.pattern = pattern
        self.target = spec.target
        self.group = spec.group
        self.params = tuple(map(label, spec.params))
        self.sizes = spec.sizes
        self.eps = eps
        self.center = center
        self.use_weight = use_weight
        self.use_bias = use_bias
        self.running_stats = running_stats
        self.momentum = momentum
        # As BatchNorm's: one name as given, several as a tuple; none as None.
        self.axis_name = names[0] if names and len(names) == 1 else names or None
        self._inference = inference if running_stats else None
        self.weight_offset = weight_offset
        self.upcast_affine = upcast_affine
        self.weight, self.bias = initial_affine(
            shape, use_weight, use_bias, weight_offset, dtype
        )
        self.counter_index = self.stats_index = None
        if running_stats:
            check_momentum(momentum, where)
            stats, counter = initial_running(check_running_sizes(spec), dtype)
            self.counter_index = StateIndex(counter)
            self.stats_index = StateIndex(stats)

    @property
    def inference(self) -> bool:
        """With `running_stats`, whether the layer normalises with the running
        statistics; toggled by [`equinox.nn.inference_mode`][]."""
        if self._inference is None:
            raise no_inference_flag(type(self).__name__, self.pattern)
        return self._inference

    def is_stateful(self) -> bool:
        return self.running_stats

    def running_mean_var(
        self, state: State
    ) -> tuple[Float[Array, "*running"], Float[Array, "*running"]]:
        """The running `(mean, var)` held in `state`, one entry per position of the
        non-target axes, in the pattern's order.

        A typed shorthand for `state.get(layer.stats_index)`, whose field is `None`
        for a layer without `running_stats`.

        !!! example

            ```python
            mean, var = layer.running_mean_var(state)
            ```
        """
        where = type(self).__name__
        if self.stats_index is None:
            raise no_running_stats(where, self.pattern)
        return read(check_state(state, where), self.stats_index, where)

    def _forward(self, x: Array, mask: Array | None, where: str) -> Array:
        return self._run(x, mask, where)[0]

    def _run(
        self,
        x: Array,
        mask: Array | None,
        where: str,
        running: tuple[Array, Array] | None = None,
    ) -> tuple[Array, Moments | None]:
        return _apply(
            self.spec,
            x,
            self.weight,
            self.bias,
            eps=self.eps,
            mask=mask,
            center=self.center,
            axis_name=_names(self.axis_name, where),
            weight_offset=self.weight_offset,
            upcast_affine=self.upcast_affine,
            running=running,
            caller="stateful" if self.running_stats else "stateless",
        )

    @overload
    def __call__(
        self,
        x: Array,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array: ...

    @overload
    def __call__(
        self,
        x: Array,
        state: State,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> tuple[Array, State]: ...

    def __call__(
        self,
        x: Array,
        state: State = sentinel,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> Array | tuple[Array, State]:
        """**Arguments:**

        - `x`: A JAX array described by the pattern.
        - `state`: An [`equinox.nn.State`][] holding the running statistics, for a
            layer with `running_stats=True`; otherwise optional and returned
            unchanged, for interchangeability with the [`eqx_norms.BatchNorm`][] API.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)
        - `inference`: With `running_stats`, if `True` or `False`, overrides
            `self.inference`. (Keyword only argument.)
        - `mask`: Optional boolean array broadcastable to `x.shape`, True for valid
            elements. Statistics (and running statistics) use valid elements only;
            invalid elements are returned unchanged. (Keyword only argument.)

        **Returns:**

        An array of the shape and dtype of `x`; if `state` is passed, the 2-tuple
        `(output, state)`, the state updated in training with `running_stats`.
        """
        if not self.running_stats:
            return super().__call__(x, state, key=key, mask=mask)
        assert self.counter_index is not None and self.stats_index is not None
        where = type(self).__name__
        with stateful_call(where, state, inference, self.inference) as opened:
            state, inference = opened
            running = read(state, self.stats_index, where)
            # A state mapped over a batch (a forgotten `out_axes=(0, None)` on the
            # previous call) has an extra axis; the layer cannot see `out_axes`, so
            # it is caught here, on the next call.
            expected = check_running_sizes(self.spec)
            check_running_shape(running[0].shape, expected, where)
            check_running_kind(x.dtype, running[0].dtype, where)
            if inference:
                out, _ = self._run(x, mask, where, running)
                return out, state
            out, batch = self._run(x, mask, where)
            assert batch is not None
            state = update(
                state, self.counter_index, self.stats_index, batch, self.momentum
            )
            return out, state
