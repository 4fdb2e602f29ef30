"""Small training runs that the data-parallel tests compare, one definition for every rank count.

In the test process they run on one process; as a script under MPI,

    mpiexec -n 2 python tests/distributed_runs.py RUNS.json

every rank runs each run described in RUNS.json (a list of dicts: see ``tiny_run``) and
rank 0 writes each run's losses and final weights to the .npz file the run names.
"""

import dataclasses
import json
import os
import signal
import sys

import numpy as np

from tinygpt import backend
from tinygpt.config import GPTConfig
from tinygpt.data import RandomWindows
from tinygpt.distributed import DataParallel, abort_on_error, init
from tinygpt.nn import GPTModel
from tinygpt.train import TrainConfig, TrainingInterrupted, train

MODEL = GPTConfig(vocab_size=37, context_length=8, emb_dim=16, n_heads=2, n_layers=2,
                  drop_rate=0.0)
# batch 5 does not split evenly over 2 ranks (3 + 2 rows); the clip of 0.5 is active
RUN = TrainConfig(max_steps=6, batch_size=5, grad_accum=2, peak_lr=1e-2, initial_lr=1e-3,
                  min_lr=1e-3, warmup_steps=2, grad_clip=0.5, eval_every=3, eval_iters=2,
                  checkpoint_every=0, seed=3)
TOKENS = np.random.default_rng(0).integers(0, MODEL.vocab_size, 2000)


class Disturbed:
    """Batches that press Ctrl-C (a real SIGINT) or raise on one rank at one batch index."""

    def __init__(self, batches, rank, interrupt_at=None, fail_at=None, fail_rank=1):
        self.batches, self.rank = batches, rank
        self.interrupt_at, self.fail_at, self.fail_rank = interrupt_at, fail_at, fail_rank

    def train_batch(self, index):
        if index == self.interrupt_at and self.rank == 0:
            os.kill(os.getpid(), signal.SIGINT)
        if index == self.fail_at and self.rank == self.fail_rank:
            raise RuntimeError(f"injected failure at batch {index}")
        return self.batches.train_batch(index)

    def eval_batches(self, split, count):
        return self.batches.eval_batches(split, count)


def tiny_run(comm=None, dtype="float64", zero=False, out_dir=None, interrupt_at=None,
             fail_at=None, checkpoint_every=0) -> dict:
    """Train the tiny model for RUN.max_steps (or until the Ctrl-C at batch ``interrupt_at``);
    returns {"step_loss", "val_loss", "train_loss", and "param:NAME" for every weight}."""
    parallel = DataParallel(comm, shard_optimizer=zero)
    backend.set_default_dtype(dtype)
    backend.manual_seed(RUN.seed)
    model = GPTModel(MODEL)
    windows = RandomWindows(TOKENS[:1600], TOKENS[1600:], RUN.batch_size,
                            MODEL.context_length, seed=5)
    batches = Disturbed(windows, parallel.comm.rank, interrupt_at, fail_at)
    cfg = dataclasses.replace(RUN, checkpoint_every=checkpoint_every)
    try:
        history = train(model, batches, cfg, out_dir=out_dir, progress=False,
                        log=lambda line: None, parallel=parallel)
    except TrainingInterrupted as stop:  # an interrupted run saves, then stops all ranks
        history = stop.history
    result = {"step_loss": np.array(history.step_loss), "val_loss": np.array(history.val_loss),
              "train_loss": np.array(history.train_loss)}
    result.update({f"param:{k}": backend.move(v, "numpy") for k, v in model.state_dict().items()})
    return result


def main(runs_file):
    comm = init()
    with abort_on_error(comm):
        for run in json.loads(open(runs_file).read()):
            result = tiny_run(comm, **run["options"])
            if comm.rank == 0:
                np.savez(run["result"], **result)


if __name__ == "__main__":
    main(sys.argv[1])
