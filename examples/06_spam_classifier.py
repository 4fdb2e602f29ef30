"""The book's chapter 6: fine-tune a GPT to tell spam from ham in SMS messages.

    python examples/06_spam_classifier.py                       # GPT-2 124M, as the book
    python examples/06_spam_classifier.py --model scratch       # no weights needed
    python examples/06_spam_classifier.py --data SMSSpamCollection.tsv --lora-rank 16

Without ``--data`` the SMS Spam Collection is downloaded once from the UCI archive
(https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip) into
~/.cache/tinygpt. The messages are balanced (747 ham, 747 spam), split 70/10/20 and
tokenized with GPT-2's BPE; the model gets a 2-class head read at each message's last real
token. Prints losses and accuracies while training, the final test accuracy, a few example
classifications, and saves the classifier and its loss/accuracy plot to ``--out``.

``--model`` takes what ``tinygpt generate --model`` takes (a GPT-2 name, a Hugging Face
directory, a run of ``tinygpt train``), or ``scratch``: a small random GPT (4 layers, 256
dims, context 128, GPT-2's vocabulary) trained on the classification task alone, all layers
trainable. The book reaches 95.67% test accuracy with GPT-2 124M after 5 epochs; results
depend on the seed.
"""

import argparse
import json
import time
from pathlib import Path

from tinygpt.cli.finetune import add_classifier_options, classifier_config
from tinygpt.cli.options import HelpFormatter
from tinygpt.fileio import atomic_write
from tinygpt.finetune.base import SCRATCH_CONFIG, is_scratch, load_base_model
from tinygpt.finetune.classify import (
    classify,
    download_sms_spam,
    finetune_classifier,
    sms_spam_splits,
)

EXAMPLES = [
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 "
    "award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!",
]


def scratch_config(args):
    """The model ``--model scratch`` builds here: larger than the commands' default scratch
    GPT, since this example trains it on the classification task alone."""
    return SCRATCH_CONFIG.replace(context_length=args.scratch_context, emb_dim=args.scratch_dim,
                                  n_heads=args.scratch_heads, n_layers=args.scratch_layers,
                                  drop_rate=args.dropout)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    add_classifier_options(parser, out_default="runs/spam-classifier")  # tinygpt's own
    parser.set_defaults(lr=None, trainable=None)  # chosen below: the book's, or scratch's
    parser.add_argument("--scratch-layers", type=int, default=4, help="scratch: blocks")
    parser.add_argument("--scratch-dim", type=int, default=256, help="scratch: emb_dim")
    parser.add_argument("--scratch-heads", type=int, default=4, help="scratch: heads")
    parser.add_argument("--scratch-context", type=int, default=128,
                        help="scratch: context length (longer messages are cut)")
    parser.add_argument("--dropout", type=float, default=0.0, help="scratch: dropout rate")
    args = parser.parse_args(argv)

    try:
        data = Path(args.data) if args.data else download_sms_spam()
    except (OSError, RuntimeError) as err:  # offline: say where the file comes from
        raise SystemExit(f"error: could not download the SMS Spam Collection ({err}); pass "
                         "--data PATH, the SMSSpamCollection file from "
                         "https://archive.ics.uci.edu/dataset/228/sms+spam+collection") from None
    train, val, test = sms_spam_splits(data, seed=args.seed)
    scratch = is_scratch(args.model)
    try:
        gpt, _ = load_base_model(args.model, args.seed, scratch_config(args))
    except (OSError, RuntimeError, ValueError) as err:
        raise SystemExit(f"could not load --model {args.model}: {err}\n"
                         "(no GPT-2 weights here? try --model scratch)") from None
    if args.lr is None:  # the book's rate; a random model needs a larger one
        args.lr = 5e-4 if scratch else 5e-5
    if args.trainable is None:  # the book trains the last block; a random model all of it
        args.trainable = "all" if scratch else "last-block"
    cfg = classifier_config(args)
    print(f"model: {args.model}, {gpt.cfg}")
    start = time.perf_counter()
    model, results = finetune_classifier(gpt, train, val, test, cfg, out_dir=args.out)
    seconds = time.perf_counter() - start
    for text in EXAMPLES:
        print(f"{classify(model, text)!r:7} <- {text}")
    summary = {k: v for k, v in results.items() if k != "history"}
    summary.update(model=args.model, model_config=gpt.cfg.to_dict(), wall_seconds=seconds)
    out = Path(args.out)
    atomic_write(out / "results.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
    print(f"test accuracy {results['test_accuracy'] * 100:.2f}% in {seconds:.0f} s "
          f"(the book: 95.67% with GPT-2 124M, 5 epochs); saved to {out}")


if __name__ == "__main__":
    main()
