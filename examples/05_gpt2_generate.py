"""Load OpenAI's GPT-2 weights and generate text (the book's chapter 5, section 5.5).

    python examples/05_gpt2_generate.py [--model gpt2] [--prompt "Every effort moves you"]
        [--max-new-tokens 25] [--top-k 50] [--temperature 1.5] [--seed 123]

``--model`` is a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl: downloaded from the
Hugging Face hub on first use, then read from its cache; ``HF_ENDPOINT`` and ``HF_HOME`` are
honoured) or a local checkpoint: a directory holding config.json + model.safetensors, a
.safetensors file, or a directory written by ``tinygpt train`` (with its own tokenizer) —
what every ``tinygpt`` command's ``--model`` takes.

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
from tinygpt.checkpoints import load_model
from tinygpt.cli.options import (
    HelpFormatter,
    add_model_option,
    add_sampling_options,
    add_seed_option,
)
from tinygpt.generation import TextStreamer, generate, stream
from tinygpt.weights import CheckpointError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_model_option(parser, default="gpt2")
    parser.add_argument("--prompt", default="Every effort moves you", help="the text to continue")
    add_sampling_options(parser, max_new_tokens=25, temperature=1.5)
    parser.set_defaults(top_k=50)  # the book's sampling settings
    add_seed_option(parser, default=123)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        model, tokenizer = load_model(args.model)
    except (CheckpointError, OSError) as err:
        sys.exit(f"error: {err}")
    cfg = model.cfg
    params = sum(p.data.size for p in model.parameters())
    print(f"loaded {args.model}: {params:,} parameters, {cfg.n_layers} layers, emb_dim "
          f"{cfg.emb_dim}, context {cfg.context_length} ({time.perf_counter() - start:.1f} s)")

    ids = numpy.array([tokenizer.encode(args.prompt)])
    eos = tokenizer.eot_token  # <|endoftext|>: GPT-2 ends a document with it (None: chars)
    print(f"prompt: {args.prompt!r} -> {ids[0].tolist()}")

    print("\n--- greedy (temperature 0), streamed ---")
    print(args.prompt, end="", flush=True)
    # A token can end inside a multi-byte character: the streamer waits for the rest.
    streamer = TextStreamer(tokenizer, write=lambda text: print(text, end="", flush=True))
    count, start = 0, time.perf_counter()
    for token in stream(model, ids, args.max_new_tokens, eos_id=eos):
        streamer.put(int(token[0]))
        count += 1
    streamer.end()
    seconds = time.perf_counter() - start
    print(f"\n({count} tokens in {seconds:.2f} s, {count / seconds:.1f} tokens/s)")

    print(f"\n--- sampled (top_k={args.top_k}, temperature={args.temperature}, "
          f"seed {args.seed}) ---")
    tinygpt.manual_seed(args.seed)
    out = generate(model, ids, args.max_new_tokens, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, eos_id=eos)
    print(tokenizer.decode(out[0].tolist()))


if __name__ == "__main__":
    main()
