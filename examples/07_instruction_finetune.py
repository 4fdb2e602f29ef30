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

from tinygpt.finetune.alpaca import DATA_URL
from tinygpt.finetune.base import is_scratch
from tinygpt.finetune.instruct.run import (
    InstructConfig,
    JudgeSettings,
    run_instruction_finetuning,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None,
                        help="instruction data JSON (default: download the book's "
                             "instruction-data.json once into ~/.cache/tinygpt)")
    parser.add_argument("--model", default="gpt2-medium",
                        help="gpt2, gpt2-medium (default, as the book), ..., a local model "
                             "directory, or 'scratch' (a small random GPT, no download)")
    parser.add_argument("--out", default="runs/instruct",
                        help="output directory (default runs/instruct); a run there resumes")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default 5e-5 as the book; 1e-3 for --model "
                             "scratch, which starts from random weights)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="default 0.1")
    parser.add_argument("--allowed-max-length", type=int, default=1024,
                        help="cut examples to this many tokens (default 1024)")
    parser.add_argument("--mask-prompt", action="store_true",
                        help="loss on the response tokens only (exercise 7.2)")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="LoRA rank (0: full fine-tuning, the default)")
    parser.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA alpha")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="longest test answer (default 256)")
    parser.add_argument("--num-test", type=int, default=None,
                        help="answer only the first N test entries (default: all 110)")
    parser.add_argument("--eval-every", type=int, default=5, help="default 5")
    parser.add_argument("--eval-iters", type=int, default=5, help="default 5")
    parser.add_argument("--seed", type=int, default=123, help="default 123")
    parser.add_argument("--judge-url", default=None,
                        help="score the answers with a judge LLM at this URL "
                             "(e.g. http://localhost:11434 for Ollama)")
    parser.add_argument("--judge-api", choices=["ollama", "openai"], default="ollama",
                        help="the judge server's API (default ollama)")
    parser.add_argument("--judge-model", default="llama3",
                        help="the judge model (default llama3)")
    args = parser.parse_args(argv)

    from tinygpt.download import fetch_data

    try:
        data = fetch_data(DATA_URL, args.data)
    except (OSError, RuntimeError) as err:  # offline, or a --data that is not there
        raise SystemExit(f"error: no instruction data ({err}); pass --data PATH, the book's "
                         f"instruction-data.json from {DATA_URL}") from None
    lr = args.lr if args.lr is not None else (1e-3 if is_scratch(args.model) else 5e-5)
    judge = (JudgeSettings(args.judge_url, args.judge_api, args.judge_model)
             if args.judge_url else None)
    cfg = InstructConfig(
        data=data, out=args.out, model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, lr=lr, weight_decay=args.weight_decay,
        allowed_max_length=args.allowed_max_length, mask_prompt=args.mask_prompt,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        max_new_tokens=args.max_new_tokens, num_test=args.num_test,
        eval_every=args.eval_every, eval_iters=args.eval_iters, seed=args.seed, judge=judge)
    epochs = f"{args.epochs} epoch" + ("s" if args.epochs != 1 else "")
    print(f"data: {data}\nmodel: {args.model}, lr {lr}, {epochs}, "
          f"batch size {args.batch_size}\n" + "-" * 50)
    start = time.perf_counter()
    run_instruction_finetuning(cfg)
    print("-" * 50 + f"\ntotal wall time: {(time.perf_counter() - start) / 60:.2f} minutes")


if __name__ == "__main__":
    main()
