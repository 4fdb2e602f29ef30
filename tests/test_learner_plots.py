"""Attention heatmaps and per-layer gradient norms (tinygpt.plots): the attention weights
against transformers' output_attentions, the norms against NumPy, the pictures written."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

import tinygpt
import tinygpt.functional as F
from tinygpt.nn import GPTModel
from tinygpt.plots import GradNormLog, attention_weights, plot_attention, plot_grad_norms

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    """A random GPT-2 (2 layers, 4 heads) in transformers and the same weights in tinygpt."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=32, n_layer=2,
                                  n_head=4, attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # sharper attention than the default init
    directory = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(directory)
    return hf, tinygpt.load_gpt2(directory, dtype="float64")


def test_attention_weights_equal_transformers_output_attentions(hf_and_ours):
    hf, ours = hf_and_ours
    ids = [5, 17, 3, 99, 42, 42, 8]
    with torch.no_grad():
        reference = hf(torch.tensor([ids]), output_attentions=True).attentions
    expected = np.stack([a[0].numpy() for a in reference])  # (layers, H, T, T)
    weights = attention_weights(ours, ids)
    assert weights.shape == (2, 4, 7, 7)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    assert weights.std() > 0.05  # not uniform: the comparison says something


def test_attention_weights_leave_the_model_as_it_was(hf_and_ours):
    _, ours = hf_and_ours
    ours.train()
    ours.out_head.weight.requires_grad = False
    attention_weights(ours, [1, 2, 3])
    assert ours.training and not ours.out_head.weight.requires_grad
    ours.out_head.weight.requires_grad = True
    ours.eval()


def test_attention_heatmap_picture(hf_and_ours, tmp_path):
    _, ours = hf_and_ours
    tokens = ["Every", " effort", " moves", " you", "\n"]
    path = plot_attention(attention_weights(ours, [1, 2, 3, 4, 5]), tokens, tmp_path / "a.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]  # 4 heads wide, 2 layers high


def test_grad_norm_log_per_layer_against_numpy(tmp_path):
    cfg = tinygpt.GPTConfig(vocab_size=20, context_length=8, emb_dim=16, n_heads=2,
                            n_layers=3)
    model = GPTModel(cfg)
    log = GradNormLog()
    for step in range(2):
        model.zero_grad()
        F.cross_entropy(model([[1, 2, 3, 4]]), [[2, 3, 4, 5]]).backward()
        log.record(step, model)
    params = dict(model.named_parameters())

    def norm(prefixes):
        return np.sqrt(sum((params[n].grad.astype(np.float64) ** 2).sum() for n in params
                           if n.startswith(prefixes)))

    assert list(log.layers) == ["embeddings", "block 0", "block 1", "block 2", "head"]
    steps, norms = log.layers["block 1"]
    assert steps == [1, 2]
    np.testing.assert_allclose(norms[-1], norm("trf_blocks.1."), rtol=1e-12)
    np.testing.assert_allclose(log.layers["embeddings"][1][-1], norm(("tok_emb", "pos_emb")),
                               rtol=1e-12)
    np.testing.assert_allclose(log.layers["head"][1][-1], norm(("final_norm", "out_head")),
                               rtol=1e-12)
    assert matplotlib.image.imread(plot_grad_norms(log, tmp_path / "g.png")).ndim == 3


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


def test_train_plot_grads_and_attention_commands(tmp_path, capsys):
    from tinygpt.cli import main

    data = tmp_path / "input.txt"
    data.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--config", "baby", "--out", str(out),
                 "--max-steps", "3", "--batch-size", "2", "--context-length", "16",
                 "--eval-every", "3", "--eval-iters", "1", "--warmup-steps", "1",
                 "--plot-grads"]) == 0
    assert f"gradient norms plot: {out / 'grad_norms.png'}" in capsys.readouterr().out
    assert matplotlib.image.imread(out / "grad_norms.png").ndim == 3

    assert main(["attention", "First Cit", "--model", str(out),
                 "--out", str(tmp_path / "att.png")]) == 0
    assert capsys.readouterr().out == f"4 layers x 4 heads over 9 tokens: {tmp_path / 'att.png'}\n"
    assert matplotlib.image.imread(tmp_path / "att.png").ndim == 3

    with pytest.raises(SystemExit, match=r"--out a.txt: the picture's name must end in "
                                         r"\.png, \.svg, \.pdf"):
        main(["attention", "First", "--model", str(out), "--out", "a.txt"])
    with pytest.raises(SystemExit, match="the prompt is 80 tokens; the model reads at most 16"):
        main(["attention", "F" * 80, "--model", str(out), "--out", str(tmp_path / "b.png")])
    assert not (tmp_path / "b.png").exists()


def test_the_train_callback_sees_gradients_before_clipping():
    from tinygpt.data import RandomWindows
    from tinygpt.train import TrainConfig, train

    tokens = np.arange(400) % 20
    cfg = tinygpt.GPTConfig(vocab_size=20, context_length=8, emb_dim=16, n_heads=2,
                            n_layers=1)
    log = GradNormLog()
    train(GPTModel(cfg), RandomWindows(tokens[:300], tokens[300:], 2, 8, seed=0),
          TrainConfig(max_steps=3, batch_size=2, warmup_steps=0, grad_clip=1e-6,
                      eval_every=3, eval_iters=1),
          log=lambda *a: None, progress=False, after_backward=log.record)
    steps, norms = log.layers["block 0"]
    assert steps == [1, 2, 3] and min(norms) > 1e-3  # clipping to 1e-6 comes after
