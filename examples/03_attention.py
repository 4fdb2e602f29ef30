"""The four stages of attention from the book's chapter 3, over tinygpt tensors.

    python examples/03_attention.py [--plot attention.png]

1. simplified self-attention: scores are plain dot products of the inputs;
2. self-attention with trainable weights: queries, keys and values, scaled by sqrt(d_k);
3. causal attention: no peeking at later tokens (masking after softmax and renormalising,
   or -inf before softmax: the same weights), with dropout on the weights;
4. multi-head attention: several causal heads side by side, batched, then projected,
   checked against ``tinygpt.nn.MultiHeadAttention`` given the same weights.

The 6x3 input embeddings are the book's; the random projection weights come from tinygpt's
generator, so stages 2-4 print other numbers than the book (which seeds PyTorch's).
"""

import argparse
import math

import numpy

import tinygpt
from tinygpt import functional as F
from tinygpt.cli.options import HelpFormatter
from tinygpt.nn import MultiHeadAttention

numpy.set_printoptions(precision=4, suppress=True)
TOKENS = ["Your", "journey", "starts", "with", "one", "step"]


def show(name, t):
    print(f"{name} {tuple(t.shape)}:\n{t.numpy()}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--plot", metavar="FILE", help="save heatmaps of the attention weights")
    args = parser.parse_args(argv)
    tinygpt.manual_seed(123)

    inputs = tinygpt.tensor([
        [0.43, 0.15, 0.89],  # Your     (x^1)
        [0.55, 0.87, 0.66],  # journey  (x^2)
        [0.57, 0.85, 0.64],  # starts   (x^3)
        [0.22, 0.58, 0.33],  # with     (x^4)
        [0.77, 0.25, 0.10],  # one      (x^5)
        [0.05, 0.80, 0.55],  # step     (x^6)
    ])
    T, d_in = inputs.shape

    print("=== 1. simplified self-attention (no trainable weights)")
    attn_scores = inputs @ inputs.T  # (6, 6): every token's dot product with every other
    attn_weights = attn_scores.softmax(axis=-1)  # each row sums to 1
    context = attn_weights @ inputs  # (6, 3): weighted sums of the inputs
    show("attention weights", attn_weights)
    print("row sums:", attn_weights.sum(axis=-1).numpy())
    show("context vectors", context)
    print("context of 'journey' (the book prints [0.4419, 0.6515, 0.5683]):",
          context[1].numpy(), "\n")
    simple_weights = attn_weights

    print("=== 2. self-attention with trainable weights (d_in=3 -> d_out=2)")
    d_out = 2
    W_query, W_key, W_value = (tinygpt.randn(d_in, d_out) for _ in range(3))
    queries, keys, values = inputs @ W_query, inputs @ W_key, inputs @ W_value  # (6, 2) each
    attn_scores = queries @ keys.T  # (6, 6)
    d_k = keys.shape[-1]
    attn_weights = (attn_scores / math.sqrt(d_k)).softmax(axis=-1)  # scaled dot product
    context = attn_weights @ values  # (6, 2)
    show("queries", queries)
    show("attention weights", attn_weights)
    show("context vectors", context)

    print("=== 3. causal attention")
    # (a) the book's first try: softmax, zero the future, renormalise each row
    mask_simple = numpy.tril(numpy.ones((T, T), dtype=numpy.float32))
    masked = attn_weights * mask_simple
    renormalised = masked / masked.sum(axis=-1, keepdims=True)
    # (b) the efficient way: -inf above the diagonal before softmax (exp(-inf) = 0)
    future = numpy.triu(numpy.ones((T, T), dtype=bool), k=1)
    causal_weights = (attn_scores.masked_fill(future, -math.inf) / math.sqrt(d_k)).softmax()
    show("causal attention weights", causal_weights)
    diff = numpy.abs(renormalised.numpy() - causal_weights.numpy()).max()
    print(f"(a) renormalised vs (b) -inf mask: max abs difference {diff:.2e}\n")
    assert diff < 1e-6
    tinygpt.manual_seed(123)
    show("with dropout p=0.5 (training; survivors scaled by 2)",
         F.dropout(causal_weights, 0.5, training=True))
    causal_context = causal_weights @ values
    show("causal context vectors", causal_context)

    print("=== 4. multi-head attention (batch of 2, d_out=2 split over 2 heads)")
    batch = tinygpt.stack([inputs, inputs])  # (B, T, d_in) = (2, 6, 3)
    B, num_heads = batch.shape[0], 2
    head_dim = d_out // num_heads
    std = 0.5
    Wq, Wk, Wv = (tinygpt.randn(d_out, d_in) * std for _ in range(3))  # (out, in) as nn.Linear
    Wo, bo = tinygpt.randn(d_out, d_out) * std, tinygpt.randn(d_out) * std

    def split_heads(x):  # (B, T, d_out) -> (B, H, T, D)
        return x.reshape(B, T, num_heads, head_dim).transpose(1, 2)

    q, k, v = split_heads(batch @ Wq.T), split_heads(batch @ Wk.T), split_heads(batch @ Wv.T)
    scores = (q @ k.transpose(2, 3)).masked_fill(future, -math.inf)  # (B, H, T, T)
    head_weights = (scores / math.sqrt(head_dim)).softmax(axis=-1)
    heads = (head_weights @ v).transpose(1, 2).reshape(B, T, d_out)  # heads side by side
    mha_out = heads @ Wo.T + bo  # output projection
    show("per-head attention weights", head_weights[0])
    show("multi-head output", mha_out)

    mha = MultiHeadAttention(d_in, d_out, context_length=T, dropout=0.0, num_heads=num_heads)
    mha.load_state_dict({"W_query.weight": Wq.data, "W_key.weight": Wk.data,
                         "W_value.weight": Wv.data, "out_proj.weight": Wo.data,
                         "out_proj.bias": bo.data})
    with tinygpt.no_grad():
        layer_out = mha.eval()(batch)
    diff = numpy.abs(layer_out.numpy() - mha_out.numpy()).max()
    print(f"tinygpt.nn.MultiHeadAttention with the same weights: max abs difference {diff:.2e}")
    assert diff < 1e-6

    if args.plot:
        plot(args.plot, {"1. simplified": simple_weights.numpy(),
                         "3. causal": causal_weights.numpy(),
                         "4. head 1": head_weights[0, 0].numpy(),
                         "4. head 2": head_weights[0, 1].numpy()})


def plot(path, panels):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for i, (ax, (title, weights)) in enumerate(zip(axes, panels.items())):
        image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(title)
        ax.set_xticks(range(len(TOKENS)), TOKENS, rotation=45)
        ax.set_yticks(range(len(TOKENS)), TOKENS if i == 0 else [])
        ax.set_xlabel("key")
    axes[0].set_ylabel("query")
    fig.colorbar(image, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    print(f"attention heatmaps written to {path}")


if __name__ == "__main__":
    main()
