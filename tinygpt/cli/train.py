"""``tinygpt train``: pretrain a GPT on a text or token file, resumable from its --out."""

from __future__ import annotations

from pathlib import Path

import numpy

from tinygpt import backend
from tinygpt.cli.options import (
    add_eval_options,
    add_seed_option,
    add_training_options,
    fraction,
    non_negative_int,
    positive_int,
    probability,
)
from tinygpt.tokenizer import ENDOFTEXT


def cmd_train(args):
    """Train here, or with ``--nproc N`` restart this command on N processes (mpiexec)."""
    from tinygpt import distributed

    if args.plot_grads and max(args.nproc or 1, distributed.world_size_from_environment()) > 1:
        raise SystemExit("error: --plot-grads needs one process: with --nproc (or under "
                         "mpiexec) each process holds only its share of the gradient")
    if args.nproc and args.nproc > 1 and distributed.world_size_from_environment() == 1:
        status = distributed.launch(args.nproc, args.argv)
        if status != 0:
            raise SystemExit(status)  # the processes have said why (an error, Ctrl-C)
        return
    from tinygpt.train import TrainingInterrupted

    comm = distributed.init(args.nproc)
    with distributed.abort_on_error(comm, agreed=(TrainingInterrupted,)):
        _train(args, distributed.DataParallel(comm, shard_optimizer=args.zero))


def _train(args, parallel):
    """The training run of this process (one of several under MPI; rank 0 prints and plots)."""
    from tinygpt.config import GPTConfig
    from tinygpt.data import RandomWindows
    from tinygpt.nn.gpt import GPTModel
    from tinygpt.plots import GradNormLog, plot_grad_norms, plot_losses
    from tinygpt.train import TrainConfig, train

    out = Path(args.out)
    warmup = _warmup_steps(args)
    tokenizer, tokens = _training_tokens(args, out)
    overrides = {"vocab_size": tokenizer.n_vocab}
    if args.context_length:
        overrides["context_length"] = args.context_length
    if args.dropout is not None:
        overrides["drop_rate"] = args.dropout
    model_cfg = GPTConfig.preset(args.config, **overrides)
    # one plan for all ranks (each would see a different amount of free memory)
    micro_batch, grad_accum = parallel.comm.broadcast(
        _fit_in_memory(model_cfg, args, parallel.comm.size) if parallel.is_main else None)
    split = int(len(tokens) * (1 - args.val_fraction))
    batches = RandomWindows(tokens[:split], tokens[split:], micro_batch,
                            model_cfg.context_length, seed=args.seed)
    cfg = TrainConfig(
        max_steps=args.max_steps, batch_size=micro_batch, grad_accum=grad_accum,
        peak_lr=args.lr, initial_lr=args.lr * 0.01 if warmup else args.lr,
        min_lr=args.min_lr, warmup_steps=warmup, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip or None, eval_every=args.eval_every,
        eval_iters=args.eval_iters, sample_every=args.sample_every,
        sample_prompt=args.sample_prompt, checkpoint_every=args.checkpoint_every,
        seed=args.seed)
    backend.manual_seed(args.seed)
    model = GPTModel(model_cfg)
    if parallel.is_main and parallel.comm.size > 1:
        sharded = ", AdamW moments sharded (ZeRO-1)" if args.zero else ""
        print(f"training on {parallel.comm.size} processes{sharded}")
    if parallel.is_main:
        print(f"model: {args.config}, {model.num_parameters():,} parameters; "
              f"{len(tokens):,} tokens of {args.data} ({split:,} train)")
    grad_log = GradNormLog() if args.plot_grads else None
    history = train(model, batches, cfg, out_dir=out, tokenizer=tokenizer,
                    after_backward=grad_log.record if grad_log else None, parallel=parallel)
    if not parallel.is_main:
        return  # rank 0 alone writes plots and prints
    if grad_log and grad_log.layers:
        print(f"gradient norms plot: {plot_grad_norms(grad_log, out / 'grad_norms.png')}")
    if history.steps:
        print(f"loss plot: {plot_losses(history, out / 'losses.png')}")
        print(f"final: train loss {history.train_loss[-1]:.4f}, "
              f"val loss {history.val_loss[-1]:.4f}")


def _fit_in_memory(model_cfg, args, ranks=1) -> tuple[int, int]:
    """(micro-batch, gradient accumulation) whose step fits in the memory available, keeping
    the global batch of --batch-size x --grad-accum sequences; says what it estimates. With
    ``ranks`` processes, those the launcher put on this machine (all, if it does not say)
    share its memory, each with the whole model and its rows of a micro-batch."""
    from tinygpt import distributed
    from tinygpt.memory import GiB, available_memory, plan_micro_batches

    available = available_memory()
    local = min(ranks, distributed.local_size_from_environment() or ranks)
    micro, accum, estimate = plan_micro_batches(
        model_cfg, args.batch_size, args.grad_accum, available, ranks=ranks,
        local_ranks=local, sharded=args.zero)
    where = f" of {available / GiB:.1f} GiB available" if available else ""
    rows = f"its rows of {micro} sequences" if ranks > 1 else f"{micro} sequences"
    per_process = f" in each of {local} processes here" if local > 1 else ""
    print(f"memory: about {estimate.total / GiB:.2f} GiB per step{per_process}{where} "
          f"({estimate.weights_and_optimizer / GiB:.2f} GiB weights, gradients and AdamW "
          f"moments; {estimate.activations / GiB:.2f} GiB activations of {rows})")
    if micro < args.batch_size:
        print(f"memory: each batch of {args.batch_size} sequences is split into micro-batches "
              f"of {micro} (gradient accumulation {accum}, the same global batch) to fit")
    return micro, accum


