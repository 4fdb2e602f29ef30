"""``tinygpt attention``: heatmaps of where each head of a model looks, for one prompt."""

from __future__ import annotations

from pathlib import Path

from tinygpt.cli.options import add_model_option
from tinygpt.tokenizer import ENDOFTEXT

PICTURE_SUFFIXES = (".png", ".svg", ".pdf")


def cmd_attention(args):
    from tinygpt.checkpoints import load_model
    from tinygpt.plots import attention_weights, plot_attention

    if Path(args.out).suffix.lower() not in PICTURE_SUFFIXES:
        raise SystemExit(f"error: --out {args.out}: the picture's name must end in "
                         f"{', '.join(PICTURE_SUFFIXES)}")
    model, tokenizer = load_model(args.model)
    ids = tokenizer.encode(args.prompt, allowed_special={ENDOFTEXT})
    if not ids:
        raise SystemExit("error: the prompt is empty")
    if len(ids) > model.cfg.context_length:
        raise SystemExit(f"error: the prompt is {len(ids)} tokens; the model reads at most "
                         f"{model.cfg.context_length}")
    weights = attention_weights(model, ids)
    tokens = [tokenizer.decode([i]) for i in ids]
    path = plot_attention(weights, tokens, args.out)
    print(f"{len(weights)} layers x {weights.shape[1]} heads over {len(ids)} tokens: {path}")


def add_parser(sub, formatter):
    p = sub.add_parser("attention", help="draw each head's attention for a prompt (heatmaps)",
                       formatter_class=formatter,
                       description="Run the model on PROMPT and draw, for every layer and "
                                   "head, the attention weights: row t shows which earlier "
                                   "tokens token t attends to.")
    p.add_argument("prompt", help="the text to look at (keep it short: one row per token)")
    add_model_option(p, default="gpt2")
    p.add_argument("--out", default="attention.png",
                   help="the picture to write (.png, .svg or .pdf)")
    p.set_defaults(func=cmd_attention)
