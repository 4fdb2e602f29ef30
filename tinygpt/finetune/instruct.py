"""Instruction fine-tuning (the book's chapter 7): teach a GPT to answer in the Alpaca format.

Every example becomes one text, the prompt followed by the response:

    Below is an instruction that describes a task. Write a response that appropriately
    completes the request.

    ### Instruction:
    {instruction}

    ### Input:              <- only when the entry has an input
    {input}

    ### Response:
    {output}

The texts are tokenized, padded into batches by ``collate`` (the book's custom_collate_fn:
padding with <|endoftext|>, targets shifted by one, every padding target after the first set
to -100 so the loss skips it), and trained with tinygpt's ordinary training loop
(``tinygpt.train.train``) at the book's settings: AdamW, learning rate 5e-5, weight decay 0.1,
two epochs, batch size 8. Then the model answers each test instruction greedily and the
answers are written beside the test entries (key ``model_response``), ready for an LLM judge
(``tinygpt.finetune.judge``).

With ``mask_prompt=True`` (the book's exercise 7.2) the loss covers the response tokens only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy

from tinygpt import backend

PAD_TOKEN_ID = 50256  # GPT-2's <|endoftext|>, used as padding and end of response
IGNORE_INDEX = -100
RESPONSE_HEADER = "\n\n### Response:\n"
RESPONSES_FILE = "instruction-data-with-response.json"
DATA_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/"
            "01_main-chapter-code/instruction-data.json")

# "--model scratch": a small randomly initialised GPT with GPT-2's vocabulary, for runs where
# no pretrained weights are at hand. It will learn the format, not to follow instructions.
SCRATCH_CONFIG = dict(vocab_size=50257, context_length=256, emb_dim=128, n_heads=4,
                      n_layers=2, drop_rate=0.0, qkv_bias=False)


# ----------------------------------------------------------------------------- formatting

def format_input(entry) -> str:
    """The book's Alpaca-style prompt: instruction and (if not empty) input, no response."""
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text


def format_response(entry) -> str:
    """The part after the prompt: ``"\\n\\n### Response:\\n" + output``."""
    return f"{RESPONSE_HEADER}{entry['output']}"


def read_json(path, what="data"):
    """Parse the JSON file ``path``; a missing file or bad JSON is an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def load_entries(path) -> list[dict]:
    """Read an instruction data set: a JSON list of {instruction, input, output} objects."""
    entries = read_json(path, "instruction data")
    validate_entries(entries, Path(path))
    return entries


def validate_entries(entries, source="the data", keys=("instruction", "output")) -> None:
    """Check that ``entries`` is a non-empty list of dicts with string fields ``keys``."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty JSON list of entries, got "
                         f"{type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: entry {i} is a {type(entry).__name__}, expected an "
                             f"object with keys {', '.join(keys)}")
        missing = [k for k in keys if not isinstance(entry.get(k), str)]
        if missing:
            raise ValueError(f"{source}: entry {i} lacks the text field(s) "
                             f"{', '.join(missing)} (expected keys: {', '.join(keys)}, "
                             "and optionally input)")


class Split(NamedTuple):
    train: list
    val: list
    test: list


def split_data(entries, seed=None) -> Split:
    """The book's split: the first 85% train, the next 10% test, the remaining ~5% validation.

    With ``seed`` the entries are shuffled first (the book does not shuffle). Returns
    ``Split(train, val, test)``; for the book's 1100 entries that is 935 / 55 / 110.
    """
    entries = list(entries)
    if seed is not None:
        order = numpy.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    train_portion = int(len(entries) * 0.85)  # 85% for training
    test_portion = int(len(entries) * 0.1)  # 10% for testing
    train = entries[:train_portion]
    test = entries[train_portion:train_portion + test_portion]
    val = entries[train_portion + test_portion:]
    return Split(train, val, test)


def encode(tokenizer, text) -> list[int]:
    """Token ids of ``text``; a literal "<|endoftext|>" in the data is encoded as text."""
    try:
        return list(tokenizer.encode(text, disallowed_special=()))
    except TypeError:  # a tokenizer without tiktoken's keyword
        return list(tokenizer.encode(text))


