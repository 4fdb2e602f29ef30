"""LoRA: exact at initialisation, merge == unmerged, gradients by finite differences and
against the book's PyTorch LoRALayer / LinearWithLoRA, only A and B train, and counts."""

import math

import numpy as np
import pytest
import torch

import tinygpt
from tinygpt import backend
from tinygpt import functional as F
from tinygpt.config import GPTConfig
from tinygpt.nn import (
    GPTModel,
    Linear,
    LoRALayer,
    LoRALinear,
    apply_lora,
    lora_parameter_report,
    merge_lora,
)
from tinygpt.optim import AdamW

CFG = GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=2,
                drop_rate=0.0, qkv_bias=True)


def tiny_gpt(**overrides):
    tinygpt.manual_seed(1)
    return GPTModel(CFG.replace(**overrides)).eval()


def ids(batch=2, tokens=6, vocab=CFG.vocab_size, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, tokens))


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def randomize_B(model, scale=0.1, seed=2):
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model):
        B = layer.lora.B
        B.data = (rng.standard_normal(B.shape) * scale).astype(B.dtype)


# ----------------------------------------------------------------------------- the layer

def test_lora_linear_output_unchanged_at_initialisation_exactly():
    linear = Linear(8, 5)
    x = tinygpt.tensor(np.random.default_rng(0).standard_normal((3, 7, 8)))
    before = linear(x).numpy().copy()
    layer = LoRALinear(linear, rank=4, alpha=8)
    assert np.array_equal(layer(x).numpy(), before)
    assert not layer.lora.B.data.any()
    bound = 1 / math.sqrt(4)  # kaiming_uniform_(a=sqrt(5)) on (in, rank): U(-1/sqrt(rank), ..)
    assert np.abs(layer.lora.A.data).max() <= bound and layer.lora.A.data.std() > 0.1 * bound
    assert layer.lora.A.shape == (8, 4) and layer.lora.B.shape == (4, 5)
    assert layer.weight is linear.weight and layer.bias is linear.bias


