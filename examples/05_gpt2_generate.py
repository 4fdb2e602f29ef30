"""Load OpenAI's GPT-2 weights and generate text (the book's chapter 5, section 5.5).

    python examples/05_gpt2_generate.py [--model gpt2] [--prompt "Every effort moves you"]
        [--max-new-tokens 25] [--top-k 50] [--temperature 1.5] [--seed 123]

``--model`` is a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl: downloaded from the
Hugging Face hub on first use, then read from its cache; ``HF_ENDPOINT`` and ``HF_HOME`` are
honoured) or a local checkpoint: a directory holding config.json + model.safetensors, or a
.safetensors file.

It prints the greedy continuation (temperature 0: always the most likely token), streamed
token by token, then a sampled one with the book's settings: top_k=50, temperature=1.5. The
sampled text depends on the seed and on the random generator: tinygpt draws from NumPy's,
the book from PyTorch's, so the same seed gives different text from the book's. The greedy
text depends on neither: it is the one transformers' ``generate(do_sample=False)`` gives for
the same weights (tests/test_generate.py checks that token for token).
"""

import argparse
import sys
import time

import numpy

import tinygpt
from tinygpt.generation import generate, stream
from tinygpt.tokenizer import gpt2_encoding
from tinygpt.weights import CheckpointError, load_gpt2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2",
                        help="GPT-2 name or local checkpoint directory/file (default: gpt2)")
    parser.add_argument("--prompt", default="Every effort moves you")
    parser.add_argument("--max-new-tokens", type=int, default=25)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args(argv)

    encoding = gpt2_encoding()
    start = time.perf_counter()
    try:
        model = load_gpt2(args.model)
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    cfg = model.cfg
    params = sum(p.data.size for p in model.parameters())
    print(f"loaded {args.model}: {params:,} parameters, {cfg.n_layers} layers, emb_dim "
          f"{cfg.emb_dim}, context {cfg.context_length} ({time.perf_counter() - start:.1f} s)")
    if cfg.vocab_size != encoding.n_vocab:
        sys.exit(f"error: the model has {cfg.vocab_size} tokens but GPT-2's tokenizer has "
                 f"{encoding.n_vocab}; this example needs a GPT-2 vocabulary")

    ids = numpy.array([encoding.encode(args.prompt)])
    eos = encoding.eot_token  # <|endoftext|>: GPT-2 ends a document with it
    print(f"prompt: {args.prompt!r} -> {ids[0].tolist()}")

    print("\n--- greedy (temperature 0), streamed ---")
    print(args.prompt, end="", flush=True)
    new, shown = [], ""
    start = time.perf_counter()
    for token in stream(model, ids, args.max_new_tokens, eos_id=eos):
        new.append(int(token[0]))
        text = encoding.decode(new)  # decode the whole tail: a character may span tokens
        print(text[len(shown):], end="", flush=True)
        shown = text
    seconds = time.perf_counter() - start
    print(f"\n({len(new)} tokens in {seconds:.2f} s, {len(new) / seconds:.1f} tokens/s)")

    print(f"\n--- sampled (top_k={args.top_k}, temperature={args.temperature}, "
          f"seed {args.seed}) ---")
    tinygpt.manual_seed(args.seed)
    out = generate(model, ids, args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, eos_id=eos)
    print(encoding.decode(out[0].tolist()))


if __name__ == "__main__":
    main()