def encode_entries(entries, tokenizer, mask_prompt=False) -> list:
    """Token ids per entry: the whole text (prompt + response) as one list, or with
    ``mask_prompt`` a ``(prompt_ids, response_ids)`` pair, where prompt_ids encode
    ``format_input(entry)`` exactly as the book's exercise 7.2 measures the instruction."""
    items = []
    for entry in entries:
        prompt = format_input(entry)
        full = encode(tokenizer, prompt + format_response(entry))
        if not mask_prompt:
            items.append(full)
            continue
        prompt_ids = encode(tokenizer, prompt)
        if full[:len(prompt_ids)] != prompt_ids:  # BPE merged across the seam: rare
            full = prompt_ids + encode(tokenizer, format_response(entry))
        items.append((prompt_ids, full[len(prompt_ids):]))
    return items


# ----------------------------------------------------------------------------- batches

def collate(batch, pad_token_id=PAD_TOKEN_ID, ignore_index=IGNORE_INDEX,
            allowed_max_length=None, mask_prompt=False):
    """The book's custom_collate_fn: token-id lists -> (inputs, targets) int64 arrays (B, T).

    Each item gets one <|endoftext|> (``pad_token_id``) appended and is padded with it to the
    longest item + 1; inputs drop the last token, targets the first. In the targets, every
    padding token after the first becomes ``ignore_index``: the model learns to emit one
    end-of-text, and the padding after it counts for nothing. Then rows are cut to
    ``allowed_max_length``.

    With ``mask_prompt=True`` each item is a ``(prompt_ids, response_ids)`` pair and the
    targets that predict prompt tokens (``targets[:len(prompt_ids) - 1]``) are also set to
    ``ignore_index``, so the loss covers the response only (the book's exercise 7.2).
    """
    if len(batch) == 0:
        raise ValueError("collate: the batch is empty")
    if allowed_max_length is not None and allowed_max_length < 1:
        raise ValueError(f"collate: allowed_max_length must be at least 1, got "
                         f"{allowed_max_length}")
    if mask_prompt:
        for i, item in enumerate(batch):
            if not (isinstance(item, (tuple, list)) and len(item) == 2
                    and not isinstance(item[0], (int, numpy.integer))):
                raise ValueError(f"collate(mask_prompt=True): item {i} must be a "
                                 "(prompt_ids, response_ids) pair")
        prompt_lengths = [len(prompt) for prompt, _ in batch]
        sequences = [list(prompt) + list(response) for prompt, response in batch]
    else:
        prompt_lengths = None
        sequences = [list(item) for item in batch]
    batch_max_length = max(len(seq) + 1 for seq in sequences)
    inputs = numpy.empty((len(sequences), batch_max_length - 1), dtype=numpy.int64)
    targets = numpy.empty_like(inputs)
    for row, seq in enumerate(sequences):
        padded = seq + [pad_token_id] * (batch_max_length - len(seq))  # >= 1 pad token
        inputs[row] = padded[:-1]
        targets[row] = padded[1:]
        pads = numpy.flatnonzero(targets[row] == pad_token_id)
        targets[row, pads[1:]] = ignore_index  # keep the first end-of-text as a target
        if prompt_lengths is not None:
            targets[row, :max(prompt_lengths[row] - 1, 0)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return numpy.ascontiguousarray(inputs), numpy.ascontiguousarray(targets)


class InstructionBatches:
    """Batches for ``tinygpt.train.train``: encoded examples in shuffled epochs.

    Training batch ``i`` is position ``i % batches_per_epoch`` of epoch
    ``i // batches_per_epoch``, whose order is a permutation drawn from a generator seeded
    with ``(seed, epoch)``; the last incomplete batch is dropped (as the book's
    ``drop_last=True``). So a batch is a pure function of its index, which is what makes a
    resumed run see the same data. Evaluation uses the first ``count`` batches of a split in
    their stored order, the last one possibly smaller.
    """

    def __init__(self, train_items, val_items, batch_size, seed=123,
                 pad_token_id=PAD_TOKEN_ID, ignore_index=IGNORE_INDEX,
                 allowed_max_length=None, mask_prompt=False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.items = {"train": list(train_items), "val": list(val_items)}
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = len(self.items["train"]) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {len(self.items['train'])} examples, "
                             f"fewer than one batch of {batch_size}")
        if not self.items["val"]:
            raise ValueError("the validation set is empty")
        self.collate_args = dict(pad_token_id=pad_token_id, ignore_index=ignore_index,
                                 allowed_max_length=allowed_max_length, mask_prompt=mask_prompt)

    def epoch_order(self, epoch):
        return numpy.random.default_rng((self.seed, epoch)).permutation(len(self.items["train"]))

    def train_batch(self, index):
        epoch, position = divmod(index, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        start = position * self.batch_size
        chosen = [self.items["train"][int(i)] for i in order[start:start + self.batch_size]]
        return collate(chosen, **self.collate_args)

    def eval_batches(self, split, count):
        items = self.items[split]
        starts = range(0, len(items), self.batch_size)
        return [collate(items[s:s + self.batch_size], **self.collate_args)
                for s in list(starts)[:count]]


# ----------------------------------------------------------------------------- models

def is_scratch(name) -> bool:
    return str(name) == "scratch"


def load_base_model(name_or_path, seed=123):
    """(model, tokenizer) for ``--model``: "scratch" (a small random GPT with GPT-2's
    vocabulary, see SCRATCH_CONFIG) or anything ``tinygpt.checkpoints.load_model``
    accepts (GPT-2 names, Hugging Face directories, tinygpt checkpoints)."""
    if is_scratch(name_or_path):
        from tinygpt.config import GPTConfig
        from tinygpt.nn.gpt import GPTModel
        from tinygpt.tokenizer import gpt2_encoding

        backend.manual_seed(seed)
        return GPTModel(GPTConfig(**SCRATCH_CONFIG)), gpt2_encoding()
    from tinygpt.checkpoints import load_model

    return load_model(name_or_path)


def check_vocabulary(model, pad_token_id=PAD_TOKEN_ID) -> None:
    if model.cfg.vocab_size <= pad_token_id:
        raise ValueError(f"instruction fine-tuning pads with token {pad_token_id} (GPT-2's "
                         f"<|endoftext|>), but the model's vocabulary has only "
                         f"{model.cfg.vocab_size} tokens; use a model with GPT-2's tokenizer")


# ----------------------------------------------------------------------------- training

def finetune(model, train_items, val_items, *, epochs=2, batch_size=8, lr=5e-5,
             weight_decay=0.1, allowed_max_length=1024, mask_prompt=False, seed=123,
             eval_every=5, eval_iters=5, grad_clip=None, pad_token_id=PAD_TOKEN_ID,
             out_dir=None, log=print, progress=True):
    """Fine-tune ``model`` on encoded examples (see ``encode_entries``) with
    ``tinygpt.train.train`` at a constant learning rate and without gradient clipping, as
    the book does. Examples are cut to ``allowed_max_length`` and to the model's context
    length. With ``out_dir`` the run is checkpointed there (and resumed from there).
    Returns ``(history, batches)``.
    """
    from tinygpt.train import TrainConfig, train

    check_vocabulary(model, pad_token_id)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    allowed = min(allowed_max_length or model.cfg.context_length, model.cfg.context_length)
    batches = InstructionBatches(train_items, val_items, batch_size, seed=seed,
                                 pad_token_id=pad_token_id, allowed_max_length=allowed,
                                 mask_prompt=mask_prompt)
    steps = epochs * batches.batches_per_epoch
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, peak_lr=lr, initial_lr=lr,
                      min_lr=lr, warmup_steps=0, weight_decay=weight_decay,
                      grad_clip=grad_clip, eval_every=eval_every, eval_iters=eval_iters,
                      seed=seed)
    history = train(model, batches, cfg, out_dir=out_dir, log=log, progress=progress)
    return history, batches


def epoch_summary(history, batches_per_epoch) -> list[dict]:
    """Per epoch: the mean training loss of its steps, and the last evaluated training and
    validation losses within it (the ones the book plots)."""
    rows = []
    for lo in range(0, len(history.step_loss), batches_per_epoch):
        hi = min(lo + batches_per_epoch, len(history.step_loss))
        row = {"epoch": lo // batches_per_epoch + 1, "last_step": hi,
               "mean_step_loss": float(numpy.mean(history.step_loss[lo:hi]))}
        evals = [i for i, step in enumerate(history.steps) if lo < step <= hi]
        if evals:
            row["train_loss"] = history.train_loss[evals[-1]]
            row["val_loss"] = history.val_loss[evals[-1]]
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- responses

def respond(model, tokenizer, entry, max_new_tokens=256, eos_id=PAD_TOKEN_ID,
            temperature=0.0, top_k=None, top_p=None) -> str:
    """The model's answer to one entry, extracted as the book does: generate after
    ``format_input(entry)`` until <|endoftext|>, drop the prompt and "### Response:"."""
    from tinygpt.generation import stream

    input_text = format_input(entry)
    ids = encode(tokenizer, input_text)
    new = []
    for token in stream(model, [ids], max_new_tokens, context_size=model.cfg.context_length,
                        temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id):
        token = int(token[0])
        if token == eos_id:
            break
        new.append(token)
    generated_text = tokenizer.decode(ids + new)
    return generated_text[len(input_text):].replace("### Response:", "").strip()


def generate_responses(model, tokenizer, entries, max_new_tokens=256, eos_id=PAD_TOKEN_ID,
                       progress=True, key="model_response") -> list[dict]:
    """Copies of ``entries``, each with the model's greedy answer under ``key``."""
    from tqdm.auto import tqdm

    out = []
    for entry in tqdm(entries, desc="Generating responses", disable=not progress, leave=False):
        out.append({**entry, key: respond(model, tokenizer, entry, max_new_tokens, eos_id)})
    return out


def save_json(data, path) -> Path:
    """Write ``data`` as indented JSON, atomically (a temporary file, then a rename)."""
    from tinygpt.fileio import atomic_write_text

    return atomic_write_text(path, json.dumps(data, indent=4, ensure_ascii=False))


def save_model(model, out_dir, tokenizer=None) -> Path:
    """Save a (merged) fine-tuned model to ``out_dir`` in Hugging Face layout
    (config.json + model.safetensors), which ``--model DIR`` loads."""
    from tinygpt.weights import save_pretrained

    save_pretrained(model, out_dir)
    _save_tokenizer(tokenizer, out_dir)
    return Path(out_dir)


def _save_tokenizer(tokenizer, out_dir) -> None:
    if tokenizer is None:
        return
    try:
        from tinygpt.tokenizer import save_tokenizer
    except ImportError:
        return
    save_tokenizer(tokenizer, Path(out_dir))


# ----------------------------------------------------------------------------- chat

STOP_MARKER = "###"


class _StopStreamer:
    """Prints decoded text as it grows, holding back whatever might be the start of a
    "###" heading (or an incomplete UTF-8 character), and stops at the first heading."""

    def __init__(self, write):
        self.write, self.shown, self.stopped = write, "", False

    def update(self, text) -> None:
        cut = text.find(STOP_MARKER)
        if cut >= 0:
            text, self.stopped = text[:cut].rstrip(), True
            self._show(text)
            return
        keep = len(text.rstrip())
        for k in range(len(STOP_MARKER) - 1, 0, -1):  # a partial "#" or "##" at the end
            if text[:keep].endswith(STOP_MARKER[:k]):
                keep = len(text[:keep - k].rstrip())
                break
        if text.endswith("\ufffd"):
            keep = min(keep, len(text) - 1)
        self._show(text[:keep])

    def finish(self, text) -> str:
        cut = text.find(STOP_MARKER)
        final = (text[:cut] if cut >= 0 else text).rstrip()
        self._show(final)
        return final

    def _show(self, text):
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.write(text[len(self.shown):])
            self.shown = text


def chat(model, tokenizer, stdin=None, stdout=None, max_new_tokens=256, temperature=0.0,
         top_k=None, top_p=None, eos_id=PAD_TOKEN_ID, prompt_marker="> ") -> int:
    """A terminal loop: each line read is an instruction; the answer streams token by token
    and ends at <|endoftext|> or a new "###" heading. Stops at end of input or "/quit".
    Returns the number of answers given."""
    from tinygpt.generation import stream

    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    interactive = hasattr(stdin, "isatty") and stdin.isatty()

    def write(text):
        stdout.write(text)
        stdout.flush()

    answers = 0
    while True:
        if interactive:
            write(prompt_marker)
        line = stdin.readline()
        if not line:  # EOF (Ctrl-D)
            if interactive:
                write("\n")
            return answers
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return answers
        prompt = format_input({"instruction": line, "input": ""}) + RESPONSE_HEADER
        ids = encode(tokenizer, prompt)
        printer, new = _StopStreamer(write), []
        try:
            for token in stream(model, [ids], max_new_tokens,
                                context_size=model.cfg.context_length,
                                temperature=temperature, top_k=top_k, top_p=top_p,
                                eos_id=eos_id):
                token = int(token[0])
                if token == eos_id:
                    break
                new.append(token)
                printer.update(tokenizer.decode(new))
                if printer.stopped:
                    break
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            write(" [interrupted]")
        printer.finish(tokenizer.decode(new))
        write("\n")
        answers += 1


# ----------------------------------------------------------------------------- command line

def cmd_finetune_instruct(args):
    run_instruction_finetuning(args)


def run_instruction_finetuning(args, log=print):
    """The whole chapter-7 flow for ``tinygpt finetune-instruct`` and the example script:
    data, split, model (optionally LoRA), training, saving, test responses, judge."""
    out = Path(args.out)
    entries = load_entries(args.data)
    split = split_data(entries, seed=getattr(args, "shuffle_seed", None))
    log(f"data: {len(entries)} entries -> {len(split.train)} train, {len(split.val)} "
        f"validation, {len(split.test)} test")
    if not split.val:
        raise ValueError(f"{args.data} has too few entries ({len(entries)}) for a validation "
                         "split; the book's 85/10/5 split needs at least 10")
    model, tokenizer = load_base_model(args.model, seed=args.seed)
    check_vocabulary(model)
    train_dir = out
    if args.lora_rank:
        try:
            from tinygpt.nn import apply_lora
        except ImportError as err:
            raise RuntimeError(f"LoRA is not available in this tinygpt: {err}") from None
        apply_lora(model, rank=args.lora_rank, alpha=args.lora_alpha)
        train_dir = out / "lora-checkpoint"  # holds LoRA weights; the merged model goes to out
    trainable = model.num_parameters(trainable_only=True)
    log(f"model: {args.model}, {model.num_parameters():,} parameters ({trainable:,} "
        f"trainable){', LoRA rank %d' % args.lora_rank if args.lora_rank else ''}")
    train_items = encode_entries(split.train, tokenizer, mask_prompt=args.mask_prompt)
    val_items = encode_entries(split.val, tokenizer, mask_prompt=args.mask_prompt)
    start = time.perf_counter()
    history, batches = finetune(
        model, train_items, val_items, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay,
        allowed_max_length=args.allowed_max_length, mask_prompt=args.mask_prompt,
        seed=args.seed, eval_every=args.eval_every, eval_iters=args.eval_iters,
        out_dir=train_dir, log=log)
    minutes = (time.perf_counter() - start) / 60
    log(f"training completed in {minutes:.2f} minutes")
    for row in epoch_summary(history, batches.batches_per_epoch):
        extra = (f", train loss {row['train_loss']:.3f}, val loss {row['val_loss']:.3f}"
                 if "val_loss" in row else "")
        log(f"epoch {row['epoch']}: mean step loss {row['mean_step_loss']:.3f}{extra}")
    if args.lora_rank:
        from tinygpt.nn import merge_lora

        merge_lora(model)
        log(f"model (LoRA merged): {save_model(model, out, tokenizer)}")
    else:
        _save_tokenizer(tokenizer, out)
        log(f"checkpoint: {out / 'checkpoint.safetensors'}")
    if history.steps:
        from tinygpt.plots import plot_losses

        log(f"loss plot: {plot_losses(history, out / 'losses.png')}")
    model.eval()
    test = split.test[:args.num_test] if args.num_test is not None else split.test
    responses = generate_responses(model, tokenizer, test, args.max_new_tokens)
    path = save_json(responses, out / RESPONSES_FILE)
    log(f"test responses: {path}")
    for entry in responses[:3]:
        log("-" * 40)
        log(format_input(entry))
        log(f"\nCorrect response:\n>> {entry['output']}")
        log(f"\nModel response:\n>> {entry['model_response']}")
    if getattr(args, "judge_url", None):
        from tinygpt.finetune.judge import score_responses

        result = score_responses(responses, model=args.judge_model, url=args.judge_url,
                                 api=args.judge_api)
        log(result.summary())
    return history, responses


def add_finetune_instruct(sub):
    p = sub.add_parser(
        "finetune-instruct", help="instruction fine-tuning on Alpaca-style data (chapter 7)",
        description="Fine-tune a GPT on a JSON list of {instruction, input, output} entries "
                    "(the book's chapter 7): 85/10/5 train/test/validation split, training "
                    "with AdamW at a constant learning rate, then greedy answers to the test "
                    "instructions written to OUT/" + RESPONSES_FILE + ".")
    p.add_argument("--data", required=True,
                   help="instruction data: a JSON list of objects with instruction, input "
                        "and output (e.g. the book's instruction-data.json)")
    p.add_argument("--model", default="gpt2-medium",
                   help="the model to fine-tune: a GPT-2 name (gpt2, gpt2-medium, ...), a "
                        "Hugging Face directory, a tinygpt checkpoint directory, or 'scratch' "
                        "for a small random GPT with GPT-2's vocabulary (default: gpt2-medium, "
                        "as the book)")
    p.add_argument("--out", required=True,
                   help="directory for the checkpoint, loss plot and test responses (a run "
                        "found there is resumed)")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training set "
                                                         "(default 2)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    p.add_argument("--lr", type=float, default=5e-5,
                   help="learning rate, constant (default 5e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay (default 0.1)")
    p.add_argument("--allowed-max-length", type=int, default=1024,
                   help="cut every example to this many tokens (and to the model's context "
                        "length; default 1024)")
    p.add_argument("--mask-prompt", action="store_true",
                   help="compute the loss on the response tokens only, not on the "
                        "instruction (the book's exercise 7.2)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="train low-rank adapters of this rank instead of all weights "
                        "(0: full fine-tuning; the adapters are merged before saving)")
    p.add_argument("--lora-alpha", type=float, default=16.0,
                   help="LoRA scaling alpha (default 16)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest generated test response in tokens (default 256)")
    p.add_argument("--num-test", type=int, default=None,
                   help="answer only the first N test entries (default: all)")
    p.add_argument("--eval-every", type=int, default=5,
                   help="steps between loss evaluations (default 5, as the book)")
    p.add_argument("--eval-iters", type=int, default=5,
                   help="batches per loss evaluation (default 5)")
    p.add_argument("--seed", type=int, default=123,
                   help="random seed for shuffling and initialisation (default 123)")
    p.add_argument("--judge-url", default=None,
                   help="after training, score the test responses with an LLM judge at "
                        "this URL (see `tinygpt judge`)")
    p.add_argument("--judge-api", choices=["ollama", "openai"], default="ollama",
                   help="the judge's API style (default ollama)")
    p.add_argument("--judge-model", default="llama3", help="the judge model (default llama3)")
    p.set_defaults(func=cmd_finetune_instruct)
    return p


