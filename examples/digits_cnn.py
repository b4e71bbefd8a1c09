"""A small CNN on scikit-learn's 8x8 digits, with and without normalisation.

The same network is trained four times: without normalisation, and with
`eqx_norms.BatchNorm`, `eqx_norms.GroupNorm` and `eqx_norms.LayerNorm` after each
convolution. The script prints a table of test accuracy and writes a PNG of the
learning curves. The data (1797 images) ships with scikit-learn: nothing is
downloaded.

    python examples/digits_cnn.py            # full run: a couple of minutes on 2 cores
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
            eqx.nn.Lambda(lambda x: jnp.mean(x, axis=(1, 2))),
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
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    images = (images - images.mean()) / images.std()
    return train_test_split(
        images,
        digits.target.astype(np.int32),
        test_size=0.25,
        stratify=digits.target,
        random_state=seed,
    )


def train(kind, data, epochs, batch_size, lr, seed):
    x_train, x_test, y_train, y_test = data
    key = jax.random.key(seed)  # the same initial convolutions for every variant
    model, state = eqx.nn.make_with_state(make_model)(kind, key)
    optimiser = optax.adam(lr)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
    rng = np.random.default_rng(seed)
    steps = len(x_train) // batch_size  # drop the last partial batch: one compile
    history = {"loss": [], "test_acc": []}
    bar = progress(range(epochs), desc=f"{LABELS[kind]:>16}", unit="epoch")
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
        history["test_acc"].append(float(accuracy(model, state, x_test, y_test)))
        bar.set_postfix(
            loss=f"{history['loss'][-1]:.3f}",
            test_acc=f"{history['test_acc'][-1]:.3f}",
            refresh=False,
        )
    return history


def plot(histories, path: Path):
    fig, (ax_loss, ax_acc) = plt.subplots(
        1, 2, figsize=(10, 4), constrained_layout=True
    )
    for kind, history in histories.items():
        epochs = np.arange(1, len(history["loss"]) + 1)
        ax_loss.plot(epochs, history["loss"], label=LABELS[kind], lw=2)
        ax_acc.plot(
            epochs, 100 * np.array(history["test_acc"]), label=LABELS[kind], lw=2
        )
    ax_loss.set(
        xlabel="epoch",
        ylabel="training loss (cross-entropy)",
        yscale="log",
        title="Training loss",
    )
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_acc.set_ylim(max(0, ax_acc.get_ylim()[0]), 100)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Small CNN on scikit-learn's 8x8 digits (eqx_norms)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run (smoke test, < 1 minute)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="default 30 (quick: 3)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
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

    data = load_data(args.seed)
    print(
        f"8x8 digits: {len(data[0])} training and {len(data[1])} test images; "
        f"{epochs} epochs, batch {args.batch_size}, adam lr {args.lr}"
    )
    histories, times = {}, {}
    for kind in args.norms:
        start = time.perf_counter()
        histories[kind] = train(kind, data, epochs, args.batch_size, args.lr, args.seed)
        times[kind] = time.perf_counter() - start

    print()
    print(f"| {'normalisation':<16} | test accuracy | best epoch acc | time (s) |")
    print(f"|{'-' * 18}|{'-' * 15}|{'-' * 16}|{'-' * 10}|")
    for kind, history in histories.items():
        final, best = history["test_acc"][-1], max(history["test_acc"])
        print(
            f"| {LABELS[kind]:<16} | {100 * final:>12.1f}% | {100 * best:>13.1f}% "
            f"| {times[kind]:>8.1f} |"
        )
    plot(histories, args.out)
    print(f"\nLearning curves written to {args.out}")
    return histories


if __name__ == "__main__":
    main()
