"""Module behaviour of tinygpt.nn: parameter names and counts, state dicts, train/eval,
input checks, and weight tying (one shared Parameter, checked against PyTorch)."""

import weakref

import numpy
import pytest
import torch
from torch_gpt import from_tinygpt

import tinygpt
from tinygpt import backend
from tinygpt import functional as F
from tinygpt.nn import GPTModel, KVCache, Linear, Parameter, evaluating

SMALL = dict(vocab_size=23, context_length=8, emb_dim=12, n_heads=3, n_layers=2, drop_rate=0.0)


def small_model(dtype="float32", seed=0, **overrides):
    backend.set_default_dtype(dtype)
    tinygpt.manual_seed(seed)
    return GPTModel(tinygpt.GPTConfig(**dict(SMALL, **overrides)))


def ids_batch(batch=2, tokens=6, vocab=SMALL["vocab_size"], seed=1):
    return numpy.random.default_rng(seed).integers(0, vocab, size=(batch, tokens))


def expected_names(n_layers, qkv_bias, tied=False):
    """The parameter names DESIGN.md promises, in the book's order."""
    names = ["tok_emb.weight", "pos_emb.weight"]
    for i in range(n_layers):
        block = f"trf_blocks.{i}"
        for proj in ("W_query", "W_key", "W_value"):
            names.append(f"{block}.att.{proj}.weight")
            if qkv_bias:
                names.append(f"{block}.att.{proj}.bias")
        names += [f"{block}.att.out_proj.weight", f"{block}.att.out_proj.bias",
                  f"{block}.ff.layers.0.weight", f"{block}.ff.layers.0.bias",
                  f"{block}.ff.layers.2.weight", f"{block}.ff.layers.2.bias",
                  f"{block}.norm1.scale", f"{block}.norm1.shift",
                  f"{block}.norm2.scale", f"{block}.norm2.shift"]
    names += ["final_norm.scale", "final_norm.shift"]
    return names if tied else names + ["out_head.weight"]


# ----------------------------------------------------------------------------- names

@pytest.mark.parametrize("qkv_bias", [False, True])
def test_parameter_names_follow_the_book(qkv_bias):
    model = small_model(qkv_bias=qkv_bias)
    names = [name for name, _ in model.named_parameters()]
    assert names == expected_names(SMALL["n_layers"], qkv_bias)
    assert list(model.state_dict()) == names
    C, V = SMALL["emb_dim"], SMALL["vocab_size"]
    shapes = {name: p.shape for name, p in model.named_parameters()}
    assert shapes["tok_emb.weight"] == (V, C)
    assert shapes["pos_emb.weight"] == (SMALL["context_length"], C)
    assert shapes["trf_blocks.0.ff.layers.0.weight"] == (4 * C, C)  # (out, in) as in PyTorch
    assert shapes["trf_blocks.0.ff.layers.2.weight"] == (C, 4 * C)
    assert shapes["out_head.weight"] == (V, C)
    assert all(isinstance(p, Parameter) and p.requires_grad for p in model.parameters())


def test_tied_model_lists_the_shared_weight_once_but_saves_it_under_both_names():
    model = small_model(tie_embeddings=True)
    assert [n for n, _ in model.named_parameters()] == expected_names(2, False, tied=True)
    assert list(model.state_dict()) == expected_names(2, False)
    state = model.state_dict()
    assert state["out_head.weight"] is state["tok_emb.weight"]


# ----------------------------------------------------------------------------- counts

@pytest.mark.parametrize("qkv_bias, untied_count, tied_count", [
    (False, 163_009_536, 124_412_160),  # the book's GPT_CONFIG_124M, its printed numbers
    (True, 163_037_184, 124_439_808),  # GPT-2's checkpoint layout (Hugging Face's count)
])
def test_gpt2_124M_parameter_count_with_and_without_tying(qkv_bias, untied_count, tied_count):
    backend.set_default_dtype("float16")  # the count is what matters; keep the build cheap
    model = GPTModel(tinygpt.GPTConfig.preset("gpt2-124M", qkv_bias=qkv_bias))
    assert not model.weights_tied
    assert model.num_parameters() == untied_count
    assert model.out_head.weight.size == 50257 * 768
    model.tie_weights()
    assert model.weights_tied
    assert model.num_parameters() == tied_count
    assert untied_count - tied_count == 38_597_376  # the output head the tying removes


def test_tie_embeddings_config_drops_exactly_the_head_from_the_count():
    untied, tied = small_model(), small_model(tie_embeddings=True)
    V, C = SMALL["vocab_size"], SMALL["emb_dim"]
    assert untied.num_parameters() - tied.num_parameters() == V * C
    assert tied.out_head.weight is tied.tok_emb.weight


# ----------------------------------------------------------------------------- state dicts

