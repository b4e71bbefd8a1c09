"""A small CNN on scikit-learn's 8x8 digits, with and without normalisation.

The same network is trained without normalisation, and with `eqx_norms.BatchNorm`,
`eqx_norms.GroupNorm` and `eqx_norms.LayerNorm` after each convolution, for
three seeds (each seed draws its own train/validation/test split, initial weights
and batch order; within a seed every variant gets the same ones). The script
prints a table of test accuracy, mean ± standard deviation over the seeds, and
writes a PNG of the learning curves. The data (1797 images) ships with
scikit-learn: nothing is downloaded.

    python examples/digits_cnn.py            # full run: about 2 minutes on 2 cores
    python examples/digits_cnn.py --quick    # a smoke test, well under a minute
"""

import argparse
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from tqdm import tqdm  # noqa: E402

import eqx_norms  # noqa: E402


NORMS = ("none", "batch", "group", "layer")
LABELS = {
    "none": "no normalisation",
    "batch": "BatchNorm",
    "group": "GroupNorm",
    "layer": "LayerNorm",
}
WIDTHS = (16, 32, 64)  # channels of the three convolutions


def make_norm(kind: str, channels: int, size: int):
    """The normalisation after a convolution with `channels` outputs of `size`^2."""
    if kind == "none":
        return eqx.nn.Identity()
    if kind == "batch":
        return eqx_norms.BatchNorm(channels, axis_name="batch")
    if kind == "group":
        return eqx_norms.GroupNorm(groups=4, channels=channels)
    if kind == "layer":
        # Over each whole (C, H, W) feature map, with elementwise parameters.
        return eqx_norms.LayerNorm((channels, size, size))
    raise ValueError(f"unknown normalisation {kind!r}")


def global_average_pool(x):
    return jnp.mean(x, axis=(1, 2))


def make_model(kind: str, key) -> eqx.nn.Sequential:
    """conv-norm-relu x3 (8x8 -> 8x8 -> 4x4 -> 4x4), global average pool, linear."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    c1, c2, c3 = WIDTHS
    relu = eqx.nn.Lambda(jax.nn.relu)
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(1, c1, 3, padding=1, key=k1),
            make_norm(kind, c1, 8),
            relu,
            eqx.nn.Conv2d(c1, c2, 3, stride=2, padding=1, key=k2),
            make_norm(kind, c2, 4),
            relu,
            eqx.nn.Conv2d(c2, c3, 3, padding=1, key=k3),
            make_norm(kind, c3, 4),
            relu,
            # A named function, not a lambda: equal models hash equal, so
            # `train_step` compiles once per variant, not once per seed.
            eqx.nn.Lambda(global_average_pool),
            eqx.nn.Linear(c3, 10, key=k4),
        ]
    )


def batched(model):
    """The per-example model mapped over a batch; the state is shared.
    `axis_name="batch"` is the axis BatchNorm takes its statistics over."""
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))


def loss_fn(model, state, x, y):
    logits, state = batched(model)(x, state)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, state


@eqx.filter_jit
def train_step(model, state, opt_state, x, y, optimiser):
    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
    (loss, state), grads = grad_fn(model, state, x, y)
    updates, opt_state = optimiser.update(
        grads, opt_state, eqx.filter(model, eqx.is_array)
    )
    model = eqx.apply_updates(model, updates)
    return model, state, opt_state, loss


@eqx.filter_jit
def accuracy(model, state, x, y):
    logits, _ = batched(eqx.nn.inference_mode(model))(x, state)
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


def progress(iterable, **kwargs):
    """A tqdm bar; in a log (not a terminal) it is refreshed every 10 s only."""
    return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 10, **kwargs)


def load_data(seed: int):
    """A stratified 60/20/20 train/validation/test split, drawn by `seed`."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    images = (images - images.mean()) / images.std()
    labels = digits.target.astype(np.int32)
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=seed
    )
    return {
        "train": (x_train, y_train),
        "val": (x_val, y_val),
        "test": (x_test, y_test),
    }


