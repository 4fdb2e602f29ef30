"""Instruction fine-tuning, the book's chapter 7, end to end.

    python examples/07_instruction_finetune.py                       # gpt2-medium, as the book
    python examples/07_instruction_finetune.py --model scratch --num-test 20
    python examples/07_instruction_finetune.py --data instruction-data.json --model gpt2 \\
        --judge-url http://localhost:11434                         # score with Ollama's llama3

1. The data: the book's 1,100 instruction/input/output entries (``--data FILE``, or downloaded
   once from the book's repository), split 85% train / 10% test / 5% validation.
2. The model: GPT-2 medium (355M) as the book (``--model``: any GPT-2 name, a Hugging Face
   directory, a tinygpt checkpoint), or ``--model scratch`` for a small random GPT with
   GPT-2's vocabulary when no weights can be downloaded. A from-scratch model learns the
   prompt format and typical phrasings, not to follow instructions: that takes pretraining.
3. Fine-tuning with AdamW (lr 5e-5, weight decay 0.1) for two epochs of batches of 8, with the
   training and validation loss every 5 steps and a summary per epoch.
4. Greedy answers to the test instructions, written with the entries to
   OUT/instruction-data-with-response.json; the first three are printed beside the correct
   answers.
5. Optionally (``--judge-url``) an LLM judge scores the answers from 0 to 100.

The losses depend on the seed and, at the last digits, on the BLAS library; the book's
figures (gpt2-medium, train loss 0.6 -> 0.1 over two epochs) need its pretrained weights.
"""

import argparse
import time

from tinygpt.cli.finetune import add_instruct_options, instruct_config
from tinygpt.cli.options import HelpFormatter
from tinygpt.finetune.alpaca import DATA_URL
from tinygpt.finetune.base import is_scratch
from tinygpt.finetune.instruct.run import run_instruction_finetuning


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_instruct_options(parser, out_default="runs/instruct")  # tinygpt finetune-instruct's
    parser.set_defaults(lr=None)  # chosen below: the book's 5e-5, or 1e-3 for scratch
    args = parser.parse_args(argv)

    from tinygpt.download import fetch_data

    try:
        args.data = fetch_data(DATA_URL, args.data)
    except (OSError, RuntimeError) as err:  # offline, or a --data that is not there
        raise SystemExit(f"error: no instruction data ({err}); pass --data PATH, the book's "
                         f"instruction-data.json from {DATA_URL}") from None
    if args.lr is None:  # a random model needs a larger rate than a pretrained one
        args.lr = 1e-3 if is_scratch(args.model) else 5e-5
    cfg = instruct_config(args)
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    print(f"data: {args.data}\nmodel: {args.model}, lr {args.lr}, {epochs}, "
          f"batch size {args.batch_size}\n" + "-" * 50)
    start = time.perf_counter()
    run_instruction_finetuning(cfg)
    print("-" * 50 + f"\ntotal wall time: {(time.perf_counter() - start) / 60:.2f} minutes")


if __name__ == "__main__":
    main()
