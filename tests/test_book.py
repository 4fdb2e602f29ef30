"""The book's own chapter 4 and 5 code, typed along with tinygpt (issue 15).

``CHAPTERS`` below is a short transcription of the book's code: building a batch with
``stack(..., dim=0)``, the GPT model from a config dict, ``generate_text_simple``,
``text_to_token_ids`` / ``token_ids_to_text``, ``softmax(dim=-1)``, ``argmax(dim=-1)``,
``flatten(0, 1)``, ``x.size()``, ``cross_entropy``, perplexity and ``calc_loss_loader``. It
runs twice: with ``lib = torch`` and the book's PyTorch model and helpers (the reference),
and with ``lib = tinygpt`` and tinygpt's names, from the same weights. Every value it
computes must agree.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch_gpt import from_tinygpt

import tinygpt
import tinygpt.functional as tinygpt_F
from tinygpt import GPTModel
from tinygpt.book import (
    calc_loss_batch,
    calc_loss_loader,
    generate_text_simple,
    text_to_token_ids,
    token_ids_to_text,
)
from tinygpt.data import create_dataloader
from tinygpt.tokenizer import gpt2_encoding

GPT_CONFIG = {"vocab_size": 50257, "context_length": 16, "emb_dim": 32, "n_heads": 2,
              "n_layers": 2, "drop_rate": 0.1, "qkv_bias": False}

CHAPTERS = '''
tokenizer = tiktoken.get_encoding("gpt2")
batch = []
txt1 = "Every effort moves you"
txt2 = "Every day holds a"
batch.append(lib.tensor(tokenizer.encode(txt1)))
batch.append(lib.tensor(tokenizer.encode(txt2)))
batch = lib.stack(batch, dim=0)
results["batch size"] = tuple(batch.size())
results["batch rows"] = batch.size(0)

model = GPTModel(GPT_CONFIG)
model.eval()
out = model(batch)
results["logits"] = out

start_context = "Hello, I am"
encoded = tokenizer.encode(start_context)
encoded_tensor = lib.tensor(encoded).unsqueeze(0)
out_ids = generate_text_simple(model=model, idx=encoded_tensor, max_new_tokens=6,
                               context_size=GPT_CONFIG["context_length"])
results["chapter 4 text"] = tokenizer.decode(out_ids.squeeze(0).tolist())

token_ids = generate_text_simple(model=model,
                                 idx=text_to_token_ids("Every effort moves you", tokenizer),
                                 max_new_tokens=10, context_size=GPT_CONFIG["context_length"])
results["chapter 5 text"] = token_ids_to_text(token_ids, tokenizer)

inputs = lib.tensor([[16833, 3626, 6100], [40, 1107, 588]])
targets = lib.tensor([[3626, 6100, 345], [1107, 588, 11311]])
with lib.no_grad():
    logits = model(inputs)
probas = logits.softmax(dim=-1)
results["probas"] = probas
results["predicted ids"] = probas.argmax(dim=-1)
logits_flat = logits.flatten(0, 1)
targets_flat = targets.flatten()
loss = F.cross_entropy(logits_flat, targets_flat)
results["loss"] = loss.item()
results["perplexity"] = loss.exp().item()
results["relu"] = F.relu(logits_flat[:2, :5])
results["batch loss"] = calc_loss_batch(inputs, targets, model, device).item()
results["loader loss"] = calc_loss_loader(train_loader, model, device, num_batches=2)
'''


def book_pytorch_helpers():
    """The book's chapter 4 and 5 helpers, as printed (in PyTorch)."""

    def generate_text_simple(model, idx, max_new_tokens, context_size):
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -context_size:]
            with torch.no_grad():
                logits = model(idx_cond)
            logits = logits[:, -1, :]
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    def text_to_token_ids(text, tokenizer):
        return torch.tensor(tokenizer.encode(text, allowed_special={"<|endoftext|>"})
                            ).unsqueeze(0)

    def token_ids_to_text(token_ids, tokenizer):
        return tokenizer.decode(token_ids.squeeze(0).tolist())

    def calc_loss_batch(input_batch, target_batch, model, device):
        logits = model(input_batch)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target_batch.flatten())

    def calc_loss_loader(data_loader, model, device, num_batches=None):
        total_loss = 0.
        num_batches = len(data_loader) if num_batches is None else min(num_batches,
                                                                        len(data_loader))
        for i, (input_batch, target_batch) in enumerate(data_loader):
            if i < num_batches:
                total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
            else:
                break
        return total_loss / num_batches

    return dict(generate_text_simple=generate_text_simple, text_to_token_ids=text_to_token_ids,
                token_ids_to_text=token_ids_to_text, calc_loss_batch=calc_loss_batch,
                calc_loss_loader=calc_loss_loader)