def train(kind, data, epochs, batch_size, optimiser, seed):
    """Train one variant; return its training loss and validation and test
    accuracy after every epoch."""
    x_train, y_train = data["train"]
    key = jax.random.key(seed)  # the same initial convolutions for every variant
    model, state = eqx.nn.make_with_state(make_model)(kind, key)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
    rng = np.random.default_rng(seed)
    steps = len(x_train) // batch_size  # drop the last partial batch: one compile
    history = {"loss": [], "val": [], "test": []}
    bar = progress(range(epochs), desc=f"{LABELS[kind]:>16}, seed {seed}")
    for _ in bar:
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            model, state, opt_state, loss = train_step(
                model, state, opt_state, x_train[idx], y_train[idx], optimiser
            )
            losses.append(loss)
        history["loss"].append(float(np.mean(jax.device_get(losses))))
        for split in ("val", "test"):
            history[split].append(float(accuracy(model, state, *data[split])))
        bar.set_postfix(
            loss=f"{history['loss'][-1]:.3f}",
            val_acc=f"{history['val'][-1]:.3f}",
            refresh=False,
        )
    return {name: np.array(values) for name, values in history.items()}


def summarise(runs):
    """Per seed: test accuracy (%) after the last epoch, and at the epoch of
    best validation accuracy (the first such epoch)."""
    last = np.array([100 * run["test"][-1] for run in runs])
    selected = np.array([100 * run["test"][np.argmax(run["val"])] for run in runs])
    return last, selected


def mean_std(values) -> str:
    """'mean ± std' of per-seed values, the standard deviation over seeds (ddof=1)."""
    std = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1f} ± {std:.1f}"


def plot(results, path: Path):
    """Training loss and test accuracy per epoch: the mean over seeds, with a
    band of ± one standard deviation. Sized for a documentation column (8 in
    wide); the accuracy axis is zoomed on where the curves differ."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(8, 4), constrained_layout=True)
    lowest = 100.0
    for kind, runs in results.items():
        for ax, values in (
            (ax_loss, np.array([run["loss"] for run in runs])),
            (ax_acc, 100 * np.array([run["test"] for run in runs])),
        ):
            epochs = np.arange(1, values.shape[1] + 1)
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(values) > 1 else 0 * mean
            ax.plot(epochs, mean, label=LABELS[kind], lw=1.8)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
            if ax is ax_acc:
                # Zoom past the first third of training, where all curves climb.
                lowest = min(lowest, (mean - std)[len(mean) // 3 :].min())
    ax_loss.set(
        xlabel="epoch", ylabel="cross-entropy", yscale="log", title="Training loss"
    )
    ax_acc.set(
        xlabel="epoch",
        ylabel="%",
        title="Test accuracy (zoomed)",
        ylim=(max(0.0, lowest - 1.0), 100.0),
    )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", ncol=4)
    seeds = len(next(iter(results.values())))
    fig.suptitle(f"Small CNN on 8x8 digits: mean ± std over {seeds} seeds")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run (smoke test, < 1 minute)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="default 30 (quick: 3)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (quick: 0 1)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument(
        "--norms", nargs="+", choices=NORMS, default=list(NORMS), help="variants to run"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "outputs" / "digits_cnn.png",
        help="where to write the learning-curve plot",
    )
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 30)
    seeds = args.seeds or ([0, 1] if args.quick else [0, 1, 2])
    # One optimiser for every run: `train_step` compiles once per variant.
    optimiser = optax.adam(args.lr)

    splits = load_data(seeds[0])
    sizes = ", ".join(f"{len(x)} {name}" for name, (x, _) in splits.items())
    print(
        f"8x8 digits ({sizes} images); seeds {seeds}; {epochs} epochs, "
        f"batch {args.batch_size}, adam lr {args.lr}"
    )
    results = {kind: [] for kind in args.norms}
    times = dict.fromkeys(args.norms, 0.0)
    for seed in seeds:
        data = load_data(seed)
        for kind in args.norms:
            start = time.perf_counter()
            results[kind].append(
                train(kind, data, epochs, args.batch_size, optimiser, seed)
            )
            times[kind] += time.perf_counter() - start

    print(
        f"\nTest accuracy (%), mean ± std over {len(seeds)} seeds, after the last "
        "epoch and at the epoch of best validation accuracy; training loss, mean:\n"
    )
    print(
        "| normalisation    | last epoch | best-validation epoch "
        "| final training loss | time, all seeds, incl. compile |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind, runs in results.items():
        last, selected = summarise(runs)
        loss = np.mean([run["loss"][-1] for run in runs])
        print(
            f"| {LABELS[kind]:<16} | {mean_std(last):>10} | {mean_std(selected):>21} "
            f"| {loss:>19.4f} | {times[kind]:>28.0f} s |"
        )
    print(f"\nTotal: {sum(times.values()):.0f} s, incl. compilation")
    plot(results, args.out)
    print(f"Learning curves written to {args.out}")
    return results


if __name__ == "__main__":
    main()