def cmd_chat(args):
    if args.seed is not None:
        backend.manual_seed(args.seed)
    model, tokenizer = load_base_model(args.model)
    check_vocabulary(model)
    if sys.stdin.isatty():
        print(f"chatting with {args.model}: type an instruction; /quit or Ctrl-D ends")
    chat(model, tokenizer, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
         top_k=args.top_k, top_p=args.top_p)


def add_chat(sub):
    p = sub.add_parser(
        "chat", help="talk to an instruction-tuned model in the terminal",
        description="Read an instruction per line, format it with the Alpaca prompt and "
                    "stream the model's response. /quit or Ctrl-D (end of input) exits.")
    p.add_argument("--model", required=True,
                   help="the instruction-tuned model: a directory written by "
                        "`tinygpt finetune-instruct`, or anything else --model accepts")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest response in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 answers greedily (default); higher values sample")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample among the most likely tokens whose probabilities add up to p")
    p.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    p.set_defaults(func=cmd_chat)
    return p


def add_parsers(sub):
    """Add finetune-instruct, chat, judge and finetune-dpo to the ``tinygpt`` command."""
    from tinygpt.finetune.dpo import add_finetune_dpo
    from tinygpt.finetune.judge import add_judge

    add_finetune_instruct(sub)
    add_judge(sub)
    add_chat(sub)
    add_finetune_dpo(sub)