def test_load_state_dict_strict_lists_missing_unexpected_and_misshaped_keys():
    model = small_model()
    state = dict(model.state_dict())
    del state["trf_blocks.1.norm2.shift"]
    state["trf_blocks.0.att.bogus"] = numpy.zeros(3, dtype=numpy.float32)
    state["pos_emb.weight"] = numpy.zeros((9, 12), dtype=numpy.float32)
    with pytest.raises(ValueError) as err:
        model.load_state_dict(state)
    message = str(err.value)
    assert "missing keys: trf_blocks.1.norm2.shift" in message
    assert "unexpected keys: trf_blocks.0.att.bogus" in message
    assert "pos_emb.weight: expected (8, 12), got (9, 12)" in message

    # strict=False tolerates missing and unexpected keys, never a wrong shape
    with pytest.raises(ValueError, match="pos_emb.weight"):
        model.load_state_dict(state, strict=False)
    del state["pos_emb.weight"]
    before = model.pos_emb.weight.data.copy()
    model.load_state_dict(state, strict=False)
    assert numpy.array_equal(model.pos_emb.weight.data, before)


def test_load_state_dict_copies_and_casts():
    source, target = small_model("float64", seed=1), small_model("float32", seed=2)
    state = source.state_dict()
    target.load_state_dict(state)
    weight = target.trf_blocks[0].att.W_query.weight
    assert weight.dtype == numpy.float32  # keeps the target's dtype
    numpy.testing.assert_allclose(weight.data, state["trf_blocks.0.att.W_query.weight"],
                                  rtol=1e-6)
    state["trf_blocks.0.att.W_query.weight"][0, 0] = 42.0  # the target holds a copy
    assert weight.data[0, 0] != 42.0


def test_zero_grad_and_to_dtype():
    model = small_model()
    logits = model(ids_batch())
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    model.to(dtype="float64")
    assert all(p.dtype == numpy.float64 for p in model.parameters())
    assert model(ids_batch()).dtype == numpy.float64


# ----------------------------------------------------------------------------- train / eval

def test_train_and_eval_toggle_dropout_everywhere():
    model = small_model(drop_rate=0.5)
    ids = ids_batch()
    assert all(m.training for m in model.modules())
    assert model.eval() is model and not any(m.training for m in model.modules())
    with tinygpt.no_grad():
        tinygpt.manual_seed(1)
        eval_a = model(ids).data
        tinygpt.manual_seed(2)
        eval_b = model(ids).data
        no_dropout = small_model(drop_rate=0.0)  # same seed, same weights
        reference = no_dropout(ids).data
    assert numpy.array_equal(eval_a, eval_b)  # eval: no randomness at all
    assert numpy.array_equal(eval_a, reference)  # ... and no effect at all

    assert model.train() is model and all(m.training for m in model.modules())
    with tinygpt.no_grad():
        tinygpt.manual_seed(1)
        train_a = model(ids).data
        tinygpt.manual_seed(1)
        train_a_again = model(ids).data
        tinygpt.manual_seed(2)
        train_b = model(ids).data
    assert numpy.array_equal(train_a, train_a_again)  # same seed, same masks
    assert not numpy.allclose(train_a, train_b)  # another seed, other masks
    assert not numpy.allclose(train_a, eval_a)


def test_evaluating_turns_dropout_off_and_restores_the_mode():
    model = small_model(drop_rate=0.5)
    ids = ids_batch()
    with tinygpt.no_grad():
        reference = small_model(drop_rate=0.0)(ids).data  # same seed, same weights
        with evaluating(model) as inside:
            assert inside is model and not any(m.training for m in model.modules())
            numpy.testing.assert_array_equal(model(ids).data, reference)
    assert all(m.training for m in model.modules())  # back to training mode

    with pytest.raises(KeyError), evaluating(model):
        raise KeyError("an error inside the block")
    assert all(m.training for m in model.modules())  # restored on errors too

    model.eval()
    with evaluating(model):
        pass
    assert not any(m.training for m in model.modules())  # an eval model stays in eval


def test_dropout_masks_are_seeded_and_scaled():
    x = tinygpt.ones(1000, requires_grad=True)
    tinygpt.manual_seed(7)
    y = F.dropout(x, 0.25, training=True)
    tinygpt.manual_seed(7)
    y_again = F.dropout(x, 0.25, training=True)
    assert numpy.array_equal(y.data, y_again.data)
    kept = y.data != 0
    assert numpy.allclose(y.data[kept], 1 / 0.75)  # inverted dropout
    assert 0.65 < kept.mean() < 0.85
    y.sum().backward()
    assert numpy.array_equal(x.grad, y.data)  # gradient flows through the kept ones only
    assert F.dropout(x, 0.25, training=False) is x


# ----------------------------------------------------------------------------- bad input

