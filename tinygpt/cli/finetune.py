"""The fine-tuning commands of ``tinygpt``: finetune-classifier, classify, finetune-instruct,
chat, judge and finetune-dpo (argparse only: each command builds a typed config and calls
the matching ``tinygpt.finetune`` function)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tinygpt.cli.options import (
    add_eval_options,
    add_model_option,
    add_quantize_option,
    add_sampling_options,
    add_seed_option,
    add_training_options,
    non_negative_int,
    positive_float,
    positive_int,
    warn_about_unused_sampling,
)
from tinygpt.finetune.alpaca import RESPONSES_FILE

# ----------------------------------------------------------------------------- classifier

def classifier_config(args):
    """The ``ClassifierTrainConfig`` of parsed ``add_classifier_options`` arguments."""
    from tinygpt.finetune.classify.run import ClassifierTrainConfig

    return ClassifierTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, trainable=args.trainable, max_length=args.max_length,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, eval_every=args.eval_every,
        eval_iters=args.eval_iters, seed=args.seed)


def cmd_finetune_classifier(args):
    from tinygpt.finetune.classify.run import run_classifier_finetuning

    run_classifier_finetuning(Path(args.data), args.model, Path(args.out),
                              classifier_config(args))


def add_classifier_options(p, out_default=None):
    """The options of ``finetune-classifier`` (``examples/06_spam_classifier.py`` shares
    them; without ``out_default`` --data and --out are required)."""
    p.add_argument("--data", required=out_default is None, default=None,
                   help="tab-separated file of 'label<TAB>message' lines with labels ham/spam "
                        "(the SMS Spam Collection)")
    add_model_option(p, default="gpt2", what="the pretrained GPT to start from", scratch=True)
    p.add_argument("--out", required=out_default is None, default=out_default,
                   help="directory for the classifier (classifier.safetensors + "
                        "classifier.json) and the plot")
    p.add_argument("--epochs", type=positive_int, default=5, help="passes over the training set")
    add_training_options(p, lr=5e-5, batch_size=8, weight_decay=0.1, what="messages")
    p.add_argument("--trainable", default="last-block",
                   help="what trains: all, head, last-block (the last transformer block, the "
                        "final norm and the head) or last-N (the last N blocks, final norm "
                        "and head); ignored with --lora-rank")
    p.add_argument("--max-length", type=positive_int, default=None,
                   help="cut messages to this many tokens (default: the longest training "
                        "message, at most the context length)")
    _add_lora_options(p, "instead of the --trainable weights")
    add_eval_options(p, every=50, iters=5)
    add_seed_option(p, default=123, what="seed of the balancing, the split, the head's "
                                         "initialisation and the batch order")
    return p


def add_finetune_classifier(sub, formatter):
    p = sub.add_parser(
        "finetune-classifier", formatter_class=formatter,
        help="fine-tune a GPT to classify SMS messages as spam or ham",
        description="Fine-tune a GPT as a spam classifier (the book's chapter 6): balance the "
                    "SMS Spam Collection, split it 70/10/20, replace the output head with a "
                    "2-class head and train it; prints the test accuracy and saves the "
                    "classifier and a loss/accuracy plot to --out.")
    add_classifier_options(p)
    p.set_defaults(func=cmd_finetune_classifier)


def cmd_classify(args):
    from tinygpt.finetune.classify.checkpoint import load_classifier
    from tinygpt.finetune.classify.model import classify

    classifier = load_classifier(args.model)
    if args.quantize:
        from tinygpt.nn import merge_lora, quantize

        quantize(merge_lora(classifier.model), args.quantize)  # LoRA folded in first
    texts = args.text or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    for text in texts:
        label = classify(classifier, text)
        print(f"{label}\t{text}" if len(texts) > 1 else label)


def add_classify(sub, formatter):
    p = sub.add_parser(
        "classify", formatter_class=formatter,
        help="label texts with a classifier made by finetune-classifier",
        description="Print the label (e.g. spam or ham) that a classifier written by "
                    "`tinygpt finetune-classifier --out DIR` gives each TEXT; without TEXT, "
                    "classify each line of standard input. With several texts, each line is "
                    "'label<TAB>text'.")
    p.add_argument("text", nargs="*", help="the text(s) to classify")
    p.add_argument("--model", required=True,
                   help="a classifier directory written by `tinygpt finetune-classifier`")
    add_quantize_option(p)
    p.set_defaults(func=cmd_classify)


# ----------------------------------------------------------------------------- instruct

def instruct_config(args):
    """The ``InstructConfig`` of parsed ``add_instruct_options`` arguments."""
    from tinygpt.finetune.instruct.run import InstructConfig, JudgeSettings

    judge = (JudgeSettings(args.judge_url, args.judge_api, args.judge_model)
             if args.judge_url else None)
    return InstructConfig(
        data=Path(args.data), out=Path(args.out), model=args.model, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        allowed_max_length=args.allowed_max_length, mask_prompt=args.mask_prompt,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
        max_new_tokens=args.max_new_tokens, num_test=args.num_test,
        eval_every=args.eval_every, eval_iters=args.eval_iters, seed=args.seed, judge=judge)


def cmd_finetune_instruct(args):
    from tinygpt.finetune.instruct.run import run_instruction_finetuning

    run_instruction_finetuning(instruct_config(args))


def add_instruct_options(p, out_default=None):
    """The options of ``finetune-instruct`` (``examples/07_instruction_finetune.py`` shares
    them; without ``out_default`` --data and --out are required)."""
    p.add_argument("--data", required=out_default is None, default=None,
                   help="instruction data: a JSON list of objects with instruction, input "
                        "and output (e.g. the book's instruction-data.json)")
    add_model_option(p, default="gpt2-medium", what="the model to fine-tune", scratch=True)
    p.add_argument("--out", required=out_default is None, default=out_default,
                   help="directory for the checkpoint, loss plot and test responses; the "
                        "same command again resumes an interrupted run there (other settings "
                        "or a finished run are refused)")
    p.add_argument("--epochs", type=positive_int, default=2, help="passes over the training set")
    add_training_options(p, lr=5e-5, batch_size=8, weight_decay=0.1, what="examples")
    p.add_argument("--allowed-max-length", type=positive_int, default=1024,
                   help="cut every example to this many tokens (and to the model's context "
                        "length)")
    p.add_argument("--mask-prompt", action="store_true",
                   help="compute the loss on the response tokens only, not on the "
                        "instruction (the book's exercise 7.2)")
    _add_lora_options(p, "instead of all weights (merged into the saved model at the end)")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=256,
                   help="longest generated test response in tokens")
    p.add_argument("--num-test", type=non_negative_int, default=None,
                   help="answer only the first N test entries (default: all)")
    add_eval_options(p, every=5, iters=5)
    add_seed_option(p, default=123, what="random seed of initialisation, batch order and "
                                         "dropout")
    p.add_argument("--judge-url", default=None,
                   help="after training, score the test responses with an LLM judge at "
                        "this URL (see `tinygpt judge`; default: no judge)")
    p.add_argument("--judge-api", choices=["ollama", "openai"], default="ollama",
                   help="the judge's API style")
    p.add_argument("--judge-model", default="llama3", help="the judge model")
    return p


def add_finetune_instruct(sub, formatter):
    p = sub.add_parser(
        "finetune-instruct", formatter_class=formatter,
        help="instruction fine-tuning on Alpaca-style data (chapter 7)",
        description="Fine-tune a GPT on a JSON list of {instruction, input, output} entries "
                    "(the book's chapter 7): 85/10/5 train/test/validation split, training "
                    "with AdamW at a constant learning rate, then greedy answers to the test "
                    "instructions written to OUT/" + RESPONSES_FILE + ".")
    add_instruct_options(p)
    p.set_defaults(func=cmd_finetune_instruct)


def cmd_chat(args):
    from tinygpt import backend
    from tinygpt.finetune.base import check_vocabulary, load_base_model
    from tinygpt.finetune.instruct.responses import chat

    warn_about_unused_sampling(args)
    if args.seed is not None:
        backend.manual_seed(args.seed)
    model, tokenizer = load_base_model(args.model)
    check_vocabulary(model, "chat")
    if args.quantize:
        from tinygpt.nn import quantize

        quantize(model, args.quantize)
    if sys.stdin.isatty():
        print(f"chatting with {args.model}: type an instruction; /quit or Ctrl-D ends")
    chat(model, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
         top_k=args.top_k, top_p=args.top_p)


def add_chat(sub, formatter):
    p = sub.add_parser(
        "chat", formatter_class=formatter,
        help="talk to an instruction-tuned model in the terminal",
        description="Read an instruction per line, format it with the Alpaca prompt and "
                    "stream the model's response. /quit or Ctrl-D (end of input) exits.")
    add_model_option(p, required=True, what="the instruction-tuned model (usually a "
                                            "`tinygpt finetune-instruct --out` directory)")
    add_quantize_option(p)
    add_sampling_options(p, max_new_tokens=256)
    add_seed_option(p, what="random seed for sampling")
    p.set_defaults(func=cmd_chat)


# ----------------------------------------------------------------------------- judge

def cmd_judge(args):
    from tinygpt.finetune.judge import JudgeRunConfig, run_judge

    api_key = (args.api_key or os.environ.get("OPENAI_API_KEY")) if args.api == "openai" else None
    run_judge(JudgeRunConfig(
        responses=Path(args.responses), url=args.url, api=args.api,
        judge_model=args.judge_model, key=args.key, api_key=api_key, retries=args.retries,
        timeout=args.timeout, limit=args.limit, out=args.out))


def add_judge(sub, formatter):
    from tinygpt.finetune.judge_client import API_PATHS, OLLAMA_URL

    p = sub.add_parser(
        "judge", formatter_class=formatter,
        help="score model responses 0-100 with an LLM judge (Ollama or OpenAI API)",
        description="Ask a judge LLM to score each entry's model_response against its correct "
                    "output, with the book's prompt, and print the average score.")
    p.add_argument("--responses", required=True,
                   help="JSON list of entries with instruction, input, output and "
                        "model_response (as written by `tinygpt finetune-instruct`)")
    p.add_argument("--url", default=OLLAMA_URL,
                   help="the judge server: a base URL (the API's path is added) or a full "
                        "endpoint URL (Ollama's by default)")
    p.add_argument("--api", choices=sorted(API_PATHS), default="ollama",
                   help="ollama: POST /api/chat, streamed JSON lines; openai: POST "
                        "/v1/chat/completions")
    p.add_argument("--judge-model", default="llama3",
                   help="the model name the server knows")
    p.add_argument("--key", default="model_response",
                   help="the entry field holding the response to score")
    p.add_argument("--api-key", default=None,
                   help="bearer token for an OpenAI-compatible server (default: the "
                        "OPENAI_API_KEY environment variable, if set)")
    p.add_argument("--retries", type=non_negative_int, default=3,
                   help="retries per request after server errors or timeouts")
    p.add_argument("--timeout", type=positive_float, default=120.0,
                   help="seconds one request may take in all, answer included")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="score only the first N entries (default: all)")
    p.add_argument("--out", default=None,
                   help="JSON file for the entries with their score and the judge's answer, "
                        "written as the scores come in; scores already in it are kept "
                        "(default: RESPONSES-scores.json beside --responses)")
    p.set_defaults(func=cmd_judge)


# ----------------------------------------------------------------------------- DPO

def cmd_finetune_dpo(args):
    from tinygpt.finetune.dpo.run import DPORunConfig, run_dpo
    from tinygpt.finetune.dpo.training import DPOConfig

    train = DPOConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, beta=args.beta,
                      eval_every=args.eval_every, eval_iters=args.eval_iters,
                      allowed_max_length=args.allowed_max_length,
                      mask_prompt=not args.no_mask_prompt, seed=args.seed)
    run_dpo(DPORunConfig(data=Path(args.data), model=args.model, out=Path(args.out),
                         train=train, num_test=args.num_test,
                         max_new_tokens=args.max_new_tokens))


def add_finetune_dpo(sub, formatter):
    p = sub.add_parser(
        "finetune-dpo", formatter_class=formatter,
        help="preference tuning with DPO on chosen/rejected pairs",
        description="Direct Preference Optimization of an instruction-tuned model on a JSON "
                    "list of {instruction, input, chosen, rejected} entries (the book's "
                    "instruction-data-with-preference.json), against a frozen copy of the "
                    "starting model. The default --lr 5e-4 suits small models; the book uses "
                    "5e-6 with GPT-2 medium.")
    p.add_argument("--data", required=True,
                   help="preference data: a JSON list with instruction, input, chosen and "
                        "rejected")
    add_model_option(p, required=True, what="the model to tune (usually a `tinygpt "
                                            "finetune-instruct --out` directory)", scratch=True)
    p.add_argument("--out", required=True, help="directory for the tuned model and history")
    p.add_argument("--beta", type=positive_float, default=0.1,
                   help="how strongly to keep close to the reference model: larger values "
                        "punish drifting more")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the pairs")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop after this many steps (default: all epochs)")
    add_training_options(p, lr=5e-4, batch_size=8, weight_decay=0.01, what="pairs")
    p.add_argument("--allowed-max-length", type=positive_int, default=1024,
                   help="cut sequences to this many tokens")
    p.add_argument("--no-mask-prompt", action="store_true",
                   help="score the prompt tokens too (default: the response only)")
    add_eval_options(p, every=5, iters=5)
    p.add_argument("--num-test", type=non_negative_int, default=0,
                   help="afterwards, answer the first N test instructions and write them to "
                        f"OUT/{RESPONSES_FILE}")
    p.add_argument("--max-new-tokens", type=non_negative_int, default=256,
                   help="longest test answer in tokens")
    add_seed_option(p, default=123)
    p.set_defaults(func=cmd_finetune_dpo)


def _add_lora_options(p, instead):
    p.add_argument("--lora-rank", type=non_negative_int, default=0,
                   help=f"train LoRA matrices of this rank in every Linear layer {instead} "
                        "(0: no LoRA, the default; the book uses 16)")
    p.add_argument("--lora-alpha", type=positive_float, default=16.0,
                   help="LoRA scale: updates are multiplied by alpha/rank")


def add_parsers(sub, formatter):
    """Register every fine-tuning command on the ``tinygpt`` sub-parsers object."""
    for add in (add_finetune_classifier, add_classify, add_finetune_instruct, add_chat,
                add_judge, add_finetune_dpo):
        add(sub, formatter)
