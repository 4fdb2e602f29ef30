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
from tinygpt.train import TrainConfig, TrainingError, TrainingInterrupted, train
from tinygpt.weights import CheckpointError

MODEL = GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
                  drop_rate=0.1)
RUN = TrainConfig(max_steps=10, batch_size=4, eval_every=5, eval_iters=2, warmup_steps=3,
                  peak_lr=1e-3, initial_lr=1e-4, min_lr=1e-4, checkpoint_every=0)
TOKENS = np.random.default_rng(0).integers(0, 50, 3000)


class InterruptAt:
    """Batches that send a real signal (Ctrl-C's SIGINT by default) to this process while
    drawing the batch of ``step``."""

    def __init__(self, batches, step, signum=signal.SIGINT):
        self.batches, self.step, self.signum = batches, step, signum

    def train_batch(self, index):
        if index == self.step:
            os.kill(os.getpid(), self.signum)
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
    with pytest.raises(TrainingInterrupted, match="interrupted by SIGINT at step 5") as stop:
        quiet(fresh_model(), InterruptAt(windows(), 4), RUN, out_dir=out)
    assert stop.value.exit_status == 130
    assert len(stop.value.history.step_loss) == 5  # Ctrl-C in step 5: it finishes, then saves
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 5

    # A new process would start from a fresh (differently initialised) model object.
    tinygpt.manual_seed(99)
    resumed = quiet(GPTModel(MODEL), windows(), RUN, out_dir=out)
    assert resumed.step_loss == straight.step_loss  # bit-exact, dropout included
    assert resumed.val_loss == straight.val_loss
    assert resumed.tokens_seen == straight.tokens_seen


def test_sigterm_saves_and_stops_like_ctrl_c(tmp_path):
    straight = quiet(fresh_model(), windows(), RUN)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 3: saved step 3") as stop:
        quiet(fresh_model(), InterruptAt(windows(), 2, signal.SIGTERM), RUN, out_dir=out)
    assert stop.value.exit_status == 143  # 128 + SIGTERM, as a shell reports it
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back
    resumed = quiet(GPTModel(MODEL), windows(), RUN, out_dir=out)
    assert resumed.step_loss == straight.step_loss


def test_an_update_to_inf_weights_never_replaces_the_last_good_checkpoint(tmp_path):
    # The warm-up takes the rate from 1e-3 at step 1 to 2.5e39 at step 2: the second update
    # makes float32 weights inf while the loss of that step, computed before it, is finite.
    cfg = dataclasses.replace(RUN, max_steps=4, warmup_steps=4, initial_lr=1e-3,
                              peak_lr=1e40, checkpoint_every=1, grad_clip=None)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="weights became inf or NaN at step 2; not saved "
                                            "\\(the last good checkpoint is"):
        quiet(fresh_model(), windows(), cfg, out_dir=out)
    saved = load_checkpoint(out / CHECKPOINT_NAME)
    assert saved["step"] == 1
    assert all(np.isfinite(v).all() for v in saved["model"].values())


def test_the_loss_history_is_kept_out_of_the_checkpoint_header(tmp_path):
    from safetensors import safe_open

    def header_history(steps):
        out = tmp_path / f"run{steps}"
        cfg = dataclasses.replace(RUN, max_steps=steps, eval_every=1, warmup_steps=0)
        history = quiet(fresh_model(), windows(), cfg, out_dir=out)
        with safe_open(str(out / CHECKPOINT_NAME), framework="numpy") as f:
            header_history = f.metadata()["history"]
        saved = load_checkpoint(out / CHECKPOINT_NAME)["history"]
        assert saved["step_loss"].tolist() == history.step_loss  # stored exactly
        assert saved["steps"].tolist() == list(range(1, steps + 1))
        return header_history

    # In the header the history is only the names of its arrays: it does not grow.
    assert header_history(3) == header_history(9)


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


@pytest.mark.parametrize("field, value", [("grad_clip", -1.0), ("peak_lr", 0.0),
                                          ("weight_decay", -0.1), ("checkpoint_every", -1),
                                          ("warmup_steps", 11), ("eval_iters", 0)])
def test_out_of_range_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field} must be"):
        dataclasses.replace(RUN, **{field: value})


def test_clip_grad_norm_refuses_a_negative_norm():
    from tinygpt.optim import clip_grad_norm

    p = tinygpt.tensor([3.0, 4.0], requires_grad=True)
    (p * p).sum().backward()
    with pytest.raises(ValueError, match="max_norm must be >= 0, got -1"):
        clip_grad_norm([p], -1.0)
    np.testing.assert_array_equal(p.grad, [6.0, 8.0])  # untouched


def test_samples_during_training_are_drawn_as_nanogpt_draws_them():
    from tinygpt.generation import generate
    from tinygpt.tokenizer import CharTokenizer
    from tinygpt.train import sample_text

    tokenizer = CharTokenizer.from_text("".join(chr(0x41 + i) for i in range(50)))
    model, ids = fresh_model(), tokenizer.encode("ABC")
    tinygpt.manual_seed(7)
    sampled = sample_text(model, tokenizer, "ABC", 30)
    tinygpt.manual_seed(7)
    expected = generate(model, [ids], 30, context_size=16, temperature=0.8, top_k=50)
    assert sampled == tokenizer.decode(np.asarray(expected[0]).tolist())  # 0.8, top-k 200 -> 50
    greedy = sample_text(model, tokenizer, "ABC", 30, temperature=0.0)
    assert greedy == tokenizer.decode(np.asarray(generate(model, [ids], 30)[0]).tolist())
    assert sampled != greedy
