"""Text generation, checked against Hugging Face transformers on the same checkpoint.

The checkpoint is a small random ``GPT2LMHeadModel`` whose parameters get enough noise that
its next-token distributions are far from uniform (so greedy choices are not near-ties),
saved with ``save_pretrained`` and read back with ``tinygpt.load_gpt2``.
"""

from __future__ import annotations

import math

import numpy
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import tinygpt  # noqa: E402
from tinygpt.checkpoints import load_gpt2  # noqa: E402
from tinygpt.generation import (  # noqa: E402
    NUCLEUS_CANDIDATES,
    TextStreamer,
    filter_logits,
    generate,
    next_token,
    stream,
)
from tinygpt.nn import KVCache  # noqa: E402

VOCAB, CONTEXT = 97, 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, tinygpt model) holding the same weights."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=CONTEXT, n_embd=32, n_layer=2,
                                  n_head=4, bos_token_id=None, eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    directory = tmp_path_factory.mktemp("gen-ckpt")
    hf.save_pretrained(directory)
    return hf, load_gpt2(directory)


@pytest.fixture
def hf(pair):
    return pair[0]


@pytest.fixture
def model(pair):
    return pair[1]


def prompts(batch=3, tokens=7, seed=1):
    return numpy.random.default_rng(seed).integers(0, VOCAB, (batch, tokens))


def hf_generate(hf, ids, max_new_tokens, eos_id=None):
    t = torch.as_tensor(ids)
    extra = {} if eos_id is None else {"eos_token_id": eos_id}
    with torch.no_grad():
        out = hf.generate(t, attention_mask=torch.ones_like(t), do_sample=False,
                          max_new_tokens=max_new_tokens,
                          pad_token_id=0 if eos_id is None else eos_id, **extra)
    return out.numpy()


def hf_greedy_cropped(hf, ids, max_new_tokens, window):
    """The book's generate_text_simple, run on transformers: crop to the last ``window``
    tokens, take the argmax of the last position, append, repeat."""
    ids = torch.as_tensor(ids)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = hf(ids[:, -window:]).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids.numpy()


# ----------------------------------------------------------------------------- vs transformers

def test_greedy_matches_transformers(hf, model):
    ids = prompts()
    ref = hf_generate(hf, ids, 30)
    assert ref.shape == (3, 37)
    for use_cache in (True, False):
        out = generate(model, ids, 30, use_cache=use_cache)
        assert out.dtype == numpy.int64
        numpy.testing.assert_array_equal(out, ref, err_msg=f"use_cache={use_cache}")


def _eos_hit_by_every_row_at_different_steps(tokens):
    """A token every row produces, preferring one whose first appearances are far apart."""
    best, spread = None, -1
    for t in set(tokens[0].tolist()):
        if all((row == t).any() for row in tokens):
            firsts = [int(numpy.argmax(row == t)) for row in tokens]
            if max(firsts) - min(firsts) > spread:
                best, spread = t, max(firsts) - min(firsts)
    return best, spread


def test_eos_early_stop_matches_transformers(hf, model):
    ids = prompts()
    free = generate(model, ids, 30)[:, ids.shape[1]:]
    eos, spread = _eos_hit_by_every_row_at_different_steps(free)
    assert eos is not None and spread > 0, "pick another seed: no shared token"
    stop = max(int(numpy.argmax(row == eos)) for row in free) + 1

    ref = hf_generate(hf, ids, 30, eos_id=eos)
    assert ref.shape == (3, ids.shape[1] + stop)  # transformers stopped when all rows had eos
    for use_cache in (True, False):
        out = generate(model, ids, 30, eos_id=eos, use_cache=use_cache)
        numpy.testing.assert_array_equal(out, ref)
    for row in out[:, ids.shape[1]:]:  # eos kept, then padded with eos
        first = int(numpy.argmax(row == eos))
        assert (row[first:] == eos).all() and not (row[:first] == eos).any()


def test_eos_that_only_some_rows_reach(hf, model):
    ids = prompts()
    free = generate(model, ids, 30)[:, ids.shape[1]:]
    hit = [set(row.tolist()) for row in free]
    candidates = (hit[0] | hit[1] | hit[2]) - (hit[0] & hit[1] & hit[2])
    eos = min(candidates)
    out = generate(model, ids, 30, eos_id=eos)
    assert out.shape == (3, 37)  # someone never finished
    numpy.testing.assert_array_equal(out, hf_generate(hf, ids, 30, eos_id=eos))


