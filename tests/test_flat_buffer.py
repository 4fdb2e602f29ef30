"""The flat parameter/gradient buffer and the fused optimizer kernels.

The Numba kernels against the readable reference of ``tinygpt.optim`` (``_update``, run with
``kernels.using("reference")``) and against ``torch.optim``; the buffer's views surviving
``load_state_dict``, weight tying, LoRA and ``to(dtype)``; and gradient accumulation over
micro-batches against PyTorch's gradient of the whole batch.
"""

import numpy as np
import pytest
import torch
from torch_gpt import from_tinygpt

import tinygpt
from tinygpt import backend, kernels
from tinygpt import functional as F
from tinygpt.nn import GPTModel, apply_lora
from tinygpt.optim import SGD, AdamW, clip_grad_norm

SHAPES = [(6, 5), (5,), (7, 6), (3,)]
CFG = tinygpt.GPTConfig(vocab_size=32, context_length=8, emb_dim=16, n_heads=2, n_layers=2,
                        drop_rate=0.0)


def leaves(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def groups(params, weight_decay=0.1):
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": 3e-3}]


def run_steps(make_optimizer, dtype, steps=4, skip=None):
    """Final parameters after ``steps`` steps on fixed gradients; parameter ``skip`` gets no
    gradient on step 1 (so step counts differ between parameters)."""
    params = [tinygpt.Tensor(a, requires_grad=True) for a in leaves(dtype)]
    optimizer = make_optimizer(groups(params))
    rng = np.random.default_rng(1)
    for step in range(steps):
        for i, p in enumerate(params):
            p.grad = None if (i == skip and step == 1) else rng.standard_normal(p.shape).astype(
                dtype)
        clip_grad_norm(params, 2.0)
        optimizer.step()
    return [p.data.copy() for p in params], optimizer


OPTIMIZERS = {
    "adamw": lambda g: AdamW(g, lr=1e-2, weight_decay=0.1),
    "sgd-momentum": lambda g: SGD(g, lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "sgd-nesterov": lambda g: SGD(g, lr=1e-2, momentum=0.9, nesterov=True),
    "sgd-plain": lambda g: SGD(g, lr=1e-2),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_fused_kernels_equal_the_reference_update(name, dtype):
    fused, optimizer = run_steps(OPTIMIZERS[name], dtype, skip=2)
    assert optimizer._can_fuse()
    with kernels.using("reference"):
        reference, optimizer = run_steps(OPTIMIZERS[name], dtype, skip=2)
        assert not optimizer._can_fuse()
    for a, b in zip(fused, reference):
        # the same operations in the same order: equal up to the last bit or one rounding
        np.testing.assert_allclose(a, b, rtol=4 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("fused", [False, True], ids=["torch-default", "torch-fused"])
def test_fused_adamw_float32_matches_torch(fused):
    ours = [tinygpt.Tensor(a, requires_grad=True) for a in leaves(np.float32)]
    theirs = [torch.tensor(a, requires_grad=True) for a in leaves(np.float32)]
    optimizer = AdamW(groups(ours), lr=1e-2, weight_decay=0.1)
    reference = torch.optim.AdamW(groups(theirs), lr=1e-2, weight_decay=0.1, fused=fused)
    rng = np.random.default_rng(1)
    for _ in range(5):
        for p, t in zip(ours, theirs):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad, t.grad = g.copy(), torch.tensor(g)
        norm = clip_grad_norm(ours, 1.0)
        assert norm == pytest.approx(torch.nn.utils.clip_grad_norm_(theirs, 1.0).item(),
                                     rel=1e-6)
        optimizer.step()
        reference.step()
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_parameters_and_gradients_are_views_of_one_buffer(tied):
    """Backward writes gradients into the slots (linear and embedding straight into them,
    a tied matrix's two uses summed into one), equal to PyTorch's."""
    backend.set_default_dtype("float64")
    tinygpt.manual_seed(0)
    model = GPTModel(CFG.replace(tie_embeddings=tied))
    optimizer = AdamW(model.parameters())
    buffer = optimizer.buffer
    assert len(buffer) == model.num_parameters()
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(2, 8))
    buffer.grad[:] = 7.0  # stale values: the first gradient must overwrite, not add
    loss = F.cross_entropy(model(ids[:, :-1]), ids[:, 1:])
    loss.backward()
    twin = from_tinygpt(model)
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(ids[:, :-1])).flatten(0, 1),
                                      torch.from_numpy(ids[:, 1:]).flatten()).backward()
    for (name, p), (_, t) in zip(model.named_parameters(), twin.named_parameters()):
        assert np.shares_memory(p.data, buffer.data) and np.shares_memory(p.grad, buffer.grad)
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    optimizer.zero_grad(set_to_none=False)  # zeroes in place
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    assert all(np.shares_memory(p.grad, buffer.grad) for p in model.parameters())


def test_full_grad_fills_missing_gradients_with_zeros():
    params = [tinygpt.Tensor(a, requires_grad=True) for a in leaves(np.float64)]
    optimizer = SGD(params)
    optimizer.buffer.grad[:] = 5.0
    params[0].grad = np.ones(SHAPES[0])
    flat = optimizer.buffer.full_grad()
    n0 = params[0].size
    np.testing.assert_array_equal(flat[:n0], 1.0)
    np.testing.assert_array_equal(flat[n0:], 0.0)
    assert all(np.shares_memory(p.grad, flat) for p in params)


def train_and_check(model, optimizer, steps=6):
    """A few steps on one batch: the loss falls, and every trained parameter stays a view of
    the optimizer's buffer (so the step really changes the model)."""
    ids = np.random.default_rng(3).integers(0, CFG.vocab_size, size=(4, 8))
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(np.shares_memory(p.data, optimizer.buffer.data) for p in trained)
    return losses


def test_views_stay_views_after_load_state_dict_tying_lora_and_dtype():
    tinygpt.manual_seed(0)
    model = GPTModel(CFG)
    optimizer = AdamW(model.parameters(), lr=1e-2)
    train_and_check(model, optimizer)

    tinygpt.manual_seed(1)
    other = GPTModel(CFG)
    model.load_state_dict(other.state_dict())  # written into the buffer, in place
    assert all(np.shares_memory(p.data, optimizer.buffer.data) for p in model.parameters())
    np.testing.assert_array_equal(model.tok_emb.weight.data, other.tok_emb.weight.data)
    train_and_check(model, optimizer)

    model.tie_weights()
    tied = AdamW(model.parameters(), lr=1e-2)
    assert len(tied.buffer) == model.num_parameters()  # the shared matrix packed once
    train_and_check(model, tied)
    assert model.out_head.weight is model.tok_emb.weight

    model.to(dtype=np.float64)  # the buffer packs itself anew in float64 at the next step
    train_and_check(model, tied)
    assert tied.buffer.data.dtype == np.float64

    apply_lora(model, rank=4, alpha=8)
    lora = AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    assert len(lora.buffer) == model.num_parameters(trainable_only=True)
    train_and_check(model, lora)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_gradient_accumulation_equals_one_big_batch_in_torch(tied):
    """The second micro-batch adds onto the first in place (the embedding's rows straight
    into the running gradient)."""
    backend.set_default_dtype("float64")
    tinygpt.manual_seed(0)
    model = GPTModel(CFG.replace(tie_embeddings=tied))
    optimizer = AdamW(model.parameters())
    ids = np.random.default_rng(5).integers(0, CFG.vocab_size, size=(4, 8))
    for micro in (ids[:2], ids[2:]):  # two micro-batches, each loss halved
        (F.cross_entropy(model(micro[:, :-1]), micro[:, 1:]) * 0.5).backward()
    twin = from_tinygpt(model)
    torch.nn.functional.cross_entropy(twin(torch.from_numpy(ids[:, :-1])).flatten(0, 1),
                                      torch.from_numpy(ids[:, 1:]).flatten()).backward()
    for (name, p), (_, t) in zip(model.named_parameters(), twin.named_parameters()):
        assert np.shares_memory(p.grad, optimizer.buffer.grad)
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


def test_a_weight_used_twice_in_one_graph_gets_both_gradients():
    """The slot is handed to one use only; the second use's gradient is added, as in torch."""
    backend.set_default_dtype("float64")
    layer = tinygpt.nn.Linear(4, 4)
    optimizer = SGD(layer.parameters())
    x = np.random.default_rng(0).standard_normal((3, 4))
    twin = torch.nn.Linear(4, 4).double()
    with torch.no_grad():
        twin.weight.copy_(torch.from_numpy(layer.weight.data))
        twin.bias.copy_(torch.from_numpy(layer.bias.data))
    for _ in range(2):  # the second round adds onto the first, in place
        layer(layer(x)).sum().backward()
        twin(twin(torch.from_numpy(x))).sum().backward()
    for p, t in ((layer.weight, twin.weight), (layer.bias, twin.bias)):
        assert np.shares_memory(p.grad, optimizer.buffer.grad)
        np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_a_table_used_by_two_lookups_and_two_products_gets_every_gradient():
    """An embedding table used as a linear layer's weight (in backward, the last use comes
    first and is lent the slot), looked up twice (rows added into the slot in place), and
    used as a weight again (summed into the slot in place): the gradient is the sum of all
    four uses, as in torch, also when a second backward adds onto the first."""
    backend.set_default_dtype("float64")
    rng = np.random.default_rng(3)
    table = tinygpt.nn.Embedding(6, 3)
    optimizer = SGD(table.parameters())
    ids_a, ids_b = rng.integers(0, 6, size=(2, 4)), rng.integers(0, 6, size=5)
    x = rng.standard_normal((4, 3))
    twin = torch.tensor(table.weight.data, requires_grad=True)

    def loss(weight, embedding, linear, as_input):
        head = linear(embedding(ids_a, weight).sum(axis=0), weight)  # (4, 6), last use
        return (linear(as_input(x), weight).sum() + embedding(ids_b, weight).sum() * 2.0
                + (head * head).sum())

    for _ in range(2):
        loss(table.weight, F.embedding, F.linear, tinygpt.Tensor).backward()
        loss(twin, lambda i, w: torch.nn.functional.embedding(torch.from_numpy(i), w),
             torch.nn.functional.linear, torch.from_numpy).backward()
    assert np.shares_memory(table.weight.grad, optimizer.buffer.grad)
    np.testing.assert_allclose(table.weight.grad, twin.grad.numpy(), rtol=1e-12, atol=1e-12)


class FailingBackward(tinygpt.Function):
    """Identity forward; its backward raises (as Ctrl-C in the middle of a backward would)."""

    @staticmethod
    def forward(ctx, x):
        return x.copy()

    @staticmethod
    def backward(ctx, grad):
        raise KeyboardInterrupt("stopped in the middle of backward")


def test_a_backward_that_failed_half_way_leaves_no_lent_slot_behind():
    """The failed pass had lent the table's slot to its product; the next pass must still
    sum the product's and the lookup's gradients (torch gives the reference)."""
    backend.set_default_dtype("float64")
    rng = np.random.default_rng(4)
    table = tinygpt.nn.Embedding(6, 3)
    SGD(table.parameters())
    ids = rng.integers(0, 6, size=5)
    with pytest.raises(KeyboardInterrupt):
        F.linear(FailingBackward.apply(F.embedding(ids, table.weight)), table.weight).sum() \
            .backward()
    table.weight.grad = None
    (F.linear(F.embedding(ids, table.weight), table.weight) ** 2).sum().backward()
    twin = torch.tensor(table.weight.data, requires_grad=True)
    (torch.nn.functional.linear(torch.nn.functional.embedding(torch.from_numpy(ids), twin),
                                twin) ** 2).sum().backward()
    np.testing.assert_allclose(table.weight.grad, twin.grad.numpy(), rtol=1e-12, atol=1e-12)
