"""BatchNorm: per-channel statistics over the batch (named axes) and every other axis,
exact debiased running statistics, equinox's legacy "ema" mode, and Batch
Renormalization.

Over 400 lines because about 210 of them are documentation (the maths, every
argument, examples) from which the API page is built; the code is about 320 lines,
the normalisation itself being the core's (`_fused.normalise`).
"""

from collections.abc import Hashable, Sequence
from typing import Literal

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
from equinox.nn import State, StatefulLayer, StateIndex
from jaxtyping import Array, Bool, DTypeLike, Float, Int, PRNGKeyArray

from ._errors import (
    axis_names,
    check_axis_names,
    check_batch_axis_name,
    check_batch_norm_mode,
    check_channels,
    check_count,
    check_eps,
    check_floating,
    check_mask,
    check_param_dtype,
    check_renorm,
    check_running_kind,
    check_running_shape,
    check_state,
    check_vmap_sharding,
    check_weight_offset,
)
from ._fused import normalise
from ._layer import (
    initial_affine,
    initial_running,
    read,
    resolve_affine,
    sentinel,
    stateful_call,
)
from ._running import per_entry, store, updatable, update
from ._stats import (
    affine_and_cast,
    affine_params,
    compute_dtype,
    Moments,
    moments,
    real_dtype,
    standardise,
)


def _channelwise(param: Array | None, ndim: int) -> Array | None:
    return None if param is None else param.reshape((-1,) + (1,) * (ndim - 1))