def test_cropping_to_the_context_window_matches_transformers(hf, model):
    """Prompt + new tokens longer than the context: every step sees the last CONTEXT tokens,
    with the cache (rebuilt once the window slides) and without."""
    ids = prompts(batch=2, tokens=50, seed=2)
    ref = hf_greedy_cropped(hf, ids, 30, CONTEXT)
    assert ref.shape[1] == 80 > CONTEXT
    for use_cache in (True, False):
        numpy.testing.assert_array_equal(generate(model, ids, 30, use_cache=use_cache), ref)


def test_prompt_longer_than_the_context(hf, model):
    ids = prompts(batch=1, tokens=CONTEXT + 20, seed=3)
    out = generate(model, ids, 5)
    numpy.testing.assert_array_equal(out[:, :ids.shape[1]], ids)
    numpy.testing.assert_array_equal(out, hf_greedy_cropped(hf, ids, 5, CONTEXT))
    numpy.testing.assert_array_equal(out, generate(model, ids, 5, use_cache=False))


def test_context_size_smaller_than_the_model_context(hf, model):
    ids = prompts(batch=2, tokens=10, seed=4)
    ref = hf_greedy_cropped(hf, ids, 20, 16)
    for use_cache in (True, False):
        numpy.testing.assert_array_equal(
            generate(model, ids, 20, context_size=16, use_cache=use_cache), ref)


# ----------------------------------------------------------------------------- batches, cache

def test_the_cache_is_sized_for_the_tokens_it_will_hold(model, monkeypatch):
    """prompt + new tokens when that fits the window; the window when the text slides."""
    from tinygpt import generation

    sizes = []
    monkeypatch.setattr(generation, "KVCache", lambda n: sizes.append(n) or KVCache(n))
    generate(model, prompts(tokens=7), 5)
    assert sizes == [7 + 5]
    sizes.clear()
    window = model.cfg.context_length
    generate(model, prompts(tokens=window - 2), 5)  # the last two steps slide: new caches
    assert sizes == [window] * 3


def test_batch_equals_each_prompt_alone(model):
    ids = prompts(batch=4, tokens=9, seed=5)
    together = generate(model, ids, 15)
    for i in range(4):
        numpy.testing.assert_array_equal(generate(model, ids[i], 15), together[i:i + 1])


def test_one_dimensional_ids_and_tensors(model):
    ids = prompts(batch=1, tokens=5)
    out = generate(model, ids, 4)
    numpy.testing.assert_array_equal(generate(model, ids[0].tolist(), 4), out)
    numpy.testing.assert_array_equal(generate(model, tinygpt.tensor(ids), 4), out)


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, top_k=10, top_p=0.9, context_size=12),
])
def test_cache_and_no_cache_sample_identical_tokens(model, settings):
    ids = prompts(batch=2, tokens=6, seed=6)
    tinygpt.manual_seed(42)
    cached = generate(model, ids, 40, use_cache=True, **settings)
    tinygpt.manual_seed(42)
    uncached = generate(model, ids, 40, use_cache=False, **settings)
    numpy.testing.assert_array_equal(cached, uncached)


def test_seeded_sampling_is_reproducible(model):
    ids = prompts(batch=2, tokens=6)
    runs = []
    for seed in (123, 123, 124):
        tinygpt.manual_seed(seed)
        runs.append(generate(model, ids, 30, temperature=1.5, top_k=20))
    numpy.testing.assert_array_equal(runs[0], runs[1])
    assert not numpy.array_equal(runs[0], runs[2])


def test_generation_leaves_the_model_as_it_was(model):
    model.train()
    generate(model, prompts(), 5)
    assert model.training and not any(isinstance(v, KVCache) for m in model.modules()
                                      for v in vars(m).values())
    model.eval()


def test_zero_new_tokens(model):
    ids = prompts()
    numpy.testing.assert_array_equal(generate(model, ids, 0), ids)


# ----------------------------------------------------------------------------- streaming

def test_stream_yields_the_generated_tokens_one_step_at_a_time(model):
    ids = prompts()
    steps = stream(model, ids, 12, temperature=0.0)
    first = next(steps)
    assert first.shape == (3,) and first.dtype == numpy.int64
    tokens = [first, *steps]
    assert len(tokens) == 12
    numpy.testing.assert_array_equal(numpy.stack(tokens, axis=1), generate(model, ids, 12)[:, 7:])


