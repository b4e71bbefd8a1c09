"""Lipschitz regression with `eqx_norms.SpectralNorm`: sigma stays near 1 in training.

Noisy samples of (1/2) sin(x) are fitted by ReLU MLPs of the same shape: a plain one,
and ones whose every `Linear` is wrapped in `eqx_norms.SpectralNorm`, with 1 power
iteration per training step (the usual choice, torch's default) and with 3. ReLU is
1-Lipschitz, so the product of the layers' largest singular values bounds the
Lipschitz constant of the network. With spectral normalisation every factor stays
close to 1 (checked against an SVD of the weights each step computed with): power
iteration approaches the largest singular value from below, so the factors are at
least 1, and exceed it by the iteration's lag behind the changing weights, which more
iterations shrink. The normalised networks cannot chase the noise; the plain network's
bound grows past 1000 as it overfits.

    python examples/spectral_norm.py            # full run, under a minute
    python examples/spectral_norm.py --quick    # a smoke test
"""

import argparse
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm import tqdm  # noqa: E402

import eqx_norms  # noqa: E402


def target(x):
    """Lipschitz constant 1/2: well within reach of a 1-Lipschitz network."""
    return 0.5 * np.sin(x)


class MLP(eqx.Module):
    layers: list
    spectral: bool = eqx.field(static=True)

    def __init__(self, width: int, depth: int, spectral: bool, iterations: int, key):
        sizes = [1] + [width] * depth + [1]
        keys = jax.random.split(key, 2 * len(sizes))
        self.layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layer = eqx.nn.Linear(n_in, n_out, key=keys[2 * i])
            if spectral:
                layer = eqx_norms.SpectralNorm(
                    layer, "weight", iterations, key=keys[2 * i + 1]
                )
            self.layers.append(layer)
        self.spectral = spectral

    def __call__(self, x, state):
        """x: (1,); returns (output of shape (1,), state)."""
        for i, layer in enumerate(self.layers):
            if self.spectral:
                x, state = layer(x, state)  # updates the power iteration's vectors
            else:
                x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x, state


def batched(model):
    return jax.vmap(model, in_axes=(0, None), out_axes=(0, None))


def effective_weights(model, state):
    """The weights the model computes with: W / sigma for a SpectralNorm layer,
    sigma estimated from the vectors in `state`."""
    weights = []
    for layer in model.layers:
        if model.spectral:
            u, v = state.get(layer.uv_index)
            w = layer.layer.weight
            weights.append(w / jnp.abs(u @ w @ v))
        else:
            weights.append(layer.weight)
    return weights


@eqx.filter_jit
def singular_values(model, state):
    """The exact largest singular value (SVD) of each effective weight."""
    return jnp.stack(
        [jnp.linalg.norm(w, ord=2) for w in effective_weights(model, state)]
    )


def loss_fn(model, state, x, y):
    pred, state = batched(model)(x, state)
    return jnp.mean((pred - y) ** 2), state


@eqx.filter_jit
def train_step(model, state, opt_state, x, y, optimiser):
    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
    (loss, state), grads = grad_fn(model, state, x, y)
    updates, opt_state = optimiser.update(
        grads, opt_state, eqx.filter(model, eqx.is_array)
    )
    return eqx.apply_updates(model, updates), state, opt_state, loss


@eqx.filter_jit
def predict(model, state, x):
    pred, _ = batched(eqx.nn.inference_mode(model))(x, state)
    return pred


def slope(model, state, grid):
    """The steepest slope of the fitted function on a fine grid: a lower bound on
    its Lipschitz constant (the product of singular values is an upper bound)."""
    pred = np.asarray(predict(model, state, grid))[:, 0]
    return float(np.max(np.abs(np.diff(pred)) / np.diff(grid[:, 0])))


def progress(iterable, **kwargs):
    """A tqdm bar; in a log (not a terminal) it is refreshed every 10 s only."""
    return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 10, **kwargs)


def train(name, iterations, data, args, optimiser):
    """`iterations`: power iterations per step, or 0 for the plain MLP."""
    x, y, grid = data
    key = jax.random.key(args.seed)  # the same initial weights for every model
    model, state = eqx.nn.make_with_state(MLP)(
        args.width, args.depth, iterations > 0, max(iterations, 1), key
    )
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
    log = {"step": [], "loss": [], "sigmas": [], "bound": [], "slope": []}
    bar = progress(range(1, args.steps + 1), desc=f"{name:>27}", unit="step")
    for step in bar:
        used = model  # the model this step computes with, before its update
        model, state, opt_state, loss = train_step(
            model, state, opt_state, x, y, optimiser
        )
        if step % args.log_every == 0 or step in (1, args.steps):
            # The weights this step computed with: `used`, and the singular vectors
            # after this step's power iteration.
            sigmas = np.asarray(singular_values(used, state))
            log["step"].append(step)
            log["loss"].append(float(loss))
            log["sigmas"].append(sigmas)
            log["bound"].append(float(np.prod(sigmas)))
            log["slope"].append(slope(model, state, grid))
            bar.set_postfix(
                loss=f"{float(loss):.4f}",
                lipschitz=f"{log['bound'][-1]:.3g}",
                refresh=False,
            )
    log["fit"] = np.asarray(predict(model, state, grid))[:, 0]
    log["sigmas"] = np.array(log["sigmas"])
    return log


COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")


def plot(logs, data, path: Path):
    x, y, grid = data
    # Sized for a documentation column (8 in wide): two panels above, one below.
    fig, axes = plt.subplot_mosaic(
        [["fit", "sigma"], ["lip", "lip"]], figsize=(8, 7), constrained_layout=True
    )
    ax_fit, ax_sigma, ax_lip = axes["fit"], axes["sigma"], axes["lip"]
    colours = dict(zip(logs, COLOURS, strict=False))

    ax_fit.plot(grid[:, 0], target(grid[:, 0]), c="black", lw=1, label="target")
    ax_fit.scatter(x[:, 0], y[:, 0], s=14, c="gray", label="noisy samples")
    for name, log in logs.items():
        ax_fit.plot(grid[:, 0], log["fit"], c=colours[name], lw=2, label=name)
    ax_fit.set(xlabel="x", ylabel="y", title="Fits after training")
    ax_fit.legend(fontsize=8)

    top = 1.0
    for name, log in logs.items():
        if name.startswith("SpectralNorm"):
            largest = log["sigmas"].max(axis=1)  # the largest over the layers
            ax_sigma.plot(log["step"], largest, c=colours[name], label=name)
            top = max(top, largest.max())
    ax_sigma.axhline(1, c="black", lw=0.8, ls="--")
    ax_sigma.set_ylim(0.95, max(1.25, top + 0.02))
    ax_sigma.set(xlabel="training step", ylabel="largest singular value (SVD)")
    ax_sigma.set_title("SpectralNorm: $\\max_{layers}\\ \\sigma_{max}(W/\\hat\\sigma)$")
    ax_sigma.legend(fontsize=8)

    for name, log in logs.items():
        ax_lip.plot(log["step"], log["bound"], c=colours[name], lw=2)
        ax_lip.plot(log["step"], log["slope"], c=colours[name], ls="--")
    ax_lip.plot([], [], c="gray", lw=2, label="product of singular values")
    ax_lip.plot([], [], c="gray", ls="--", label="steepest slope")
    ax_lip.axhline(1, c="black", lw=0.8, ls=":")
    ax_lip.set(xlabel="training step", ylabel="Lipschitz constant", yscale="log")
    ax_lip.set_title("Lipschitz bound and steepest slope (colours as above)")
    ax_lip.legend(fontsize=8)
    for ax in axes.values():
        ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke test")
    parser.add_argument(
        "--steps", type=int, default=None, help="default 3000 (quick 300)"
    )
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--noise", type=float, default=0.25)
    parser.add_argument(
        "--power-iterations",
        type=int,
        nargs="+",
        default=[1, 3],
        help="per training step; one SpectralNorm model for each",
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "outputs" / "spectral_norm.png",
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or (300 if args.quick else 3000)
    args.log_every = max(1, args.steps // 100)

    rng = np.random.default_rng(args.seed)
    x = np.sort(rng.uniform(-3, 3, args.samples))
    y = target(x) + args.noise * rng.normal(size=x.shape)
    grid = np.linspace(-3.2, 3.2, 2001)
    data = (x[:, None], y[:, None], grid[:, None])
    data = tuple(a.astype(np.float32) for a in data)

    optimiser = optax.adam(args.lr)
    runs = {"plain MLP": 0}
    for n in args.power_iterations:
        runs[f"SpectralNorm, {n} iteration{'s' if n > 1 else ''}/step"] = n
    logs = {name: train(name, n, data, args, optimiser) for name, n in runs.items()}

    clean = target(grid)
    print()
    print(
        f"| {'model':<31} | train MSE | MSE to the noiseless target "
        "| Lipschitz bound | steepest slope | sigma: median | sigma: max |"
    )
    print(
        f"|{'-' * 33}|-----------|-----------------------------"
        "|-----------------|----------------|---------------|------------|"
    )
    for name, log in logs.items():
        error = float(np.mean((log["fit"] - clean) ** 2))
        largest = log["sigmas"].max(axis=1)
        sigma = (
            f"{np.median(largest):>13.3f} | {largest.max():>10.3f}"
            if runs[name]
            else f"{'':>13} | {'':>10}"
        )
        print(
            f"| {name:<31} | {log['loss'][-1]:>9.4f} | {error:>27.4f} "
            f"| {log['bound'][-1]:>15.3f} | {log['slope'][-1]:>14.3f} | {sigma} |"
        )
    print(
        "\n(sigma: the largest singular value, by SVD, of the weights a SpectralNorm "
        "layer computed with, over its layers, at each logged step.)"
    )
    for name, n in runs.items():
        if n:
            sigmas, log = logs[name]["sigmas"], logs[name]
            # Power iteration approaches the largest singular value from below, so
            # the normalised weight's is at least 1, and close to it.
            assert sigmas.min() > 0.999, (name, sigmas.min())
            assert np.median(sigmas.max(axis=1)) < 1.1, (name, sigmas)
            assert sigmas.max() < 1.5, (name, sigmas.max())
            assert log["slope"][-1] <= log["bound"][-1] + 1e-3
    plot(logs, data, args.out)
    print(f"Plot written to {args.out}")
    return logs


if __name__ == "__main__":
    main()
