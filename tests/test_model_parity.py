"""tinygpt's GPTModel against the book's PyTorch GPTModel (``tests/torch_gpt.py``).

The torch model gets tinygpt's state dict unchanged; then logits and the gradient of every
parameter (of the mean next-token cross-entropy) must agree: to 1e-10 relative in float64 and
1e-4 in float32, for odd head sizes, with and without qkv biases, tied and untied heads,
batches > 1 and sequences shorter than the context, with the Numba kernels and with the
plain-array reference kernels. Relative error is max|a - b| / max|b| over a whole tensor.
"""

import numpy
import pytest
import torch
from torch_gpt import MASK_SUFFIX, from_tinygpt

import tinygpt
from tinygpt import backend, kernels
from tinygpt import functional as F
from tinygpt.nn import GPTModel, KVCache

TOL = {"float64": 1e-10, "float32": 1e-4}

CONFIGS = {
    # D = 30 / 5 = 6, qkv biases, a sequence shorter than the context
    "d6-bias": (dict(vocab_size=50, context_length=12, emb_dim=30, n_heads=5, n_layers=2,
                     qkv_bias=True), 3, 9),
    # D = 12 / 4 = 3 (odd), no qkv biases
    "d3-nobias": (dict(vocab_size=37, context_length=16, emb_dim=12, n_heads=4, n_layers=2,
                       qkv_bias=False), 2, 7),
    # D = 35 / 7 = 5 (odd), tied head, the full context
    "d5-tied": (dict(vocab_size=41, context_length=10, emb_dim=35, n_heads=7, n_layers=3,
                     qkv_bias=True, tie_embeddings=True), 2, 10),
}


def rel_err(a, b) -> float:
    a, b = numpy.asarray(a, dtype=numpy.float64), numpy.asarray(b, dtype=numpy.float64)
    return float(numpy.abs(a - b).max() / numpy.abs(b).max())


@pytest.fixture(params=["numba", "reference"])
def kernel_mode(request):
    """Run the test with the Numba kernels (the default) and with the reference kernels."""
    kernels.use(request.param)  # conftest switches back after the test
    expected = "numba_cpu" if request.param == "numba" else "reference"
    assert kernels.impl().__name__.endswith(expected)
    return request.param


def make_pair(cfg_kwargs, dtype, drop_rate=0.0, seed=0):
    """A tinygpt GPTModel in ``dtype`` and its torch twin holding the same weights."""
    backend.set_default_dtype(dtype)
    tinygpt.manual_seed(seed)
    model = GPTModel(tinygpt.GPTConfig(drop_rate=drop_rate, **cfg_kwargs))
    assert model.tok_emb.weight.dtype == numpy.dtype(dtype)
    return model, from_tinygpt(model)


def token_batch(vocab, batch, tokens, seed=1):
    return numpy.random.default_rng(seed).integers(0, vocab, size=(batch, tokens + 1))


def tinygpt_loss(model, ids):
    """The book's calc_loss_batch: inputs ids[:, :-1], targets ids[:, 1:]."""
    logits = model(ids[:, :-1])
    return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def torch_loss(model, ids):
    ids = torch.from_numpy(ids)
    logits = model(ids[:, :-1])
    return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_every_gradient_match_torch(name, dtype, kernel_mode):
    cfg_kwargs, batch, tokens = CONFIGS[name]
    model, twin = make_pair(cfg_kwargs, dtype)
    ids = token_batch(cfg_kwargs["vocab_size"], batch, tokens)
    tol = TOL[dtype]

    logits, loss = tinygpt_loss(model, ids)
    loss.backward()
    t_logits, t_loss = torch_loss(twin, ids)
    t_loss.backward()

    assert logits.shape == (batch, tokens, cfg_kwargs["vocab_size"])
    assert logits.dtype == numpy.dtype(dtype)
    assert rel_err(logits.data, t_logits.detach().numpy()) < tol
    assert rel_err(loss.data, t_loss.detach().numpy()) < tol

    params = dict(model.named_parameters())
    t_params = dict(twin.named_parameters())  # torch also lists a tied weight once
    assert list(params) == list(t_params)
    assert model.weights_tied == cfg_kwargs.get("tie_embeddings", False)
    scale = max(numpy.abs(p.grad.numpy()).max() for p in t_params.values() if p.grad is not None)
    for pname, p in params.items():
        grad, t_grad = p.grad, t_params[pname].grad.numpy()
        assert grad is not None and grad.shape == t_grad.shape and grad.dtype == p.dtype, pname
        if pname.endswith("att.W_key.bias"):
            # A key bias adds the same q.b to every score of a query's row, which softmax
            # ignores: its true gradient is exactly zero, so both sides hold rounding noise.
            assert numpy.abs(grad).max() < tol * scale and numpy.abs(t_grad).max() < tol * scale
            continue
        assert rel_err(grad, t_grad) < tol, (pname, rel_err(grad, t_grad))