def test_stream_stops_when_every_row_reached_eos(model):
    ids = prompts()
    free = generate(model, ids, 30)[:, 7:]
    eos, _ = _eos_hit_by_every_row_at_different_steps(free)
    tokens = list(stream(model, ids, 30, eos_id=eos))
    assert len(tokens) < 30 and (tokens[-1] == eos).all()
    numpy.testing.assert_array_equal(numpy.stack(tokens, axis=1),
                                     generate(model, ids, 30, eos_id=eos)[:, 7:])


def test_stream_checks_its_arguments_before_the_first_step(model):
    with pytest.raises(ValueError, match="temperature"):
        stream(model, prompts(), 5, temperature=-1.0)


# ----------------------------------------------------------------------------- sampling sets

def _kept_by_transformers(logits, temperature, top_k, top_p):
    """Which tokens transformers' warpers (temperature, then top-k, then top-p) keep."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )
    scores = torch.as_tensor(logits, dtype=torch.float64)
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k is not None:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p is not None:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.isfinite(scores).numpy()


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, 5, None), (1.0, None, 0.5), (0.6, None, 0.9), (1.5, 20, 0.7), (1.0, 1, None),
    (1.0, None, 1e-6), (2.0, 50, None),
])
def test_filter_logits_keeps_the_same_sets_as_transformers(temperature, top_k, top_p):
    rng = numpy.random.default_rng(7)
    logits = rng.normal(0, 3, (64, 101))
    ours = numpy.isfinite(filter_logits(logits / temperature, top_k, top_p))
    numpy.testing.assert_array_equal(ours, _kept_by_transformers(logits, temperature, top_k,
                                                                 top_p))


@pytest.mark.parametrize("scale, top_p, widens", [
    (0.05, 0.9, True), (0.05, 0.999, True), (1.0, 0.95, True), (8.0, 0.3, False),
    (8.0, 0.9, False)])
def test_top_p_over_a_large_vocabulary_keeps_the_same_sets_as_transformers(scale, top_p,
                                                                            widens):
    """Flat distributions (scale 0.05) put thousands of tokens in the nucleus: more than the
    candidates sorted first, so the search has to widen, up to the whole vocabulary."""
    logits = numpy.random.default_rng(8).normal(0, scale, (4, 5000))
    ours = numpy.isfinite(filter_logits(logits, None, top_p))
    kept = _kept_by_transformers(logits, 1.0, None, top_p)
    assert (kept.sum(axis=1).max() > NUCLEUS_CANDIDATES) == widens
    numpy.testing.assert_array_equal(ours, kept)


def _chi2_upper(df, z=3.719):
    """The chi-square quantile at 1 - 1e-4 (z = 3.719), by Wilson and Hilferty's formula."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def _check_draws(draws, allowed, probs):
    """Every draw in ``allowed``; frequencies consistent with ``probs`` renormalised there."""
    assert set(numpy.unique(draws).tolist()) <= set(allowed.tolist())
    expected = probs[allowed] / probs[allowed].sum() * draws.size
    counts = numpy.array([(draws == t).sum() for t in allowed])
    assert (counts > 0).all(), "an allowed token was never drawn"
    if len(allowed) == 1:
        return
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_upper(len(allowed) - 1), (counts, expected.round(1))


N_DRAWS = 4000
PROBS = numpy.array([0.30, 0.20, 0.15, 0.10, 0.08, 0.07, 0.05, 0.03, 0.02])
PERM = numpy.array([4, 7, 0, 2, 8, 1, 6, 3, 5])  # token PERM[i] has probability PROBS[i]


def _fixed_logits():
    probs = numpy.empty_like(PROBS)
    probs[PERM] = PROBS
    return numpy.log(probs), probs


@pytest.mark.parametrize("top_k", [1, 3, 6])
def test_top_k_samples_only_the_k_most_likely_with_renormalised_frequencies(top_k):
    logits, probs = _fixed_logits()
    tinygpt.manual_seed(1)
    draws = next_token(numpy.tile(logits, (N_DRAWS, 1)), temperature=1.0, top_k=top_k)
    assert draws.shape == (N_DRAWS,)
    _check_draws(draws, PERM[:top_k], probs)