def test_lora_linear_computes_base_plus_scaled_low_rank_update():
    rng = np.random.default_rng(3)
    layer = LoRALinear(Linear(6, 4), rank=2, alpha=5)
    layer.lora.B.data = rng.standard_normal((2, 4)).astype("float32")
    x = rng.standard_normal((5, 6)).astype("float32")
    W, b = layer.linear.weight.data, layer.linear.bias.data
    A, B = layer.lora.A.data, layer.lora.B.data
    expected = x @ W.T + b + (5 / 2) * (x @ A @ B)
    np.testing.assert_allclose(layer(tinygpt.tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_gpt_output_unchanged_after_apply_lora_exactly():
    model = tiny_gpt()
    before = model(ids()).numpy().copy()
    assert apply_lora(model, rank=4, alpha=4) is model
    assert np.array_equal(model(ids()).numpy(), before)


def test_gradcheck_lora_linear_float64():
    backend.set_default_dtype("float64")
    rng = np.random.default_rng(4)
    layer = LoRALinear(Linear(5, 4), rank=3, alpha=6)
    W, b = layer.linear.weight, layer.linear.bias

    def fn(x, W, b, A, B):
        layer.linear.weight, layer.linear.bias = W, b
        layer.lora.A, layer.lora.B = A, B
        return layer(x)

    inputs = [tinygpt.tensor(rng.standard_normal((2, 3, 5))), W, b, layer.lora.A,
              tinygpt.tensor(rng.standard_normal((3, 4)))]  # nonzero B: A's gradient is live
    assert tinygpt.gradcheck(fn, inputs)


class TorchLoRALayer(torch.nn.Module):
    """The book's LoRALayer (appendix E), with its alpha / rank scaling."""

    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        self.A = torch.nn.Parameter(torch.empty(in_dim, rank))
        torch.nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = torch.nn.Parameter(torch.zeros(rank, out_dim))
        self.alpha, self.rank = alpha, rank

    def forward(self, x):
        return (self.alpha / self.rank) * (x @ self.A @ self.B)


class TorchLinearWithLoRA(torch.nn.Module):
    """The book's LinearWithLoRA."""

    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear = linear
        self.lora = TorchLoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x):
        return self.linear(x) + self.lora(x)


def test_lora_matches_the_books_pytorch_layer():
    backend.set_default_dtype("float64")
    rng = np.random.default_rng(5)
    layer = LoRALinear(Linear(6, 5), rank=3, alpha=7)
    layer.lora.B.data = rng.standard_normal((3, 5))
    torch_layer = TorchLinearWithLoRA(torch.nn.Linear(6, 5), rank=3, alpha=7).double()
    torch_layer.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    assert set(layer.state_dict()) == set(torch_layer.state_dict())  # the book's names

    x = rng.standard_normal((2, 4, 6))
    v = rng.standard_normal((2, 4, 5))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_layer(xt)
    (yt * torch.tensor(v)).sum().backward()
    xs = tinygpt.tensor(x, requires_grad=True)
    y = layer(xs)
    (y * tinygpt.tensor(v)).sum().backward()

    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((layer.lora.A, torch_layer.lora.A), (layer.lora.B, torch_layer.lora.B),
                         (xs, xt)):
        np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- the model

def test_apply_lora_wraps_every_linear_and_freezes_the_rest():
    model = tiny_gpt()
    linears = [name for name, m in model.named_modules() if isinstance(m, Linear)]
    apply_lora(model, rank=2, alpha=4)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped == linears and "out_head" in wrapped  # the head too, as the book does
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{w}.lora.{ab}" for w in wrapped for ab in "AB"}
    names = set(model.state_dict())
    assert {"trf_blocks.0.att.W_query.linear.weight", "trf_blocks.0.att.W_query.linear.bias",
            "trf_blocks.0.att.W_query.lora.A", "trf_blocks.0.att.W_query.lora.B",
            "out_head.linear.weight", "tok_emb.weight"} <= names
    apply_lora(model, rank=2, alpha=4)  # a second call wraps nothing twice
    assert [name for name, m in model.named_modules() if isinstance(m, LoRALinear)] == wrapped


def test_parameter_counts():
    model = tiny_gpt()
    total_before = model.num_parameters()
    apply_lora(model, rank=3, alpha=3)
    report = lora_parameter_report(model)
    expected_lora = sum(3 * (m.in_features + m.out_features) for m in lora_layers(model))
    assert report["lora"] == expected_lora
    assert report["trainable"] == sum(m.lora.A.size + m.lora.B.size for m in lora_layers(model))
    assert report["trainable"] == expected_lora
    assert report["total"] == total_before + expected_lora
    assert report["percent"] == pytest.approx(100 * expected_lora / report["total"])


def test_merged_equals_unmerged():
    model = apply_lora(tiny_gpt(), rank=4, alpha=8)
    randomize_B(model)
    unmerged = model(ids()).numpy().copy()
    names_before_lora = set(tiny_gpt().state_dict())
    assert merge_lora(model) is model
    assert not lora_layers(model)
    assert set(model.state_dict()) == names_before_lora
    np.testing.assert_allclose(model(ids()).numpy(), unmerged, rtol=1e-4, atol=1e-5)
    base = tiny_gpt()
    assert not np.allclose(base(ids()).numpy(), unmerged, atol=1e-3)  # B really did something


def test_merge_keeps_a_tied_embedding_unchanged():
    model = tiny_gpt(tie_embeddings=True)
    assert model.weights_tied
    embedding = model.tok_emb.weight.data.copy()
    apply_lora(model, rank=2, alpha=2)
    assert model.weights_tied  # the wrapped head still reads the shared matrix
    randomize_B(model)
    unmerged = model(ids()).numpy().copy()
    merge_lora(model)
    assert np.array_equal(model.tok_emb.weight.data, embedding)
    assert not model.weights_tied  # the head got its own, updated matrix
    np.testing.assert_allclose(model(ids()).numpy(), unmerged, rtol=1e-4, atol=1e-5)


def test_only_lora_parameters_change_during_training():
    model = apply_lora(tiny_gpt(), rank=2, alpha=4)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = AdamW(trainable, lr=1e-2, weight_decay=0.1)
    x = ids(tokens=8)
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        for name, p in model.named_parameters():
            assert (p.grad is not None) == p.requires_grad, name
        optimizer.step()
    for name, p in model.named_parameters():
        if ".lora." in name:
            assert not np.array_equal(p.data, before[name]), f"{name} did not train"
        else:
            assert np.array_equal(p.data, before[name]), f"frozen {name} changed"


def test_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(Linear(4, 4), rank=0, alpha=1)
    with pytest.raises(TypeError, match="Linear"):
        LoRALinear(LoRALayer(4, 4, 2, 2), rank=2, alpha=2)
    with pytest.raises(ValueError, match="no Linear"):
        apply_lora(tinygpt.nn.LayerNorm(4), rank=2, alpha=2)