@pytest.mark.parametrize("name", ["d6-bias", "d5-tied"])
def test_eval_mode_with_dropout_matches_torch_eval(name, kernel_mode):
    cfg_kwargs, batch, tokens = CONFIGS[name]
    model, twin = make_pair(cfg_kwargs, "float64", drop_rate=0.3)
    ids = token_batch(cfg_kwargs["vocab_size"], batch, tokens)[:, :-1]
    model.eval()
    twin.eval()
    assert not any(m.training for m in model.modules())
    with tinygpt.no_grad():
        logits = model(ids).data
        again = model(ids).data
    with torch.no_grad():
        t_logits = twin(torch.from_numpy(ids)).numpy()
    assert numpy.array_equal(logits, again)  # no randomness left in eval mode
    assert rel_err(logits, t_logits) < TOL["float64"]

    model.train()  # and dropout really is active in training mode
    with tinygpt.no_grad():
        assert rel_err(model(ids).data, t_logits) > 1e-3


@pytest.mark.parametrize("tied", [False, True])
def test_state_dict_round_trip_through_torch(tied):
    cfg_kwargs = dict(CONFIGS["d6-bias"][0], tie_embeddings=tied)
    model, twin = make_pair(cfg_kwargs, "float64")
    state = model.state_dict()
    t_state = twin.state_dict()

    # Names and shapes identical, in the same order; torch adds only the book's causal-mask
    # buffers, which are not weights (tinygpt builds the mask on the fly).
    t_weights = {k: v for k, v in t_state.items() if not k.endswith(MASK_SUFFIX)}
    assert sorted(set(t_state) - set(t_weights)) == [
        f"trf_blocks.{i}{MASK_SUFFIX}" for i in range(cfg_kwargs["n_layers"])]
    assert list(state) == list(t_weights)
    assert [tuple(v.shape) for v in state.values()] == [tuple(v.shape) for v in t_weights.values()]
    assert list(dict(model.named_parameters())) == list(dict(twin.named_parameters()))
    assert ("out_head.weight" in state) and (("out_head.weight" in
                                             dict(model.named_parameters())) != tied)

    # torch -> tinygpt: a fresh model (other seed) takes torch's arrays unchanged.
    backend.set_default_dtype("float64")
    tinygpt.manual_seed(123)
    fresh = GPTModel(tinygpt.GPTConfig(drop_rate=0.0, **cfg_kwargs))
    assert not numpy.array_equal(fresh.tok_emb.weight.data, model.tok_emb.weight.data)
    fresh.load_state_dict({k: v.numpy() for k, v in t_weights.items()}, strict=True)
    for k, v in fresh.state_dict().items():
        assert v.dtype == state[k].dtype and numpy.array_equal(v, state[k]), k
    assert fresh.weights_tied == tied


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["d6-bias", "d5-tied"])
def test_kv_cache_matches_full_forward(name, dtype, kernel_mode):
    cfg_kwargs, batch, _ = CONFIGS[name]
    model, _ = make_pair(cfg_kwargs, dtype)
    T = cfg_kwargs["context_length"]
    ids = token_batch(cfg_kwargs["vocab_size"], batch, T - 1)  # fills the whole context
    model.eval()
    with tinygpt.no_grad():
        full = model(ids).data
        for k in (1, 4):  # prompt of k tokens, then one token at a time
            cache = KVCache(T)
            pieces = [model(ids[:, :k], cache).data]
            for t in range(k, T):
                pieces.append(model(ids[:, t:t + 1], cache).data)
                assert cache.length == t + 1
            cached = numpy.concatenate(pieces, axis=1)
            assert cached.shape == full.shape
            assert rel_err(cached, full) < TOL[dtype]
        with pytest.raises(ValueError, match="context length"):
            model(ids[:, :1], cache)  # the cache is full
