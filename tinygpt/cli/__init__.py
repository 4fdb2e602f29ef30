"""The ``tinygpt`` command: one sub-command per job, one module per command group.

    tinygpt generate "Every effort moves you" --model gpt2      (cli/generate.py)
    tinygpt train --data input.txt --config baby --out runs/baby (cli/train.py)
    tinygpt info gpt2-124M ; tinygpt prepare big.txt big.bin     (cli/info.py)
    tinygpt attention "ROMEO:" --model runs/baby                 (cli/attention.py)
    tinygpt finetune-classifier | classify | finetune-instruct | chat | judge | finetune-dpo
                                                                 (cli/finetune.py)

Shared options (``--model``, sampling, evaluation, optimizer) are written once, in
``cli/options.py``. ``main`` turns the errors a user can cause into one line and an exit
status: 1 for bad input, 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
"""

from __future__ import annotations

import argparse
import sys

from tinygpt import __version__
from tinygpt.cli import attention, finetune, generate, info, train
from tinygpt.cli.options import HelpFormatter, add_threads_option, apply_threads_option


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinygpt", formatter_class=HelpFormatter,
        description="A GPT-2 built from NumPy up: generate, train, fine-tune.")
    parser.add_argument("--version", action="version", version=f"tinygpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    generate.add_parser(sub, HelpFormatter)
    train.add_parser(sub, HelpFormatter)
    info.add_parsers(sub, HelpFormatter)
    attention.add_parser(sub, HelpFormatter)
    finetune.add_parsers(sub, HelpFormatter)
    for command in sub.choices.values():
        add_threads_option(command)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` reruns them
    try:
        apply_threads_option(args)
        args.func(args)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # TrainingInterrupted: it saved, then stopped
        print(str(interrupt) or "interrupted", file=sys.stderr)
        return getattr(interrupt, "exit_status", 130)
    return 0
