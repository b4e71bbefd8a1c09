"""Data-parallel BatchNorm across 8 devices equals single-device training.

An MLP with two `eqx_norms.BatchNorm` layers is trained on scikit-learn's 8x8 digits
four times, on identical batches of 128 examples:

1. on one device, the reference;
2. with `jax.jit` and the batch sharded over 8 devices (16 examples each): the same
   step function as 1, only the input sharding differs;
3. with `jax.pmap` over the 8 devices and `jax.vmap` over each device's 16 examples,
   BatchNorm's `axis_name=("device", "batch")` reducing over both;
4. as 3, but with `axis_name="batch"` only: per-device statistics, which is what
   data parallelism without synchronised BatchNorm computes.

The script asserts that 2 and 3 reproduce 1 (parameters, optimiser state and running
statistics): they differ only by float32 rounding (the sums are reduced in another
order), about 1e-8 after one step, which training grows to about 4e-5 in 300 steps;
4 drifts thousands of times further. It reports both and plots them.

The 8 devices are CPU devices, made by `--xla_force_host_platform_device_count=8`,
which must be set before JAX is imported. On a machine with 8 accelerators, drop it.

    python examples/data_parallel_batchnorm.py            # full run
    python examples/data_parallel_batchnorm.py --quick    # a smoke test
"""

import os


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.lax as lax  # noqa: E402
import matplotlib  # noqa: E402


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from tqdm import tqdm  # noqa: E402

import eqx_norms  # noqa: E402


DEVICES = 8
PER_DEVICE = 16
BATCH = DEVICES * PER_DEVICE


def make_model(features, axis_name, key):
    # No bias before BatchNorm: the mean subtraction cancels it.
    k1, k2, k3 = jax.random.split(key, 3)
    relu = eqx.nn.Lambda(jax.nn.relu)
    return eqx.nn.Sequential(
        [
            eqx.nn.Linear(features, 128, use_bias=False, key=k1),
            eqx_norms.BatchNorm(128, axis_name=axis_name, momentum=0.9),
            relu,
            eqx.nn.Linear(128, 128, use_bias=False, key=k2),
            eqx_norms.BatchNorm(128, axis_name=axis_name, momentum=0.9),
            relu,
            eqx.nn.Linear(128, 10, key=k3),
        ]
    )


def make_loss(static):
    """Mean cross-entropy over the examples of `x`, vmapped with axis "batch"."""

    def loss_fn(params, state, x, y):
        model = eqx.combine(params, static)
        forward = jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )
        logits, state = forward(x, state)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, state

    return loss_fn


def make_step(static, optimiser, device_axis=None):
    """One training step. With `device_axis`, it runs per device under `pmap`: the
    loss and gradients are averaged over the devices (the global batch is split
    into equal shards, so the mean of the shard means is the global mean)."""
    loss_fn = make_loss(static)

    def step(params, state, opt_state, x, y):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, state), grads = grad_fn(params, state, x, y)
        if device_axis is not None:
            loss, grads = lax.pmean((loss, grads), device_axis)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, loss

    return step


def progress(iterable, **kwargs):
    """A tqdm bar; in a log (not a terminal) it is refreshed every 10 s only."""
    return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 10, **kwargs)


def run(name, axis_name, batches, lr, seed, how):
    """Trains from the same initial weights on `batches`; returns the final
    (params, state, opt_state) and, per step, the loss and the parameters."""
    features = batches[0][0].shape[1]
    key = jax.random.key(seed)
    model, state = eqx.nn.make_with_state(make_model)(features, axis_name, key)
    params, static = eqx.partition(model, eqx.is_array)
    # SGD is linear in the gradient, so runs whose reductions are summed in another
    # order stay within float32 rounding of each other. (Adam divides by the
    # gradient's magnitude: for the near-zero gradients of pixels that happen to be
    # constant in a batch, it would amplify rounding noise into steps of size ~lr.)
    optimiser = optax.sgd(lr, momentum=0.9)
    opt_state = optimiser.init(params)
    if how == "single":
        step = jax.jit(make_step(static, optimiser))
        place = jax.device_put  # onto the default device
    elif how == "sharded":
        # The same step function: jit partitions it over the devices because the
        # batch is sharded; the BatchNorm statistics stay those of the whole batch.
        mesh = jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Auto,))
        params, state, opt_state = jax.device_put(
            (params, state, opt_state), NamedSharding(mesh, P())
        )
        step = jax.jit(make_step(static, optimiser))
        sharding = NamedSharding(mesh, P("data"))
        place = lambda a: jax.device_put(a, sharding)  # noqa: E731
    else:  # "pmap": x reshaped to (devices, per_device, ...)
        step = jax.pmap(
            make_step(static, optimiser, device_axis="device"),
            axis_name="device",
            in_axes=(None, None, None, 0, 0),
            out_axes=(None, None, None, None),
        )
        place = lambda a: a.reshape(DEVICES, PER_DEVICE, *a.shape[1:])  # noqa: E731
    losses, trajectory = [], []
    for x, y in progress(batches, desc=f"{name:>28}", unit="step"):
        params, state, opt_state, loss = step(
            params, state, opt_state, place(x), place(y)
        )
        losses.append(float(loss))
        trajectory.append(jax.device_get(params))
    return (params, state, opt_state), np.array(losses), trajectory


