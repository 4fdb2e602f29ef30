"""The pretraining loop: exact resume, Ctrl-C saving, NaN stop, checkpoints and plots."""

import dataclasses
import os
import signal

import numpy as np
import pytest

import tinygpt
from tinygpt.checkpoints import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint
from tinygpt.config import GPTConfig
from tinygpt.data import BatchSource, EpochBatches, RandomWindows
from tinygpt.nn import GPTModel
from tinygpt.plots import plot_losses
from tinygpt.train import TrainConfig, TrainingError, train
from tinygpt.weights import CheckpointError

MODEL = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
                  drop_rate=0.1)
RUN = TrainConfig(max_steps=10, batch_size=4, eval_every=5, eval_iters=2, warmup_steps=3,
                  peak_lr=1e-3, initial_lr=1e-4, min_lr=1e-4, checkpoint_every=0)
TOKENS = np.random.default_rng(0).integers(0, 50, 3000)


class InterruptAt:
    """Batches that press Ctrl-C (a real SIGINT) while drawing the batch of ``step``."""

    def __init__(self, batches, step):
        self.batches, self.step = batches, step

    def train_batch(self, index):
        if index == self.step:
            os.kill(os.getpid(), signal.SIGINT)
        return self.batches.train_batch(index)

    def eval_batches(self, split, count):
        return self.batches.eval_batches(split, count)


def fresh_model(cfg=MODEL):
    tinygpt.manual_seed(0)
    return GPTModel(cfg)


def windows():
    return RandomWindows(TOKENS[:2500], TOKENS[2500:], RUN.batch_size, MODEL.context_length,
                         seed=1)


def quiet(model, batches, cfg, out_dir=None):
    return train(model, batches, cfg, out_dir=out_dir, progress=False, log=lambda s: None)


def test_resume_after_ctrl_c_reproduces_the_uninterrupted_losses(tmp_path):
    straight = quiet(fresh_model(), windows(), RUN)

    out = tmp_path / "run"
    first = quiet(fresh_model(), InterruptAt(windows(), 4), RUN, out_dir=out)
    assert len(first.step_loss) == 5  # Ctrl-C during step 5: that step finishes, then saves
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 5

    # A new process would start from a fresh (differently initialised) model object.
    tinygpt.manual_seed(99)
    resumed = quiet(GPTModel(MODEL), windows(), RUN, out_dir=out)
    assert resumed.step_loss == straight.step_loss  # bit-exact, dropout included
    assert resumed.val_loss == straight.val_loss
    assert resumed.tokens_seen == straight.tokens_seen


def test_loss_goes_down_on_a_learnable_sequence():
    cycle = np.tile(np.arange(20), 200)  # a fully predictable stream
    batches = RandomWindows(cycle[:3000], cycle[3000:], 8, 16, seed=0)
    cfg = dataclasses.replace(RUN, max_steps=100, eval_every=100, peak_lr=5e-3)
    history = quiet(fresh_model(MODEL.replace(drop_rate=0.0)), batches, cfg)
    assert history.step_loss[0] > 3.5  # about log(50) at the start
    assert history.val_loss[-1] < 0.5


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = dataclasses.replace(RUN, checkpoint_every=2)
    model = fresh_model()

    class PoisonAt:
        def train_batch(self, index):
            if index == 3:  # a NaN weight makes every later loss NaN
                model.tok_emb.weight.data[:] = np.nan
            return windows().train_batch(index)

        def eval_batches(self, split, count):
            return windows().eval_batches(split, count)

    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*checkpoint"):
        quiet(model, PoisonAt(), cfg, out_dir=out)
    saved = load_checkpoint(out / CHECKPOINT_NAME)
    assert saved["step"] == 2
    assert np.isfinite(saved["model"]["tok_emb.weight"]).all()


def test_checkpoint_holds_the_model(tmp_path):
    model = fresh_model(MODEL.replace(tie_embeddings=True))
    quiet(model, windows(), dataclasses.replace(RUN, max_steps=2, warmup_steps=1), out_dir=tmp_path)
    loaded = model_from_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert loaded.weights_tied
    ids = TOKENS[:16][None, :]
    np.testing.assert_array_equal(loaded(ids).numpy(), model.eval()(ids).numpy())


def test_corrupt_or_foreign_checkpoints_are_clear_errors(tmp_path):
    one_step = dataclasses.replace(RUN, max_steps=1, warmup_steps=0)
    quiet(fresh_model(), windows(), one_step, out_dir=tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_resume_refuses_a_different_model(tmp_path):
    one_step = dataclasses.replace(RUN, max_steps=1, warmup_steps=0)
    quiet(fresh_model(), windows(), one_step, out_dir=tmp_path)
    other = MODEL.replace(emb_dim=64)
    with pytest.raises(TrainingError, match="holds a model with config"):
        quiet(fresh_model(other), windows(), RUN, out_dir=tmp_path)


def test_epoch_batches_cover_the_dataset_once_per_epoch():
    data = [(np.array([i, i]), np.array([i + 1, i + 1])) for i in range(10)]
    batches = EpochBatches(data, data[:3], batch_size=3, seed=5)
    firsts = np.concatenate([batches.train_batch(i)[0][:, 0] for i in range(3)])
    assert len(set(firsts.tolist())) == 9  # 3 batches of 3, drop_last: 9 distinct examples
    again = np.concatenate([batches.train_batch(i)[0][:, 0] for i in range(3)])
    np.testing.assert_array_equal(firsts, again)  # a pure function of the step
    next_epoch = np.concatenate([batches.train_batch(i)[0][:, 0] for i in range(3, 6)])
    assert not np.array_equal(firsts, next_epoch)  # reshuffled
    with pytest.raises(ValueError, match="fewer than one batch"):
        EpochBatches(data[:2], data, batch_size=3)


def test_epoch_batches_collate_variable_length_examples_and_evaluate_in_order():
    def collate(rows):  # instruction-style: pad to the longest row with -1
        width = max(len(r) for r in rows)
        return np.array([r + [-1] * (width - len(r)) for r in rows])

    items = [[i] * (i % 3 + 1) for i in range(10)]
    batches = EpochBatches(items, items[:5], batch_size=3, seed=7, collate=collate)
    assert isinstance(batches, BatchSource) and isinstance(windows(), BatchSource)
    assert batches.batches_per_epoch == 3
    batch = batches.train_batch(4)  # epoch 1, position 1
    chosen = batches.epoch_order(1)[3:6]
    np.testing.assert_array_equal(batch, collate([items[i] for i in chosen]))
    evals = batches.eval_batches("val", 5)  # 5 examples in batches of 3: 3 then 2
    assert [b.shape for b in evals] == [(3, 3), (2, 2)]
    np.testing.assert_array_equal(evals[1], collate([items[3], items[4]]))
    assert len(batches.eval_batches("val", 1)) == 1
    with pytest.raises(ValueError, match="validation set is empty"):
        EpochBatches(items, [], batch_size=3)


def test_random_windows_are_shifted_slices_of_the_stream():
    batches = windows()
    x, y = batches.train_batch(7)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    stream = TOKENS[:2500].tolist()
    for row in x:
        starts = [i for i in range(len(stream) - 16) if stream[i:i + 16] == row.tolist()]
        assert starts
    with pytest.raises(ValueError, match="fewer than context_length"):
        RandomWindows(TOKENS[:10], TOKENS[:100], 2, 16)


def test_plot_is_written(tmp_path):
    history = quiet(fresh_model(), windows(), RUN)
    path = plot_losses(history, tmp_path / "losses.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
