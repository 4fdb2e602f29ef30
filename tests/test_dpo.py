"""DPO: the loss against the formula in float64 NumPy and in PyTorch on a tiny model's real
sequence log-probabilities, its gradients by finite differences, the masked log-probabilities
against torch.log_softmax, the book's preference collate, and a few steps of training that
widen the chosen-vs-rejected margin."""

import json

import numpy
import pytest
import torch

import tinygpt
from tinygpt.cli import main
from tinygpt.config import GPTConfig
from tinygpt.finetune import dpo
from tinygpt.finetune.alpaca import RESPONSES_FILE, format_input
from tinygpt.finetune.dpo import (
    DPOConfig,
    collate_preference,
    dpo_loss,
    make_reference,
    pair_logprobs,
    sequence_logprobs,
    train_dpo,
)
from tinygpt.finetune.dpo import run as dpo_run
from tinygpt.nn import GPTModel
from tinygpt.tokenizer import gpt2_encoding

PAD = 0
VOCAB = 40

# Two pairs of token ids: prompt, then two "newline" tokens, then the response.
ITEMS = [
    {"prompt": [5, 6, 7], "chosen": [5, 6, 7, 1, 1, 20, 21, 22, 23],
     "rejected": [5, 6, 7, 1, 1, 30, 31]},
    {"prompt": [8, 9], "chosen": [8, 9, 1, 1, 24, 25],
     "rejected": [8, 9, 1, 1, 32, 33, 34, 35, 36, 37]},
]


@pytest.fixture
def model():
    tinygpt.manual_seed(3)
    return GPTModel(GPTConfig(vocab_size=VOCAB, context_length=16, emb_dim=32, n_heads=2,
                              n_layers=2, drop_rate=0.0))


def _perturbed_reference(model, scale=0.05):
    """A reference that differs from the policy, so all four log-probs differ."""
    reference = make_reference(model)
    rng = numpy.random.default_rng(1)
    for p in reference.parameters():
        p.data = p.data + (scale * rng.standard_normal(p.shape)).astype(p.dtype)
    return reference


# ----------------------------------------------------------------------------- data

def test_collate_preference_pads_to_one_length_and_masks_prompt_and_padding():
    batch = collate_preference(ITEMS, pad_token_id=PAD)
    length = 11  # the longest sequence (10 tokens) + 1
    assert batch["chosen"].shape == batch["rejected"].shape == (2, length)
    assert batch["chosen"].dtype == numpy.int64 and batch["chosen_mask"].dtype == bool
    numpy.testing.assert_array_equal(batch["chosen"][0], [5, 6, 7, 1, 1, 20, 21, 22, 23, 0, 0])
    numpy.testing.assert_array_equal(batch["rejected"][1], [8, 9, 1, 1, 32, 33, 34, 35, 36, 37,
                                                            0])
    T, F = True, False
    # prompt + the 2 tokens after it are masked (the book's mask[:len(prompt) + 2] = False)
    numpy.testing.assert_array_equal(batch["chosen_mask"], [
        [F, F, F, F, F, T, T, T, T, F, F],
        [F, F, F, F, T, T, F, F, F, F, F]])
    numpy.testing.assert_array_equal(batch["rejected_mask"], [
        [F, F, F, F, F, T, T, F, F, F, F],
        [F, F, F, F, T, T, T, T, T, T, F]])
    unmasked = collate_preference(ITEMS, pad_token_id=PAD, mask_prompt=False)
    numpy.testing.assert_array_equal(unmasked["chosen_mask"][1], [T] * 6 + [F] * 5)
    cut = collate_preference(ITEMS, pad_token_id=PAD, allowed_max_length=6)
    assert cut["chosen"].shape == cut["rejected_mask"].shape == (2, 6)


def test_encoded_preference_entry_masks_select_the_response_as_in_the_book():
    entry = {"instruction": "Evaluate the following phrase by transforming it into the "
                            "spelling given.", "input": "freind --> friend",
             "output": "x", "chosen": 'The spelling of the given phrase "freind" is incorrect, '
                                      'the correct spelling is "friend".',
             "rejected": 'The spelling of the given phrase "freind" is flat out wrong, get it '
                         'together, the correct spelling is "friend".'}
    enc = gpt2_encoding()
    items = dpo.encode_preference_entries([entry], enc)
    # The book's notebook prints these prompt ids for this entry.
    assert items[0]["prompt"][:4] == [21106, 318, 281, 12064]
    assert items[0]["prompt"][-4:] == [19503, 521, 14610, 1545]
    batch = collate_preference(items)
    for key in ("chosen", "rejected"):
        selected = batch[key][0][batch[f"{key}_mask"][0]].tolist()
        assert enc.decode(selected) == "### Response:\n" + entry[key]
        assert enc.decode(batch[key][0][:len(items[0][key])].tolist()) == (
            format_input(entry) + "\n\n### Response:\n" + entry[key])