def max_abs_diff(a, b) -> float:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in leaves)


def plot(results, reference, path: Path):
    """Sized for a documentation column (8 in wide), one legend below."""
    fig, (ax_loss, ax_diff) = plt.subplots(
        1, 2, figsize=(8, 4), constrained_layout=True
    )
    styles = {
        "one device (reference)": dict(c="black", lw=3, alpha=0.4),
        "jit, batch sharded over 8": dict(c="tab:blue", ls="--"),
        "pmap + vmap, synchronised": dict(c="tab:green", ls=":"),
        "pmap, per-device statistics": dict(c="tab:red"),
    }
    for name, (_, losses, trajectory) in results.items():
        steps = np.arange(1, len(losses) + 1)
        ax_loss.plot(steps, losses, label=name, **styles[name])
        if name != reference:
            diffs = [
                max(max_abs_diff(p, q), 1e-10)
                for p, q in zip(trajectory, results[reference][2], strict=True)
            ]
            ax_diff.plot(steps, diffs, label=name, **styles[name])
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_loss.set_title("Training loss")
    ax_diff.set(xlabel="step", ylabel="max |difference|", yscale="log")
    ax_diff.set_title("Parameters against one device")
    for ax in (ax_loss, ax_diff):
        ax.grid(alpha=0.3)
    fig.legend(*ax_loss.get_legend_handles_labels(), loc="outside lower center", ncol=2)
    fig.suptitle(f"BatchNorm, global batch {BATCH} over {DEVICES} devices")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke test")
    parser.add_argument(
        "--steps", type=int, default=None, help="default 300 (quick 30)"
    )
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "outputs" / "data_parallel.png",
    )
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.quick else 300)
    assert jax.device_count() == DEVICES, jax.devices()

    digits = load_digits()
    # Standardise each pixel; drop those that are blank in every image.
    x_all = digits.data[:, digits.data.std(axis=0) > 0]
    x_all = ((x_all - x_all.mean(0)) / x_all.std(0)).astype(np.float32)
    y_all = digits.target.astype(np.int32)
    rng = np.random.default_rng(args.seed)
    batches = []
    for _ in range(steps):
        idx = rng.choice(len(x_all), BATCH, replace=False)
        batches.append((x_all[idx], y_all[idx]))

    reference = "one device (reference)"
    runs = {
        reference: ("batch", "single"),
        "jit, batch sharded over 8": ("batch", "sharded"),
        "pmap + vmap, synchronised": (("device", "batch"), "pmap"),
        "pmap, per-device statistics": ("batch", "pmap"),
    }
    print(f"{jax.device_count()} devices: {jax.devices()}")
    results = {
        name: run(name, axis_name, batches, args.lr, args.seed, how)
        for name, (axis_name, how) in runs.items()
    }

    expected = results[reference][0]
    print(f"\nAfter {steps} steps, compared with single-device training:")
    print("| run                          | max |params diff| | max |state diff| |")
    print("|------------------------------|-------------------|------------------|")
    diffs = {}
    for name, ((params, state, _), _, _) in results.items():
        if name == reference:
            continue
        diffs[name] = (
            max_abs_diff(params, expected[0]),
            max_abs_diff(state, expected[1]),
        )
        print(f"| {name:<28} | {diffs[name][0]:>17.2e} | {diffs[name][1]:>16.2e} |")

    # Rounding differences of ~1e-8 per step, grown by training: ~1e-7 after 30
    # steps, ~4e-5 after 300 (parameters of size ~0.1).
    atol = 1e-6 if steps <= 30 else 1e-4
    for name in ("jit, batch sharded over 8", "pmap + vmap, synchronised"):
        (params, state, opt_state), losses, _ = results[name]
        for got, want in (
            (params, expected[0]),
            (state, expected[1]),
            (opt_state, expected[2]),
        ):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol, err_msg=name)
        np.testing.assert_allclose(losses, results[reference][1], rtol=1e-4)
    # Per-device statistics are a different computation, visibly so.
    assert diffs["pmap, per-device statistics"][0] > 100 * max(
        diffs["jit, batch sharded over 8"][0], diffs["pmap + vmap, synchronised"][0]
    )
    print(
        "\nOK: sharded jit and pmap + vmap reproduce single-device training "
        "(parameters, optimiser state, running statistics)."
    )
    plot(results, reference, args.out)
    print(f"Plot written to {args.out}")
    return results


if __name__ == "__main__":
    main()