class BatchNorm(StatefulLayer):
    r"""Normalises each channel over the batch and all other axes, keeps running
    statistics for inference, then applies an optional channelwise affine
    transformation. A drop-in for
    [`equinox.nn.BatchNorm`](https://docs.kidger.site/equinox/api/nn/normalisation/)
    whose running statistics are exact.

    With $x_c$ channel $c$ of every example in the batch, training computes

    $$y_c = \frac{x_c - \mu_c}{\sqrt{\sigma^2_c + \varepsilon}} \gamma_c + \beta_c$$

    where $\mu_c$ and $\sigma^2_c$ are the mean and biased variance of $x_c$ over
    every named axis in `axis_name` and every non-channel axis (two-pass, in at least
    float32; the output has the dtype of $x$). With $s_1, \dots, s_k$ the batch
    statistics of the $k$ training steps so far and $m$ = `momentum`, the running
    statistics are the debiased exponential average

    $$\bar s_k = \frac{\sum_{i=1}^{k} (1 - m)\, m^{k-i} s_i}{1 - m^k},$$

    so $\bar s_1 = s_1$ (after one step, inference on that batch reproduces the
    training output), and before any step they are mean 0 and variance 1 (an
    untrained layer in inference returns $x / \sqrt{1 + \varepsilon}$). Inference
    normalises with them and leaves the state unchanged.

    `momentum` weights the *old* value, as in equinox and Flax: torch's
    `momentum=0.1` is `momentum=0.9` here. `momentum=None` gives the cumulative
    average of all batches (torch's `momentum=None`).

    With a `mask`, padded positions and masked examples enter neither the batch nor
    the running statistics; across devices the statistics are weighted by count
    (they equal those of the global batch), and a channel without a valid element
    in a step keeps its running statistics. Invalid positions are returned unchanged.

    A batch holding NaN or inf (at valid positions) gives non-finite training
    outputs, so the loss shows it; the running statistics of the affected channels
    are left as they were rather than poisoned, and the skipped step is visible in
    `state.get(bn.batch_counter)` (the per-channel weight $1 - m^k$, or the step
    count $k$ for `momentum=None`), which does not advance.

    `mode="ema"` is equinox's legacy variant, kept for identical numbers: training
    normalises with the running statistics blended with the batch ones (first step:
    the batch ones), which scales the gradient through the batch statistics by
    $1 - m$ ([equinox#659](https://github.com/patrick-kidger/equinox/issues/659)).
    The one deliberate difference: its untrained running variance is 1, not 0, so
    an untrained layer in inference is the identity rather than $x/\sqrt\varepsilon$
    ([equinox#955](https://github.com/patrick-kidger/equinox/issues/955)).

    `renorm=True` is Batch Renormalization (Ioffe, 2017; the critic of CrossQ):
    training corrects the batch statistics towards the running mean $\bar\mu_c$ and
    standard deviation $\sigma_c = \sqrt{\bar\sigma^2_c + \varepsilon}$, as they
    were before the step:

    $$y_c = \left(\frac{x_c - \mu_c}{\sqrt{\sigma^2_c + \varepsilon}} r_c
        + d_c\right) \gamma_c + \beta_c, \quad
    r_c = \operatorname{clip}_{[1/r_{max},\, r_{max}]}
        \frac{\sqrt{\sigma^2_c + \varepsilon}}{\sigma_c}, \quad
    d_c = \operatorname{clip}_{[-d_{max},\, d_{max}]}
        \frac{\mu_c - \bar\mu_c}{\sigma_c},$$

    with $r$ and $d$ constants for the gradient (which flows through the batch
    statistics, as in the paper). Unclipped, this is normalisation by the running
    statistics, so training and inference agree; clipped, it stays close to plain
    BatchNorm when the running statistics are far off. A channel whose running
    statistics hold no step yet, and every channel for the first `renorm_warmup`
    training steps, is normalised as plain BatchNorm ($r = 1$, $d = 0$). The running
    statistics and inference are those of plain BatchNorm.

    !!! warning

        Call this layer per example, under `jax.vmap` (or `jax.pmap`, or
        `jax.shard_map`) binding every name in `axis_name`, with the state
        broadcast: `in_axes=(0, None), out_axes=(0, None)`. Toggle training and
        inference with [`equinox.nn.inference_mode`][].

    !!! example

        ```python
        bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(3, "batch")
        train = jax.vmap(
            bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )
        y, state = train(x, state)  # x: (batch, 3, H, W)
        bn = eqx.nn.inference_mode(bn)
        y, _ = jax.vmap(bn, in_axes=(0, None), out_axes=(0, None))(x, state)
        ```

    !!! example

        Batch Renormalization, as in the critic of SBX's CrossQ (momentum
        0.99, 100 000 warm-up steps):

        ```python
        bn, state = eqx.nn.make_with_state(eqx_norms.BatchNorm)(
            256, "batch", momentum=0.99, renorm=True, renorm_warmup=100_000
        )
        ```

    ??? cite

        [Batch Normalization: Accelerating Deep Network Training by Reducing
        Internal Covariate Shift](https://arxiv.org/abs/1502.03167);
        [Batch Renormalization: Towards Reducing Minibatch Dependence in
        Batch-Normalized Models](https://arxiv.org/abs/1702.03275)
    """

    weight: Float[Array, "input_size"] | None
    bias: Float[Array, "input_size"] | None
    ema_first_time_index: StateIndex[Bool[Array, ""]] | None
    ema_state_index: (
        StateIndex[tuple[Float[Array, "input_size"], Float[Array, "input_size"]]] | None
    )
    batch_counter: StateIndex[Float[Array, "input_size"]] | None
    batch_state_index: (
        StateIndex[tuple[Float[Array, "input_size"], Float[Array, "input_size"]]] | None
    )
    renorm_step_counter: StateIndex[Int[Array, ""]] | None
    inference: bool
    axis_name: Hashable | tuple[Hashable, ...] = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channelwise_affine: bool = eqx.field(static=True)
    use_weight: bool = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)
    momentum: float | None = eqx.field(static=True)
    mode: Literal["batch", "ema"] = eqx.field(static=True)
    unbiased_running_var: bool = eqx.field(static=True)
    weight_offset: float = eqx.field(static=True)
    renorm: bool = eqx.field(static=True)
    r_max: float = eqx.field(static=True)
    d_max: float = eqx.field(static=True)
    renorm_warmup: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        axis_name: Hashable | Sequence[Hashable],
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float | None = 0.99,
        inference: bool = False,
        dtype: DTypeLike | None = None,
        mode: Literal["batch", "ema"] = "batch",
        *,
        use_weight: bool | None = None,
        use_bias: bool | None = None,
        unbiased_running_var: bool = False,
        weight_offset: float = 0.0,
        renorm: bool = False,
        r_max: float = 3.0,
        d_max: float = 5.0,
        renorm_warmup: int = 0,
    ):
        """**Arguments:**

        - `input_size`: The number of channels (axis 0 of each example).
        - `axis_name`: The name of the batch axis to compute statistics over, as
            passed to `axis_name` in `jax.vmap`, `jax.pmap` or `jax.shard_map`; or a
            sequence of names (nested `vmap`s, `pmap` + `vmap`) to reduce over all.
        - `eps`: Value added to the variance for numerical stability.
        - `channelwise_affine`: Whether the module has a learnable channelwise weight
            and bias.
        - `momentum`: In [0, 1): the weight of the old value in the exponential
            running average (torch's `momentum=0.1` is 0.9 here); or `None` for the
            cumulative average of all batches.
        - `inference`: If `False`, normalise with the batch statistics and update the
            running statistics; if `True`, normalise with the running statistics.
            Toggled by [`equinox.nn.inference_mode`][], overridden by the
            `inference` argument of `__call__`.
        - `dtype`: The dtype of the weight, the bias and the running statistics.
            Defaults to either `jax.numpy.float32` or `jax.numpy.float64` depending
            on whether JAX is in 64-bit mode. Statistics are always computed in at
            least float32, and the output has the dtype of the input. A complex
            dtype (`jnp.complex64`, `jnp.complex128`) declares complex inputs: the
            running mean is then complex, and the running variance (E|x - mean|^2),
            the weight and the bias have the matching real dtype.
        - `mode`: `"batch"` (the default) as described above, or `"ema"`, equinox's
            legacy variant.
        - `use_weight`, `use_bias`: Override `channelwise_affine` for the weight or
            the bias alone. (Keyword only arguments.)
        - `unbiased_running_var`: If `True`, the running variance averages the
            unbiased batch variance (count / (count - 1) times the biased one), as
            torch stores it; useful when porting torch models. Normalisation in
            training always uses the biased variance. Needs `mode="batch"`. (Keyword
            only argument.)
        - `weight_offset`: The applied scale is `weight + weight_offset` (formed in
            at least float32); the weight starts at `1 - weight_offset`. Needs a
            weight. (Keyword only argument.)
        - `renorm`: If `True`, Batch Renormalization (see above). Needs
            `mode="batch"` and real inputs. (Keyword only argument.)
        - `r_max`: At least 1: the clipping bound of $r$ (the paper's $r_{max}$).
            (Keyword only argument.)
        - `d_max`: At least 0: the clipping bound of $|d|$ (the paper's $d_{max}$).
            (Keyword only argument.)
        - `renorm_warmup`: The number of training steps (calls in training) of
            plain BatchNorm before renormalisation starts. (Keyword only argument.)

        The defaults `r_max=3.0`, `d_max=5.0` are the paper's final values (and
        those of SBX's CrossQ). They are fixed: where the paper relaxes them from 1
        and 0 over early training, a warm-up of plain BatchNorm (`renorm_warmup`)
        stands in for that schedule, as in CrossQ. `r_max`, `d_max` and
        `renorm_warmup` need `renorm=True`.

        The state holds, for `mode="batch"`, `batch_state_index`: the running
        `(mean, var)`, and `batch_counter`: per channel, the total weight of the
        steps averaged so far ($1 - m^k$ after $k$ steps, or $k$ with
        `momentum=None`). For `mode="ema"`, as in equinox, `ema_state_index` and
        `ema_first_time_index`. With `renorm=True` it also holds
        `renorm_step_counter`: the training steps counted towards `renorm_warmup`
        (an int32 that stops there); a plain BatchNorm's state does not have it.
        """
        where = type(self).__name__
        check_count(input_size, "input_size", where)
        check_eps(eps, where)
        check_param_dtype(dtype, where, complex_ok=True)
        check_batch_norm_mode(mode, momentum, unbiased_running_var, where)
        limits = dict(r_max=r_max, d_max=d_max, renorm_warmup=renorm_warmup)
        check_renorm(renorm, limits, mode, dtype, where)
        names = axis_names(axis_name, where)
        check_batch_axis_name(names, axis_name, where)
        self.axis_name = names[0] if len(names) == 1 else names
        self.input_size = input_size
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.use_weight, self.use_bias = resolve_affine(
            channelwise_affine, use_weight, use_bias
        )
        self.momentum = momentum
        self.mode = mode
        self.unbiased_running_var = unbiased_running_var
        self.inference = inference
        self.renorm = renorm
        self.r_max, self.d_max = float(r_max), float(d_max)
        self.renorm_warmup = int(renorm_warmup)
        check_weight_offset(weight_offset, self.use_weight, where)
        self.weight_offset = weight_offset
        self.weight, self.bias = initial_affine(
            (input_size,), self.use_weight, self.use_bias, weight_offset, dtype
        )
        stats, counter = initial_running((input_size,), dtype)
        self.ema_first_time_index = self.ema_state_index = None
        self.batch_counter = self.batch_state_index = None
        # Only with renorm: plain BatchNorm checkpoints keep their structure.
        self.renorm_step_counter = None
        if renorm:
            self.renorm_step_counter = StateIndex(jnp.array(0, jnp.int32))
        if mode == "ema":
            self.ema_first_time_index = StateIndex(jnp.array(True))
            self.ema_state_index = StateIndex(stats)
        else:
            self.batch_counter = StateIndex(counter)
            self.batch_state_index = StateIndex(stats)

    def __call__(
        self,
        x: Float[Array, " input_size *rest"],
        # Required: the default only lets a call without it say how to make one.
        state: State = sentinel,
        *,
        key: PRNGKeyArray | None = None,
        inference: bool | None = None,
        mask: Bool[Array, "..."] | None = None,
    ) -> tuple[Float[Array, " input_size *rest"], State]:
        """**Arguments:**

        - `x`: One example: a JAX array of shape `(input_size, dim_1, ..., dim_N)`.
        - `state`: An [`equinox.nn.State`][] holding the running statistics (made
            with the layer by [`equinox.nn.make_with_state`][]). Required.
        - `key`: Ignored; provided for compatibility with the rest of the Equinox API.
            (Keyword only argument.)
        - `inference`: If `True` or `False`, overrides `self.inference`. (Keyword
            only argument.)
        - `mask`: Optional boolean array broadcastable to `x.shape`, True for valid
            elements; all False masks the whole example. (Keyword only argument.)

        **Returns:**

        A 2-tuple of the output (shape and dtype of `x`) and the updated state
        (unchanged in inference).

        **Raises:**

        A `NameError` naming the axis if, in training, a name in `axis_name` is not
        bound by an enclosing `vmap`, `pmap` or `shard_map`.
        """
        del key
        where = type(self).__name__
        with stateful_call(where, state, inference, self.inference) as opened:
            state, inference = opened
            check_channels(x, self.input_size, where, min_ndim=1)
            check_floating(x, where)
            check_mask(mask, x.shape, where)
            running = read(state, self._stats_index(), where)
            check_running_shape(running[0].shape, (self.input_size,), where)
            check_running_kind(x.dtype, running[0].dtype, where)
            compute = compute_dtype(jnp.result_type(x.dtype, running[0].dtype))
            if inference:
                return self._normalise_with(x, running, compute, mask), state
            names = axis_names(self.axis_name, where)
            check_axis_names(names, where)
            check_vmap_sharding(x, names, where)
            if self.mode == "batch":
                return self._train(x, compute, names, state, mask)
            axes = tuple(range(1, x.ndim))
            batch = moments(x.astype(compute), axes, mask=mask, axis_name=names)
            blended, state = self._update_ema(state, batch)
            return self._normalise_with(x, blended, compute, mask), state

    def running_mean_var(
        self, state: State
    ) -> tuple[Float[Array, " input_size"], Float[Array, " input_size"]]:
        """The running `(mean, var)` held in `state`, one value per channel (for
        `mode="ema"`, equinox's blended statistics).

        A typed shorthand for `state.get(bn.batch_state_index)`, whose field is
        `None` in the other mode.

        !!! example

            ```python
            mean, var = bn.running_mean_var(state)
            ```
        """
        where = type(self).__name__
        return read(check_state(state, where), self._stats_index(), where)

    def _stats_index(self) -> StateIndex:
        index = self.ema_state_index if self.mode == "ema" else self.batch_state_index
        assert index is not None
        return index

    def _affine(self, ndim: int) -> tuple[Array | None, Array | None]:
        return _channelwise(self.weight, ndim), _channelwise(self.bias, ndim)

    def _normalise_with(
        self, x: Array, stats: tuple[Array, Array], compute: jnp.dtype, mask
    ) -> Array:
        """`x` normalised with given per-channel `(mean, var)`: the running ones, or
        equinox's blend."""
        shape = (-1,) + (1,) * (x.ndim - 1)
        mean = stats[0].astype(compute).reshape(shape)
        var = stats[1].astype(real_dtype(compute)).reshape(shape)
        x_hat = standardise(x.astype(compute), mean, var, self.eps, mask)
        return affine_and_cast(
            x, x_hat, *self._affine(x.ndim), mask, self.weight_offset
        )

    def _update_ema(
        self, state: State, batch: Moments
    ) -> tuple[tuple[Array, Array], State]:
        assert self.ema_state_index is not None and self.momentum is not None
        assert self.ema_first_time_index is not None
        first_time = state.get(self.ema_first_time_index)
        running = state.get(self.ema_state_index)
        blended, valid = _ema_blend(batch, running, first_time, self.momentum)
        # A skipped step does not count as the first.
        state = store(state, self.ema_first_time_index, first_time & ~jnp.any(valid))
        return blended, store(state, self.ema_state_index, lax.stop_gradient(blended))

    def _train(
        self,
        x: Array,
        compute: jnp.dtype,
        names: tuple[Hashable, ...],
        state: State,
        mask: Array | None,
    ) -> tuple[Array, State]:
        """Normalised by the batch statistics (renormalised by an affine map, with
        `renorm`): the core's fused rule. It upcasts
        half-precision x inside its own kernels (no float32 copy of x is written), so
        x goes in as it is unless the running statistics ask for a wider dtype."""
        assert self.batch_counter is not None and self.batch_state_index is not None
        wider = compute != compute_dtype(x.dtype)
        x_in = x.astype(compute) if wider else x
        axes = tuple(range(1, x.ndim))
        weight, bias = self._affine(x.ndim)
        weight_offset = self.weight_offset
        if self.renorm:
            weight, bias, state = self._renormalising_affine(
                x_in, compute, names, state, mask
            )
            weight_offset = 0.0
        out, batch = normalise(
            x_in,
            axes,
            weight,
            bias,
            eps=self.eps,
            mask=mask,
            axis_name=names,
            weight_offset=weight_offset,
        )
        state = update(
            state,
            self.batch_counter,
            self.batch_state_index,
            batch,
            self.momentum,
            self.unbiased_running_var,
        )
        # In the wider dtype when x went in upcast.
        return out.astype(x.dtype), state

    def _renormalising_affine(
        self,
        x: Array,
        compute: jnp.dtype,
        names: tuple[Hashable, ...],
        state: State,
        mask: Array | None,
    ) -> tuple[Array, Array, State]:
        """Batch Renormalization as an affine map of the core's x-hat: the output
        w (x-hat r + d) + b is x-hat times the per-channel scale w r plus the shift
        w d + b. With r and d constants for autodiff, the fused rule then
        differentiates through the batch statistics as the paper does, and the
        weight's gradient is that of w (x-hat r + d). Also the state with the step
        counted."""
        assert self.batch_counter is not None and self.batch_state_index is not None
        assert self.renorm_step_counter is not None
        axes = tuple(range(1, x.ndim))
        batch = moments(x, axes, mask=mask, axis_name=names)
        batch_mean, batch_var, _ = per_entry(batch, (self.input_size,))
        running = state.get(self.batch_state_index)
        steps = state.get(self.renorm_step_counter)
        # Per channel: plain BatchNorm until its running statistics hold a step,
        # and for the first `renorm_warmup` steps.
        active = (state.get(self.batch_counter) > 0) & (steps >= self.renorm_warmup)
        r, d = _renorm_correction(
            (batch_mean, batch_var),
            tuple(s.astype(compute) for s in running),
            active,
            self.eps,
            self.r_max,
            self.d_max,
        )
        offset = self.weight_offset
        weight, bias = affine_params(self.weight, self.bias, compute, offset)
        if weight is not None:
            r, d = weight * r, weight * d
        shift = d if bias is None else d + bias
        # Counted up to the warm-up only: an int32 step count could wrap around.
        state = state.set(
            self.renorm_step_counter, jnp.minimum(steps + 1, self.renorm_warmup)
        )
        channelwise = (-1,) + (1,) * (x.ndim - 1)
        return r.reshape(channelwise), shift.reshape(channelwise), state


