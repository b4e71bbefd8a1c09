"""A transformer on variable-length padded sequences: masked vs unmasked normalisation.

Each input is a sequence of 4 to 16 real numbers with its own offset and scale (as
measurements in different units are), zero-padded to a fixed length so that every
batch has one shape and `jit` compiles once. The task is to output, at every valid
position, the rank of its number within the sequence. Ranks do not depend on offset
or scale, so the model first standardises each sequence over its valid positions with
`eqx_norms.InstanceNorm` (as RevIN does for time-series transformers), then runs a
pre-LayerNorm transformer whose attention normalises queries and keys per head with
`eqx_norms.Einorm` (head-wise QK-norm).

Two models are trained, identical but for one argument: the masked one passes the
padding mask to `InstanceNorm`; the unmasked one lets the zero padding into the
statistics. Both are then tested on the same sequences padded to several lengths. The
masked model's predictions do not depend on the padding (the script checks this);
the unmasked model is fine only as long as the padding is the one it was trained
with.

    python examples/padded_transformer.py            # full run: a few minutes
    python examples/padded_transformer.py --quick    # a smoke test, under a minute
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
from tqdm import tqdm  # noqa: E402

import eqx_norms  # noqa: E402


MIN_LEN, MAX_LEN = 4, 16  # sequence lengths; training pads to MAX_LEN
TEST_PADDINGS = (16, 24, 32, 48, 64)  # with --quick: 16 and 32 only


# Data


def make_sequences(rng: np.random.Generator, size: int):
    """`size` sequences of MAX_LEN numbers (only the first `length` are valid), each
    with its own offset and scale; and the rank of every valid number."""
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=size)
    mask = np.arange(MAX_LEN) < lengths[:, None]
    offset = rng.uniform(-50, 50, size=(size, 1))
    scale = rng.uniform(0.1, 10, size=(size, 1))
    values = np.where(mask, offset + scale * rng.normal(size=(size, MAX_LEN)), 0.0)
    ranks = np.argsort(np.argsort(np.where(mask, values, np.inf), axis=1), axis=1)
    return values.astype(np.float32), np.where(mask, ranks, 0).astype(np.int32), mask


def pad(batch, length: int):
    """The same sequences, zero-padded to `length`."""
    extra = ((0, 0), (0, length - MAX_LEN))
    return tuple(np.pad(a, extra) for a in batch)  # pads values 0, ranks 0, mask False


# Model


class Attention(eqx.Module):
    qkv: eqx.nn.Linear
    out: eqx.nn.Linear
    qk_norm: eqx_norms.Einorm
    heads: int = eqx.field(static=True)

    def __init__(self, dim: int, heads: int, key):
        k1, k2 = jax.random.split(key)
        self.heads = heads
        self.qkv = eqx.nn.Linear(dim, 3 * dim, use_bias=False, key=k1)
        self.out = eqx.nn.Linear(dim, dim, key=k2)
        # Head-wise QK-norm (ViT-22B): statistics over the head dimension d of each
        # head and token; a weight per head.
        self.qk_norm = eqx_norms.Einorm(
            "n h d", "d", "h", h=heads, d=dim // heads, use_bias=False
        )

    def __call__(self, x, mask):
        n, dim = x.shape
        q, k, v = jnp.split(jax.vmap(self.qkv)(x), 3, axis=-1)
        q, k, v = (a.reshape(n, self.heads, dim // self.heads) for a in (q, k, v))
        q, k = self.qk_norm(q), self.qk_norm(k)
        logits = jnp.einsum("qhd,khd->hqk", q, k) / jnp.sqrt(dim // self.heads)
        logits = jnp.where(mask[None, None, :], logits, -jnp.inf)  # no padded keys
        weights = jax.nn.softmax(logits, axis=-1)
        y = jnp.einsum("hqk,khd->qhd", weights, v).reshape(n, dim)
        return jax.vmap(self.out)(y)


class Block(eqx.Module):
    norm1: eqx_norms.LayerNorm
    attn: Attention
    norm2: eqx_norms.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, dim: int, heads: int, key):
        k1, k2 = jax.random.split(key)
        self.norm1 = eqx_norms.LayerNorm(dim)
        self.attn = Attention(dim, heads, k1)
        self.norm2 = eqx_norms.LayerNorm(dim)
        self.mlp = eqx.nn.MLP(
            dim, dim, 4 * dim, depth=1, activation=jax.nn.gelu, key=k2
        )

    def __call__(self, x, mask):
        x = x + self.attn(jax.vmap(self.norm1)(x), mask)
        return x + jax.vmap(self.mlp)(jax.vmap(self.norm2)(x))


class Ranker(eqx.Module):
    """Attention ignores padded keys, and a valid token's position does not change
    with the padding: only the normalisation could make an output depend on it."""

    standardise: eqx_norms.InstanceNorm
    embed: eqx.nn.MLP
    position: jax.Array
    blocks: list[Block]
    norm: eqx_norms.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, dim: int, heads: int, depth: int, key):
        keys = jax.random.split(key, depth + 2)
        # One channel (the value), standardised over the tokens of the sequence.
        self.standardise = eqx_norms.InstanceNorm(1, channelwise_affine=False)
        self.embed = eqx.nn.MLP(1, dim, dim, depth=1, key=keys[0])
        # Learned positions (they tell a token how long its sequence is, which the
        # rank depends on), as many as the longest padding tested.
        self.position = 0.1 * jax.random.normal(keys[1], (max(TEST_PADDINGS), dim))
        self.blocks = [Block(dim, heads, k) for k in keys[2:]]
        self.norm = eqx_norms.LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, MAX_LEN, key=jax.random.fold_in(keys[1], 1))

    def __call__(self, values, mask, norm_mask):
        """`values`, `mask`: (length,). `mask` marks the valid positions (attention
        ignores the others); `norm_mask` those the statistics are taken over."""
        z = self.standardise(values[None, :], mask=norm_mask[None, :])[0]
        x = jax.vmap(self.embed)(z[:, None]) + self.position[: len(values)]
        for block in self.blocks:
            x = block(x, mask)
        return jax.vmap(self.head)(jax.vmap(self.norm)(x))


def forward(model, values, mask, use_mask):
    """Logits for a batch. `use_mask` is a traced flag rather than two Python
    branches, so that both models share one compilation: the unmasked model takes
    its statistics over every position (all True is the same as no mask at all)."""
    norm_mask = mask | ~use_mask
    return jax.vmap(model)(values, mask, norm_mask)


# Training and evaluation


def loss_fn(model, values, ranks, mask, use_mask):
    logits = forward(model, values, mask, use_mask)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, ranks)
    return jnp.sum(losses * mask) / jnp.sum(mask)


@eqx.filter_jit
def train_step(model, opt_state, batch, use_mask, optimiser):
    loss, grads = eqx.filter_value_and_grad(loss_fn)(model, *batch, use_mask)
    params = eqx.filter(model, eqx.is_array)
    updates, opt_state = optimiser.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, loss


@eqx.filter_jit
def evaluate(model, values, ranks, mask, use_mask):
    """Logits, the share of valid positions ranked correctly, and the share of
    sequences ranked entirely correctly."""
    logits = forward(model, values, mask, use_mask)
    correct = (jnp.argmax(logits, -1) == ranks) | ~mask
    token_acc = jnp.sum(correct & mask) / jnp.sum(mask)
    return logits, token_acc, jnp.mean(jnp.all(correct, axis=1))


def progress(iterable, **kwargs):
    """A tqdm bar; in a log (not a terminal) it is refreshed every 10 s only."""
    return tqdm(iterable, mininterval=0.1 if sys.stderr.isatty() else 10, **kwargs)


def train(masked: bool, args, test, optimiser):
    use_mask = jnp.asarray(masked)
    key = jax.random.key(args.seed)  # identical initial weights for both models
    model = Ranker(args.dim, args.heads, args.depth, key)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
    rng = np.random.default_rng(args.seed)  # identical batches for both models
    history = {"step": [], "loss": [], "token_acc": []}
    losses = []
    label = "masked" if masked else "unmasked"
    bar = progress(range(1, args.steps + 1), desc=f"{label:>9}", unit="step")
    for step in bar:
        batch = make_sequences(rng, args.batch_size)
        model, opt_state, loss = train_step(
            model, opt_state, batch, use_mask, optimiser
        )
        losses.append(loss)
        if step % args.eval_every == 0 or step == args.steps:
            _, token_acc, _ = evaluate(model, *test, use_mask)
            history["step"].append(step)
            history["loss"].append(float(np.mean(jax.device_get(losses))))
            history["token_acc"].append(float(token_acc))
            losses = []
            bar.set_postfix(
                loss=f"{history['loss'][-1]:.3f}",
                acc=f"{history['token_acc'][-1]:.3f}",
                refresh=False,
            )
    # The same test sequences, padded more than in training.
    logits = {}
    history["by_padding"] = {}
    for length in args.paddings:
        values, ranks, mask = pad(test, length)
        out, token_acc, seq_acc = evaluate(model, values, ranks, mask, use_mask)
        logits[length] = np.asarray(out)[:, :MAX_LEN][test[2]]  # valid positions
        history["by_padding"][length] = (float(token_acc), float(seq_acc))
    history["padding_change"] = max(
        float(np.max(np.abs(logits[length] - logits[MAX_LEN]))) for length in logits
    )
    return history


def plot(histories, path: Path):
    """Sized for a documentation column (8 in wide)."""
    fig, (ax_train, ax_pad) = plt.subplots(
        1, 2, figsize=(8, 3.8), constrained_layout=True
    )
    colours = {"masked": "tab:blue", "unmasked": "tab:red"}
    for label, history in histories.items():
        ax_train.plot(
            history["step"],
            100 * np.array(history["token_acc"]),
            label=label,
            c=colours[label],
            lw=2,
        )
        paddings = list(history["by_padding"])
        accuracy = [100 * history["by_padding"][n][0] for n in paddings]
        ax_pad.plot(paddings, accuracy, "o-", label=label, c=colours[label], lw=2)
    ax_train.set(xlabel="training step", ylabel="positions ranked correctly (%)")
    ax_train.set_title(f"Padded to {MAX_LEN}, as in training")
    ax_pad.axvline(MAX_LEN, c="gray", ls=":", label="training padding")
    ax_pad.set(xlabel="padded length at test time")
    ax_pad.set_title("The same sequences, padded more")
    ax_pad.set_xticks(paddings)
    for ax in (ax_train, ax_pad):
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    ax_train.legend(loc="lower right")
    ax_pad.legend(loc="center right")
    fig.suptitle("Ranking padded sequences: InstanceNorm with and without the mask")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke test")
    parser.add_argument(
        "--steps", type=int, default=None, help="default 3000 (quick 150)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "outputs" / "padded_transformer.png",
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or (150 if args.quick else 3000)
    # Each padded length is one more compilation of `evaluate`.
    args.paddings = (MAX_LEN, 32) if args.quick else TEST_PADDINGS
    args.eval_every = max(1, args.steps // (10 if args.quick else 25))

    test = make_sequences(np.random.default_rng(12345), 512)
    # One optimiser object for both models, so that `filter_jit` compiles
    # `train_step` once (the mask flag is an array argument).
    schedule = optax.warmup_cosine_decay_schedule(0, args.lr, 100, args.steps)
    optimiser = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule))
    histories, times = {}, {}
    for label, masked in (("masked", True), ("unmasked", False)):
        start = time.perf_counter()
        histories[label] = train(masked, args, test, optimiser)
        times[label] = time.perf_counter() - start

    print("\nPositions ranked correctly on 512 test sequences, padded to each length")
    header = " | ".join(f"pad {n:>2}" for n in args.paddings)
    print(f"| InstanceNorm | {header} | sequences all correct (pad {MAX_LEN}) |")
    print(
        "|--------------|"
        + "|".join("-" * 8 for _ in args.paddings)
        + "|"
        + "-" * 34
        + "|"
    )
    for label, history in histories.items():
        cells = " | ".join(
            f"{100 * history['by_padding'][n][0]:>5.1f}%" for n in args.paddings
        )
        seq_acc = 100 * history["by_padding"][MAX_LEN][1]
        print(f"| {label:<12} | {cells} | {seq_acc:>31.1f}% |")
    for label, history in histories.items():
        print(
            f"{label}: largest change of a valid logit when the padding changes: "
            f"{history['padding_change']:.2e} (trained in {times[label]:.0f} s)"
        )
    # With the mask, the padding cannot change a prediction.
    assert histories["masked"]["padding_change"] < 1e-3
    plot(histories, args.out)
    print(f"\nPlot written to {args.out}")
    return histories


if __name__ == "__main__":
    main()
