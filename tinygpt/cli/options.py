"""Command-line options shared by every ``tinygpt`` command and the examples, written once.

Each ``add_*`` helper adds a group of options to an ``argparse`` parser with one spelling, one
help text and a checked range, so ``--model``, the sampling options, ``--eval-every`` /
``--eval-iters`` and the optimizer options mean the same in every command. The value types
(``positive_int``, ``fraction`` ...) reject out-of-range values while parsing, so a bad value
is one clear line (``argument --grad-clip: must be >= 0, got -1``) before anything runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from tinygpt import backend

MODEL_HELP = ("a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl: downloaded once), a "
              "Hugging Face directory (config.json + model.safetensors), a .safetensors file, "
              "or a directory written by `tinygpt train` or a fine-tuning command")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help layout, appending "(default: X)" to every option that has a
    default worth showing (not None, not a False flag) and does not state it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and "default" not in text and (action.option_strings or action.nargs):
            text += " (default: %(default)s)"
        return text


# ----------------------------------------------------------------------------- value types

def _number(kind, test, requirement):
    """An argparse type: parse with ``kind`` and require ``test(value)``."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some of its messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, ">= 0")
positive_float = _number(float, lambda v: v > 0, "> 0")
non_negative_float = _number(float, lambda v: v >= 0, ">= 0")
fraction = _number(float, lambda v: 0 < v < 1, "between 0 and 1 (exclusive)")
probability = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
top_p_value = _number(float, lambda v: 0 < v <= 1, "in (0, 1]")


# ----------------------------------------------------------------------------- option groups

def add_model_option(p, default="gpt2", required=False, what="the model", scratch=False):
    """``--model``: anything ``tinygpt.checkpoints.load_model`` accepts (and ``scratch``, a
    small random GPT with GPT-2's vocabulary, for commands that can start from one)."""
    extra = ", or 'scratch' for a small random GPT with GPT-2's vocabulary" if scratch else ""
    p.add_argument("--model", default=None if required else default, required=required,
                   help=f"{what}: {MODEL_HELP}{extra}")


def add_sampling_options(p, max_new_tokens=50, temperature=0.0):
    """``--max-new-tokens``, ``--temperature``, ``--top-k``, ``--top-p``."""
    p.add_argument("--max-new-tokens", type=non_negative_int, default=max_new_tokens,
                   help="how many tokens to add at most")
    p.add_argument("--temperature", type=non_negative_float, default=temperature,
                   help="0 picks the most likely token (greedy); higher values sample more "
                        "freely")
    p.add_argument("--top-k", type=positive_int, default=None,
                   help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=top_p_value, default=None,
                   help="sample only among the most likely tokens whose probabilities add up "
                        "to p (nucleus sampling)")


def warn_about_unused_sampling(args, write=None) -> None:
    """--top-k and --top-p choose among tokens to sample; with --temperature 0 (greedy) the
    most likely token wins anyway, so say that they do nothing rather than ignore them."""
    write = write or (lambda line: print(line, file=sys.stderr))
    if args.temperature == 0:
        for option, value in (("--top-k", args.top_k), ("--top-p", args.top_p)):
            if value is not None:
                write(f"warning: {option} has no effect with --temperature 0 (greedy "
                      "decoding); give a temperature above 0, e.g. 0.8, to sample")


def add_quantize_option(p):
    """``--quantize int8|bfloat16``: the weights stored small, for faster inference."""
    p.add_argument("--quantize", choices=("int8", "bfloat16"), default=None,
                   help="store the weights in int8 or bfloat16 (tinygpt.nn.quantize): a "
                        "quarter or half of the bytes per token, so faster generation, with "
                        "slightly different numbers; inference only")


def add_seed_option(p, default=None, what="random seed"):
    """``--seed``."""
    p.add_argument("--seed", type=int, default=default, help=what)


def add_eval_options(p, every=100, iters=20):
    """``--eval-every`` and ``--eval-iters``, spelled so in every command."""
    p.add_argument("--eval-every", type=positive_int, default=every,
                   help="optimizer steps between loss evaluations")
    p.add_argument("--eval-iters", type=positive_int, default=iters,
                   help="batches per loss evaluation")


def add_training_options(p, lr, batch_size, weight_decay=0.1, grad_clip=None, what="sequences"):
    """``--lr``, ``--batch-size``, ``--weight-decay`` and (when ``grad_clip`` is given, the
    default clipping norm) ``--grad-clip``."""
    p.add_argument("--lr", type=positive_float, default=lr, help="(peak) AdamW learning rate")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help=f"{what} per optimizer step")
    p.add_argument("--weight-decay", type=non_negative_float, default=weight_decay,
                   help="AdamW weight decay on weight matrices (not biases or norms)")
    if grad_clip is not None:
        p.add_argument("--grad-clip", type=non_negative_float, default=grad_clip,
                       help="clip the gradient norm to this (0 turns clipping off)")


def add_threads_option(p):
    """``--threads``: threads for matrix products and Numba kernels (every command has it)."""
    p.add_argument("--threads", type=positive_int, default=None,
                   help="threads for matrix products and kernels (default: TINYGPT_NUM_THREADS "
                        "or every core); use 1 when other work shares the machine")


def apply_threads_option(args) -> None:
    """Apply ``--threads`` (``tinygpt.backend.set_num_threads``), also for processes this one
    starts (``--nproc`` ranks), through TINYGPT_NUM_THREADS."""
    if getattr(args, "threads", None):
        os.environ["TINYGPT_NUM_THREADS"] = str(args.threads)
        backend.set_num_threads(args.threads)