# ----------------------------------------------------------------------------- log-probs

def _torch_logprobs(logits, targets, mask, average):
    logp = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), dim=-1)
    picked = torch.gather(logp, -1, torch.tensor(targets).unsqueeze(-1)).squeeze(-1)
    m = torch.tensor(mask, dtype=torch.float64)
    total = (picked * m).sum(-1)
    return (total / m.sum(-1) if average else total).numpy()


@pytest.mark.parametrize("average", [True, False])
def test_sequence_logprobs_match_torch_log_softmax(model, average):
    batch = collate_preference(ITEMS, pad_token_id=PAD)
    seqs, masks = batch["rejected"], batch["rejected_mask"]
    inputs, targets, mask = seqs[:, :-1], seqs[:, 1:], masks[:, 1:]
    ours = sequence_logprobs(model, inputs, targets, mask, average=average)
    assert ours.shape == (2,)
    expected = _torch_logprobs(model(inputs).numpy(), targets, mask, average)
    numpy.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The same, spelt out token by token.
    logits = model(inputs).numpy().astype(numpy.float64)
    for b in range(2):
        logp = [logits[b, t, targets[b, t]] - numpy.log(numpy.exp(logits[b, t]).sum())
                for t in range(targets.shape[1]) if mask[b, t]]
        direct = numpy.mean(logp) if average else numpy.sum(logp)
        assert float(ours.numpy()[b]) == pytest.approx(direct, rel=1e-5)


def test_sequence_logprobs_ignore_prompt_and_padding_tokens(model):
    batch = collate_preference(ITEMS, pad_token_id=PAD)
    seqs, mask = batch["chosen"], batch["chosen_mask"]
    targets = seqs[:, 1:].copy()
    targets[~mask[:, 1:]] = -100  # whatever sits under the mask must not matter
    a = sequence_logprobs(model, seqs[:, :-1], seqs[:, 1:], mask[:, 1:])
    b = sequence_logprobs(model, seqs[:, :-1], targets, mask[:, 1:])
    numpy.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(ValueError, match="no response token"):
        sequence_logprobs(model, seqs[:, :-1], seqs[:, 1:], numpy.zeros_like(mask[:, 1:]))


# ----------------------------------------------------------------------------- the loss

def test_dpo_loss_matches_numpy_float64_and_torch_on_real_logprobs(model):
    batch = collate_preference(ITEMS, pad_token_id=PAD)
    reference = _perturbed_reference(model)
    pc, pr = pair_logprobs(model, batch)
    with tinygpt.no_grad():
        rc, rr = pair_logprobs(reference, batch)
    beta = 0.5
    loss, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta=beta)

    v = {k: t.numpy().astype(numpy.float64) for k, t in
         dict(pc=pc, pr=pr, rc=rc, rr=rr).items()}
    z = beta * ((v["pc"] - v["rc"]) - (v["pr"] - v["rr"]))
    assert numpy.all(numpy.abs(z) > 1e-4)  # a non-trivial case
    expected = numpy.mean(numpy.logaddexp(0.0, -z))  # -log sigmoid(z) = log(1 + e^-z)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert chosen_rewards.item() == pytest.approx(beta * numpy.mean(v["pc"] - v["rc"]), rel=1e-5,
                                                  abs=1e-7)
    assert rejected_rewards.item() == pytest.approx(beta * numpy.mean(v["pr"] - v["rr"]),
                                                    rel=1e-5, abs=1e-7)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad

    # PyTorch, same formula, and the gradients with respect to the four inputs.
    leaves = {k: torch.tensor(a, requires_grad=True) for k, a in v.items()}
    logits = (leaves["pc"] - leaves["pr"]) - (leaves["rc"] - leaves["rr"])
    torch_loss = -torch.nn.functional.logsigmoid(beta * logits).mean()
    torch_loss.backward()
    assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-5)
    inputs = {k: tinygpt.tensor(a, requires_grad=True) for k, a in v.items()}
    dpo_loss(inputs["pc"], inputs["pr"], inputs["rc"], inputs["rr"], beta=beta)[0].backward()
    for k in v:
        numpy.testing.assert_allclose(inputs[k].grad, leaves[k].grad.numpy(), rtol=1e-6,
                                      atol=1e-9)


def test_dpo_loss_gradients_by_finite_differences():
    rng = numpy.random.default_rng(0)
    inputs = [tinygpt.tensor(rng.normal(-2.0, 1.0, size=5)) for _ in range(4)]
    for beta in (0.1, 0.7, 5.0):
        assert tinygpt.gradcheck(lambda a, b, c, d, beta=beta: dpo_loss(a, b, c, d, beta)[0],
                                 inputs)