def _warmup_steps(args) -> int:
    """--warmup-steps, by default 10% of the run (at most 100 steps, nanoGPT's figure)."""
    if args.warmup_steps is None:
        return min(100, args.max_steps // 10)
    if args.warmup_steps > args.max_steps:
        raise SystemExit(f"error: --warmup-steps {args.warmup_steps} is more than --max-steps "
                         f"{args.max_steps}")
    return args.warmup_steps


def _training_tokens(args, out):
    """(tokenizer, token array) for --data: a text file (the bundled Tiny Shakespeare when
    --data is not given) or a token file from `tinygpt prepare`, checked up front."""
    from tinygpt.corpora import SHAKESPEARE, corpus_path
    from tinygpt.data import open_token_file
    from tinygpt.tokenizer import CharTokenizer, gpt2_encoding

    if args.data is None:
        args.data = str(corpus_path(SHAKESPEARE))
    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(f"error: --data {data}: no such file")
    if data.suffix.lower() == ".bin":
        if args.tokenizer is not None:
            raise SystemExit(f"error: --tokenizer {args.tokenizer}: --data {data} is a token "
                             "file, already tokenized with GPT-2's BPE; leave --tokenizer out")
        encoding = gpt2_encoding()
        return encoding, open_token_file(data, vocab_size=encoding.n_vocab)
    try:
        text = data.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SystemExit(f"error: --data {data} is not UTF-8 text ({err.reason} at byte "
                         f"{err.start}); a token file must end in .bin") from None
    if not text:
        raise SystemExit(f"error: --data {data} is empty")
    tokenizer_kind = args.tokenizer or ("char" if args.config == "baby" else "gpt2")
    if tokenizer_kind == "char":
        existing = out / "tokenizer.json"  # a run being resumed keeps its vocabulary
        tokenizer = (CharTokenizer.load(existing) if existing.is_file()
                     else CharTokenizer.from_text(text))
    else:
        tokenizer = gpt2_encoding()
    tokens = numpy.asarray(tokenizer.encode(text, allowed_special={ENDOFTEXT}),
                           dtype=numpy.int64)
    return tokenizer, tokens


def add_parser(sub, formatter):
    p = sub.add_parser(
        "train", help="pretrain a GPT on a text file (resumable)", formatter_class=formatter,
        description="Train a GPT from scratch on --data. Checkpoints go to --out; running the "
                    "same command again resumes from the last checkpoint.")
    p.add_argument("--data", default=None,
                   help="a UTF-8 text file, or a token file made by `tinygpt prepare` (.bin) "
                        "(default: Tiny Shakespeare, 1.1 MB, bundled with tinygpt)")
    p.add_argument("--config", default="baby",
                   help="model size: baby (4 layers, 128 dims), gpt2-124M, gpt2-355M, "
                        "gpt2-774M, gpt2-1558M")
    p.add_argument("--out", required=True, help="directory for checkpoints, tokenizer and plot")
    p.add_argument("--tokenizer", choices=["char", "gpt2"], default=None,
                   help="characters (default for baby) or GPT-2 BPE (default otherwise)")
    p.add_argument("--context-length", type=positive_int, default=None,
                   help="tokens per training window (default: the config's)")
    p.add_argument("--max-steps", type=positive_int, default=2000, help="optimizer steps")
    add_training_options(p, lr=1e-3, batch_size=12, grad_clip=1.0)
    p.add_argument("--grad-accum", type=positive_int, default=1,
                   help="micro-batches whose gradients add up before each step")
    p.add_argument("--min-lr", type=float, default=1e-4,
                   help="learning rate at the end of the cosine decay")
    p.add_argument("--warmup-steps", type=non_negative_int, default=None,
                   help="steps of linear warm-up to the peak rate (default: 10%% of "
                        "--max-steps, at most 100)")
    p.add_argument("--dropout", type=probability, default=None,
                   help="dropout rate (default: the config's)")
    p.add_argument("--val-fraction", type=fraction, default=0.1,
                   help="share of the tokens held out for validation")
    add_eval_options(p, every=100, iters=20)
    p.add_argument("--sample-every", type=non_negative_int, default=0,
                   help="steps between printed samples (0: never)")
    p.add_argument("--sample-prompt", default="\n",
                   help="prompt for the printed samples (default: a newline)")
    p.add_argument("--checkpoint-every", type=non_negative_int, default=500,
                   help="steps between checkpoints (one is also written at the end and on "
                        "Ctrl-C; 0: only then)")
    p.add_argument("--plot-grads", action="store_true",
                   help="also plot each layer's gradient norm at every step of this run "
                        "(before clipping) to grad_norms.png in --out")
    add_seed_option(p, default=1337)
    p.add_argument("--nproc", type=positive_int, default=None,
                   help="train on this many processes of this machine, each on its share of "
                        "every --batch-size batch (MPI: pip install -e \".[mpi]\"); under "
                        "mpiexec, leave it out")
    p.add_argument("--zero", action="store_true",
                   help="with several processes: split AdamW's moments among them (ZeRO-1)")
    p.set_defaults(func=cmd_train)