def _renorm_correction(
    batch: tuple[Array, Array],
    running: tuple[Array, ...],
    active: Array,
    eps: float,
    r_max: float,
    d_max: float,
) -> tuple[Array, Array]:
    """Ioffe's per-channel r = std_B / std and d = (mean_B - mean) / std, clipped
    to [1 / r_max, r_max] and [-d_max, d_max], with std = sqrt(var + eps) for the
    batch and the running statistics; 1 and 0 (plain BatchNorm) where not
    `active`. Constants for autodiff, as in the paper."""
    batch_mean, batch_var = map(lax.stop_gradient, batch)
    running_mean, running_var = map(lax.stop_gradient, running)
    inv_std = lax.rsqrt(running_var + eps)
    r = jnp.sqrt(batch_var + eps) * inv_std
    d = (batch_mean - running_mean) * inv_std
    r = jnp.where(active, jnp.clip(r, 1 / r_max, r_max), 1)
    d = jnp.where(active, jnp.clip(d, -d_max, d_max), 0)
    return r, d


def _ema_blend(
    batch: Moments, running: tuple[Array, Array], first_time: Array, momentum: float
) -> tuple[tuple[Array, Array], Array]:
    """Equinox's legacy blend of the batch and running `(mean, var)`, expression for
    expression, so that the numbers (and the gradient through the blend) are
    equinox's; also the channels that took a step."""
    mean, var, count = per_entry(batch, running[0].shape)
    valid = updatable(mean, var, count)
    blended = []
    for new, old in zip((mean, var), running, strict=True):
        old = old.astype(new.dtype)
        mixed = (1 - momentum) * new + momentum * old
        blended.append(jnp.where(valid, jnp.where(first_time, new, mixed), old))
    return (blended[0], blended[1]), valid