def test_log_sigmoid_is_stable_and_has_the_right_slope_at_zero():
    x = tinygpt.tensor(numpy.array([-1000.0, -30.0, -1.0, 0.0, 1e-3, 2.0, 30.0, 1000.0]),
                       requires_grad=True)
    y = dpo.log_sigmoid(x)
    y.sum().backward()
    t = torch.tensor(x.numpy(), requires_grad=True)
    expected = torch.nn.functional.logsigmoid(t)
    expected.sum().backward()
    numpy.testing.assert_allclose(y.numpy(), expected.detach().numpy(), rtol=1e-6, atol=1e-12)
    numpy.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-6, atol=1e-12)
    assert x.grad[3] == pytest.approx(0.5)  # sigmoid(0): where every DPO run starts


def test_dpo_loss_starts_at_log_2_with_a_gradient():
    zeros = [tinygpt.tensor(numpy.zeros(4), requires_grad=True) for _ in range(4)]
    loss, chosen, rejected = dpo_loss(*zeros, beta=0.1)
    assert loss.item() == pytest.approx(numpy.log(2.0))
    assert chosen.item() == rejected.item() == 0.0
    loss.backward()
    numpy.testing.assert_allclose(zeros[0].grad, -0.1 * 0.5 / 4)  # d loss / d pc
    numpy.testing.assert_allclose(zeros[1].grad, +0.1 * 0.5 / 4)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(zeros[0], zeros[1], zeros[2], tinygpt.tensor(numpy.zeros(3)))


# ----------------------------------------------------------------------------- training

def test_reference_is_a_frozen_copy(model):
    reference = make_reference(model)
    assert all(not p.requires_grad for p in reference.parameters())
    assert all(p.requires_grad for p in model.parameters())
    before = reference.state_dict()["out_head.weight"].copy()
    model.out_head.weight.data += 1.0
    numpy.testing.assert_array_equal(reference.state_dict()["out_head.weight"], before)


def test_a_few_dpo_steps_widen_the_margin_on_one_pair(model):
    reference = make_reference(model)
    item = ITEMS[0]
    batch = collate_preference([item], pad_token_id=PAD, allowed_max_length=None)

    def margin():
        with tinygpt.no_grad():
            pc, pr = pair_logprobs(model, batch)
            rc, rr = pair_logprobs(reference, batch)
        return float(((pc.numpy() - rc.numpy()) - (pr.numpy() - rr.numpy()))[0])

    assert margin() == 0.0  # the policy starts as the reference
    cfg = DPOConfig(epochs=8, batch_size=1, lr=1e-3, beta=0.1, eval_every=2, eval_iters=1,
                    allowed_max_length=None, pad_token_id=PAD)
    logged = []
    history = train_dpo(model, reference, [item], [item], cfg, log=logged.append,
                        progress=False)
    assert len(history.step_loss) == 8 and history.steps == [2, 4, 6, 8]
    margins = history.train_reward_margin
    assert all(b > a for a, b in zip(margins, margins[1:])) and margins[0] > 0
    assert margin() > 0.5 and history.train_loss[-1] < history.step_loss[0] == pytest.approx(
        numpy.log(2.0), rel=1e-5)
    assert history.train_reward_accuracy[-1] == 1.0
    assert logged[-1].startswith("Ep 8 (Step 000008): Train loss")


def test_finetune_dpo_command_end_to_end(tmp_path, monkeypatch):
    entries = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}.",
                "chosen": f"{i}.", "rejected": f"No, {i + 1}!"} for i in range(20)]
    data = tmp_path / "prefs.json"
    data.write_text(json.dumps(entries))
    tinygpt.manual_seed(0)
    tiny = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=16, n_heads=2,
                              n_layers=1, drop_rate=0.0))
    monkeypatch.setattr(dpo_run, "load_base_model", lambda name, seed=0: (tiny,
                                                                          gpt2_encoding()))
    out = tmp_path / "dpo"
    assert main(["finetune-dpo", "--data", str(data), "--model", "x", "--out",
                 str(out), "--beta", "0.2", "--batch-size", "4", "--max-steps",
                 "2", "--eval-every", "1", "--eval-iters", "1", "--lr", "1e-3",
                 "--num-test", "1", "--max-new-tokens", "2"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    history = json.loads((out / "dpo-history.json").read_text())
    assert history["config"]["beta"] == 0.2 and history["steps"] == [1, 2]
    assert len(json.loads((out / RESPONSES_FILE).read_text())) == 1
    reloaded = tinygpt.load_gpt2(out)
    numpy.testing.assert_allclose(reloaded.state_dict()["tok_emb.weight"],
                                  tiny.state_dict()["tok_emb.weight"])
