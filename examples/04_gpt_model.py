"""The GPT model of the book's chapter 4: build it, count it, run it.

    python examples/04_gpt_model.py [--config gpt2-124M|gpt2-355M|baby|...]

Builds the model untied (a separate output head, as the book trains it), counts its
parameters, shows what weight tying (GPT-2's shared token-embedding / output-head matrix)
removes, estimates float32 memory, and runs a forward pass on the book's two example texts.
Weights are random (seeded), so the logits mean nothing yet: chapter 5 trains them.
"""

import argparse

import numpy

import tinygpt
from tinygpt.cli.options import HelpFormatter
from tinygpt.config import PRESETS
from tinygpt.nn import GPTModel
from tinygpt.tokenizer import gpt2_encoding

TEXTS = ["Every effort moves you", "Every day holds a"]


def encode_texts():
    """The book's batch: GPT-2 ids of TEXTS, (2, 4)."""
    encoding = gpt2_encoding()
    return numpy.array([encoding.encode(text) for text in TEXTS])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--config", default="gpt2-124M", choices=sorted(PRESETS),
                        help="model size preset (default: gpt2-124M, the book's GPT_CONFIG_124M)")
    args = parser.parse_args(argv)

    cfg = tinygpt.GPTConfig.preset(args.config, tie_embeddings=False)
    print(f"config {args.config}: {cfg}")
    tinygpt.manual_seed(123)
    model = GPTModel(cfg)
    print(f"{type(model).__name__}: {len(model.trf_blocks)} transformer blocks")

    total = model.num_parameters()
    head = model.out_head.weight.size
    print(f"\nTotal number of parameters: {total:,}")
    print(f"Token embedding layer shape: {model.tok_emb.weight.shape}")
    print(f"Output layer shape:          {model.out_head.weight.shape}")
    print(f"Parameters without the separate output head (weight tying): {total - head:,}")

    # Tie for real: the output head becomes the token-embedding Parameter itself.
    model.tie_weights()
    tied = model.num_parameters()
    assert model.weights_tied and tied == total - head
    print(f"After model.tie_weights(): {tied:,} parameters (one shared "
          f"{model.tok_emb.weight.shape} matrix)")

    for label, count in (("untied", total), ("tied", tied)):
        megabytes = count * numpy.dtype("float32").itemsize / 1024**2
        print(f"Memory of the {label} weights in float32: {megabytes:,.2f} MB")

    batch = encode_texts()
    if batch.shape[1] > cfg.context_length:
        batch = batch[:, -cfg.context_length:]
    if batch.max() >= cfg.vocab_size:  # e.g. the 65-character 'baby' model
        batch = batch % cfg.vocab_size
        print(f"(ids taken modulo the vocabulary size {cfg.vocab_size})")
    print(f"\nInput batch {batch.shape}:\n{batch}")
    model.eval()
    with tinygpt.no_grad():
        logits = model(batch)
    print(f"Output shape: {logits.shape}  (batch, tokens, vocabulary)")
    print(f"Logits of the last token of each text (first 5 of {logits.shape[-1]}):")
    print(numpy.array2string(logits.numpy()[:, -1, :5], precision=4, suppress_small=True))


if __name__ == "__main__":
    main()