def test_too_many_tokens_is_a_clear_error():
    model = small_model()
    with pytest.raises(ValueError, match=r"longer than the model's context length 8"):
        model(ids_batch(tokens=9))
    model(ids_batch(tokens=8))  # exactly the context is fine
    with tinygpt.no_grad():
        cache = KVCache(model.cfg.context_length)
        model(ids_batch(tokens=6), cache)
        with pytest.raises(ValueError, match="context length 8"):
            model(ids_batch(tokens=3), cache)


@pytest.mark.parametrize("bad", [
    numpy.zeros((2, 3), dtype=numpy.float32),  # float ids
    [[0.0, 1.5]],
    numpy.zeros((2, 3), dtype=bool),
])
def test_non_integer_ids_are_rejected(bad):
    with pytest.raises(ValueError, match="integer"):
        small_model()(bad)


def test_wrong_rank_and_out_of_range_ids_are_rejected():
    model = small_model()
    with pytest.raises(ValueError, match=r"\(batch, tokens\)"):
        model(numpy.arange(4))
    with pytest.raises(IndexError, match=r"\[0, 23\)"):
        model(numpy.array([[1, 23]]))
    with pytest.raises(IndexError):
        model(numpy.array([[-1, 2]]))


def test_linear_rejects_wrong_feature_count():
    layer = Linear(4, 3)
    with pytest.raises(ValueError, match="4"):
        layer(tinygpt.ones(2, 5))


# ----------------------------------------------------------------------------- weight tying

def test_tied_head_shares_one_parameter_and_gradients_add_up():
    ids = ids_batch(batch=3, tokens=7)
    tied = small_model("float64", tie_embeddings=True)
    shared = tied.tok_emb.weight
    assert tied.out_head.weight is shared
    assert sum(p is shared for p in tied.parameters()) == 1

    def loss_of(model):
        logits = model(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    loss_of(tied).backward()
    assert shared.grad is not None

    # Against torch's tied model: one .grad holding both uses.
    twin = from_tinygpt(tied)
    assert twin.out_head.weight is twin.tok_emb.weight
    logits = twin(torch.from_numpy(ids[:, :-1]))
    torch.nn.functional.cross_entropy(logits.flatten(0, 1),
                                      torch.from_numpy(ids[:, 1:]).flatten()).backward()
    t_grad = twin.tok_emb.weight.grad.numpy()
    assert numpy.abs(shared.grad - t_grad).max() < 1e-10 * numpy.abs(t_grad).max()

    # The same weights untied (two copies): the shared grad is the sum of the two grads.
    untied = small_model("float64")
    untied.load_state_dict(tied.state_dict())
    assert not untied.weights_tied
    loss_of(untied).backward()
    total = untied.tok_emb.weight.grad + untied.out_head.weight.grad
    assert numpy.abs(shared.grad - total).max() < 1e-12 * numpy.abs(total).max()
    assert numpy.abs(untied.out_head.weight.grad).max() > 0  # both uses really contribute
    assert numpy.abs(untied.tok_emb.weight.grad).max() > 0

    # An update through either name is seen by both uses.
    with tinygpt.no_grad():
        tied.out_head.weight.data -= 0.1 * shared.grad
    assert numpy.array_equal(tied.tok_emb.weight.data, tied.out_head.weight.data)


# ----------------------------------------------------------------------------- graph freeing

def test_backward_frees_activations_as_it_goes_and_a_second_backward_is_an_error():
    model = small_model()
    ids = ids_batch()
    hidden = model.final_norm(model.tok_emb(ids))
    watched = weakref.ref(hidden)  # an activation the caller does not keep
    loss = F.cross_entropy(model.out_head(hidden)[:, :-1].reshape(-1, SMALL["vocab_size"]),
                           ids[:, 1:].reshape(-1))
    del hidden
    assert watched() is not None  # the graph holds it until the backward pass
    loss.backward()
    assert watched() is None  # freed by the pass, though `loss` is still alive
    with pytest.raises(RuntimeError, match="already freed"):
        loss.backward()

    model.zero_grad()
    logits = model(ids)
    logits.sum().backward(retain_graph=True)
    first = model.out_head.weight.grad.copy()
    logits.sum().backward()  # the graph was kept: gradients accumulate
    numpy.testing.assert_allclose(model.out_head.weight.grad, 2 * first, rtol=1e-6)


@pytest.mark.parametrize("tied, qkv_bias", [(False, False), (True, False), (False, True)])
def test_parameter_count_without_a_model_equals_the_models(tied, qkv_bias):
    from tinygpt.memory import parameter_count

    cfg = tinygpt.GPTConfig(vocab_size=97, context_length=16, emb_dim=24, n_heads=3, n_layers=2,
                            qkv_bias=qkv_bias, tie_embeddings=tied)
    assert parameter_count(cfg) == GPTModel(cfg).num_parameters()
    assert parameter_count(tinygpt.GPTConfig.preset("gpt2-124M")) == 163_009_536  # the book's