@pytest.mark.parametrize("top_p, kept", [(0.25, 1), (0.45, 2), (0.7, 4), (0.87, 6), (1.0, 9)])
def test_top_p_samples_only_the_nucleus_with_renormalised_frequencies(top_p, kept):
    """The nucleus is the smallest set of most likely tokens whose mass reaches top_p:
    0.30, 0.50, 0.65, 0.75, 0.83, 0.90, ... -> 0.7 keeps four tokens, 0.87 six. (No top_p
    sits on one of those sums, where float rounding decides.)"""
    logits, probs = _fixed_logits()
    tinygpt.manual_seed(2)
    draws = next_token(numpy.tile(logits, (N_DRAWS, 1)), temperature=1.0, top_p=top_p)
    _check_draws(draws, PERM[:kept], probs)


def test_temperature_with_top_k_and_top_p():
    """Temperature 0.5 squares the probabilities (then renormalises): 0.09, 0.04, 0.0225,
    0.01, ... -> top_k 5 keeps five, of which top_p 0.9 keeps the first three."""
    logits, probs = _fixed_logits()
    tinygpt.manual_seed(3)
    draws = next_token(numpy.tile(logits, (N_DRAWS, 1)), temperature=0.5, top_k=5, top_p=0.9)
    sharp = probs ** 2
    top5 = sharp[PERM[:5]] / sharp[PERM[:5]].sum()
    assert top5[:2].sum() < 0.9 <= top5[:3].sum()
    _check_draws(draws, PERM[:3], sharp)


def test_plain_sampling_follows_the_softmax():
    logits, probs = _fixed_logits()
    tinygpt.manual_seed(4)
    draws = next_token(numpy.tile(logits, (N_DRAWS, 1)), temperature=1.0)
    _check_draws(draws, PERM, probs)


def test_greedy_is_the_argmax():
    logits = numpy.random.default_rng(0).normal(size=(5, 30))
    numpy.testing.assert_array_equal(next_token(logits), logits.argmax(axis=-1))


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(temperature=1.0, top_k=0), "top_k must be between 1 and the vocabulary size 97"),
    (dict(temperature=1.0, top_k=98), "top_k must be between 1 and the vocabulary size 97"),
    (dict(temperature=1.0, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(temperature=1.0, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(context_size=0), "context_size must be between 1 and the model's context length 64"),
    (dict(context_size=65), "context_size must be between 1 and the model's context length 64"),
    (dict(max_new_tokens=-1), "max_new_tokens must be"),
])
def test_bad_arguments(model, kwargs, message):
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, prompts(), **kwargs)


@pytest.mark.parametrize("ids", [
    numpy.zeros((2, 3), dtype=numpy.float32), numpy.zeros((1, 2, 3), dtype=numpy.int64),
    numpy.zeros((2, 0), dtype=numpy.int64),
])
def test_bad_ids(model, ids):
    with pytest.raises(ValueError, match=r"ids must be a non-empty \(batch, tokens\) integer"):
        generate(model, ids, 3)


# ----------------------------------------------------------------------------- streaming text

STREAM_TEXT = "Héllo wörld — 你好, 世界! 🙂🚀 naïve café\n\tend ###"


class CountingDecoder:
    """tiktoken's GPT-2 encoding, counting how many token ids ``decode`` was given."""

    def __init__(self):
        from tinygpt.tokenizer import gpt2_encoding

        self.encoding, self.decoded_ids = gpt2_encoding(), 0

    def decode(self, ids):
        self.decoded_ids += len(ids)
        return self.encoding.decode(ids)


def test_streamed_text_equals_tiktokens_decoding_and_costs_linear_time():
    tokenizer = CountingDecoder()
    ids = tokenizer.encoding.encode(STREAM_TEXT * 20)
    pieces = []
    streamer = TextStreamer(tokenizer, write=pieces.append)
    for token in ids:
        streamer.put(token)
    assert streamer.end() == "".join(pieces) == tokenizer.encoding.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)  # never half a character
    assert len(pieces) > len(ids) // 2  # written as it comes, not at the end
    assert tokenizer.decoded_ids <= 4 * len(ids)  # each token decoded a bounded number of times


def test_streamer_stops_at_the_stop_string_and_holds_back_its_start():
    tokenizer = CountingDecoder()
    text = "The answer is 42.  \n### Instruction: more"
    pieces = []
    streamer = TextStreamer(tokenizer, write=pieces.append, stop="###")
    for token in tokenizer.encoding.encode(text):
        streamer.put(token)
    assert streamer.end() == "".join(pieces) == "The answer is 42."
    assert streamer.stopped
