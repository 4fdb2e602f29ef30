"""``tinygpt generate``: continue a prompt with a model, streaming tokens as they come."""

from __future__ import annotations

from tinygpt import backend
from tinygpt.cli.options import (
    add_model_option,
    add_quantize_option,
    add_sampling_options,
    add_seed_option,
    warn_about_unused_sampling,
)
from tinygpt.tokenizer import ENDOFTEXT


def cmd_generate(args):
    from tinygpt.checkpoints import load_model
    from tinygpt.generation import TextStreamer, stream

    warn_about_unused_sampling(args)
    if args.seed is not None:
        backend.manual_seed(args.seed)
    model, tokenizer = load_model(args.model, quantize=args.quantize)
    ids = tokenizer.encode(args.prompt, allowed_special={ENDOFTEXT})
    if not ids:
        raise SystemExit("error: the prompt is empty")
    eos = getattr(tokenizer, "eot_token", None) if args.stop_at_eos else None
    print(args.prompt, end="", flush=True)
    streamer = TextStreamer(tokenizer, write=lambda text: print(text, end="", flush=True))
    for token in stream(model, [ids], args.max_new_tokens, temperature=args.temperature,
                        top_k=_top_k(args.top_k, model), top_p=args.top_p, eos_id=eos,
                        use_cache=not args.no_cache):
        streamer.put(int(token[0]))
    streamer.end()
    print()


def _top_k(top_k, model):
    """--top-k, at most the vocabulary: k at least the vocabulary size means every token (as
    nanoGPT clips it), so `--top-k 200` works for a 65-character model too."""
    return None if top_k is None else min(top_k, model.cfg.vocab_size)


def add_parser(sub, formatter):
    p = sub.add_parser("generate", help="generate text from a prompt, streamed as it comes",
                       formatter_class=formatter,
                       description="Continue PROMPT with a GPT model, printing tokens as they "
                                   "are generated.")
    p.add_argument("prompt", help="the text to continue")
    add_model_option(p, default="gpt2")
    add_quantize_option(p)
    add_sampling_options(p, max_new_tokens=50)
    add_seed_option(p, what="random seed for reproducible samples")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole sequence for every token (slower; for comparison)")
    p.add_argument("--stop-at-eos", action="store_true",
                   help=f"stop when the model emits {ENDOFTEXT}")
    p.set_defaults(func=cmd_generate)