# tiktoken.get_encoding("gpt2") downloads GPT-2's files; gpt2_encoding() is the same tiktoken
# Encoding built from the copies tinygpt ships (offline).
tiktoken = SimpleNamespace(get_encoding=lambda name: gpt2_encoding())


def run_chapters(namespace):
    namespace.update(tiktoken=tiktoken, GPT_CONFIG=GPT_CONFIG, results={}, device="cpu")
    exec(CHAPTERS, namespace)
    return namespace["results"]


def as_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().numpy()
    if isinstance(value, tinygpt.Tensor):
        return value.numpy()
    return value


@pytest.fixture(scope="module")
def both_runs():
    tinygpt.manual_seed(123)
    reference_weights = tinygpt.GPTModel(GPT_CONFIG)  # the book's config dict is accepted
    text = "Every effort moves you forward, and every day holds a new story. " * 20
    loader = create_dataloader(text, batch_size=2, max_length=8, stride=8, shuffle=False)
    batches = list(loader)

    ours = run_chapters({
        "lib": tinygpt, "F": tinygpt_F, "train_loader": loader,
        "GPTModel": lambda cfg: reference_weights,
        "generate_text_simple": generate_text_simple, "text_to_token_ids": text_to_token_ids,
        "token_ids_to_text": token_ids_to_text, "calc_loss_batch": calc_loss_batch,
        "calc_loss_loader": calc_loss_loader})
    theirs = run_chapters({
        "lib": torch, "F": torch.nn.functional,
        "train_loader": [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches],
        "GPTModel": lambda cfg: from_tinygpt(reference_weights), **book_pytorch_helpers()})
    return ours, theirs


def test_the_books_code_gives_the_same_values_with_tinygpt_and_pytorch(both_runs):
    ours, theirs = both_runs
    assert GPTModel is tinygpt.nn.GPTModel
    assert set(ours) == set(theirs)
    for key in ours:
        a, b = as_numpy(ours[key]), as_numpy(theirs[key])
        if isinstance(b, np.ndarray) and b.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=key)
        elif isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-5), key
        elif isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            assert a == b, key
    assert ours["batch size"] == (2, 4) and ours["batch rows"] == 2  # the book's printout


@pytest.mark.parametrize("spelling", [
    lambda lib, F, x: x.sum(dim=0),
    lambda lib, F, x: x.mean(dim=1),
    lambda lib, F, x: F.softmax(x, dim=-1),
    lambda lib, F, x: F.log_softmax(x, dim=0),
    lambda lib, F, x: lib.cat([x, x], dim=1),
    lambda lib, F, x: lib.stack([x, x], dim=2),
    lambda lib, F, x: x.unsqueeze(dim=0).squeeze(dim=0),
    lambda lib, F, x: x.reshape(2, 3, 4).flatten(0, 1),
    lambda lib, F, x: x.reshape(2, 3, 4).flatten(1),
    lambda lib, F, x: F.relu(x),
    lambda lib, F, x: x.argmax(dim=-1),
])
def test_the_books_spellings_give_pytorchs_values(spelling):
    data = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    ours = spelling(tinygpt, tinygpt_F, tinygpt.tensor(data))
    theirs = spelling(torch, torch.nn.functional, torch.from_numpy(data))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)


def test_size_is_the_element_count_and_pytorchs_size():
    x = tinygpt.zeros((2, 3, 4))
    assert x.size == 24 and x.size() == (2, 3, 4) and x.size(1) == 3 and x.size(-1) == 4
    with pytest.raises(TypeError, match="axis= or dim=, not both"):
        x.sum(axis=0, dim=0)
