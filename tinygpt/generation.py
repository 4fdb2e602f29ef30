"""Text generation: pick the next token, append it, repeat (the book's chapter 5).

Each step turns the last position's logits into a choice:
  temperature 0      greedy, the most likely token;
  temperature T > 0  logits / T, then sample (T < 1 sharper, T > 1 flatter), optionally
                     restricted to the top_k most likely tokens and/or the smallest set whose
                     probabilities add up to top_p (nucleus sampling).

With ``use_cache=True`` (the default) generation keeps every layer's keys and values in a
``KVCache`` it owns, so after the prompt each new token costs one token's forward pass
instead of the whole sequence's. Once the sequence outgrows the context window a new cache
is filled from the cropped window each step, which gives exactly the tokens of the uncached
path.
"""

from __future__ import annotations

import numpy

from tinygpt import backend
from tinygpt.nn.attention import KVCache
from tinygpt.tensor import Tensor, no_grad


def _as_batch(ids):
    """Token ids as a (B, T) integer array of the active backend."""
    ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or not numpy.issubdtype(ids.dtype, numpy.integer) or ids.shape[1] == 0:
        raise ValueError(f"generate: ids must be a non-empty (batch, tokens) integer array, "
                         f"got shape {ids.shape} and dtype {ids.dtype}")
    return ids.astype("int64")


def _check_sampling_args(temperature, top_k, top_p, vocab_size):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and not 1 <= top_k <= vocab_size:
        raise ValueError(f"top_k must be between 1 and the vocabulary size {vocab_size}, "
                         f"got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


NUCLEUS_CANDIDATES = 64  # tokens sorted first when looking for the top-p nucleus


def filter_logits(logits, top_k=None, top_p=None):
    """Set to -inf every logit outside the top_k and outside the top_p nucleus. logits (B, V).

    Neither sorts the whole vocabulary (50,257 tokens for GPT-2): top-k finds the k-th
    largest logit with a partial sort (``partition``, linear time), and top-p sorts only
    the most likely tokens (see ``_nucleus``)."""
    xp = backend.xp()
    vocab = logits.shape[-1]
    if top_k is not None and top_k < vocab:
        # after partitioning, position V - k holds the k-th largest value of each row
        kth = xp.partition(logits, vocab - top_k, axis=-1)[:, vocab - top_k][:, None]
        logits = xp.where(logits < kth, -xp.inf, logits)
    if top_p is not None and top_p < 1.0:
        logits = xp.where(_nucleus(logits, top_p), logits, -xp.inf)
    return logits


def _nucleus(logits, top_p):
    """Mask (B, V) of the smallest set of most likely tokens whose probabilities add up to
    ``top_p`` (the most likely token is always in it).

    Only the k most likely tokens are sorted (``argpartition`` picks them, k = 64 first).
    If they hold at least ``top_p`` of the probability, every token ranked below them has at
    least ``top_p`` before it and is out, so sorting the rest would change nothing;
    otherwise k grows eightfold and the search repeats (a flat distribution may need all)."""
    xp = backend.xp()
    vocab = logits.shape[-1]
    probs = _softmax(logits)
    k = min(NUCLEUS_CANDIDATES, vocab)
    while True:
        top = xp.argpartition(-probs, k - 1, axis=-1)[:, :k]  # the k most likely, unordered
        top_probs = xp.take_along_axis(probs, top, axis=-1)
        order = xp.argsort(-top_probs, axis=-1)  # sort those k only
        top = xp.take_along_axis(top, order, axis=-1)
        top_probs = xp.take_along_axis(top_probs, order, axis=-1)
        mass = xp.cumsum(top_probs, axis=-1)
        if k == vocab or bool((mass[:, -1] >= top_p).all()):
            break
        k = min(8 * k, vocab)
    # Keep a token if the tokens ranked above it do not yet reach top_p.
    keep = xp.zeros(probs.shape, dtype=bool)
    xp.put_along_axis(keep, top, (mass - top_probs) < top_p, axis=-1)
    return keep


def _softmax(logits):
    xp = backend.xp()
    e = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def next_token(logits, temperature=0.0, top_k=None, top_p=None):
    """Choose one token per row from last-position logits (B, V) -> (B,) int64."""
    xp = backend.xp()
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    logits = filter_logits(logits.astype("float64") / temperature, top_k, top_p)
    probs = _softmax(logits)
    # Inverse-CDF sampling: the first token whose cumulative probability exceeds u ~ U(0, 1).
    u = backend.generator().random((logits.shape[0], 1))
    choice = (xp.cumsum(probs, axis=-1) <= u).sum(axis=-1)
    return xp.minimum(choice, logits.shape[-1] - 1).astype("int64")


def stream(model, ids, max_new_tokens, context_size=None, temperature=0.0, top_k=None,
           top_p=None, eos_id=None, use_cache=True):
    """Yield the next token of every sequence, (B,) int64, one step at a time.

    Stops after ``max_new_tokens`` or when every sequence has produced ``eos_id``; a
    sequence that is done keeps receiving ``eos_id`` (as padding) until all are. Arguments
    are checked here, before the first step is asked for.
    """
    ids = _as_batch(ids)
    context = model.cfg.context_length
    context_size = context if context_size is None else context_size
    if not 1 <= context_size <= context:
        raise ValueError(f"context_size must be between 1 and the model's context length "
                         f"{context}, got {context_size}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    _check_sampling_args(temperature, top_k, top_p, model.cfg.vocab_size)
    return _steps(model, ids, max_new_tokens, context_size, temperature, top_k, top_p,
                  eos_id, use_cache)


def _steps(model, ids, max_new_tokens, context_size, temperature, top_k, top_p, eos_id,
           use_cache):
    """The generator behind ``stream``, its arguments already checked."""
    xp = backend.xp()
    B, T = ids.shape
    done = xp.zeros(B, dtype=bool)
    sequence = xp.empty((B, T + max_new_tokens), dtype=ids.dtype)  # filled in place
    sequence[:, :T] = ids
    # A cache never holds more than the window or than the whole sequence: allocating just
    # that (not the model's full context) keeps batch 8 from reserving 600 MB for GPT-2.
    capacity = min(context_size, T + max_new_tokens)
    cache = None
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for length in range(T, T + max_new_tokens):
                logits, cache = _last_logits(model, sequence[:, :length], context_size, cache,
                                             use_cache, capacity)
                token = next_token(logits, temperature, top_k, top_p)
                if eos_id is not None:
                    token = xp.where(done, eos_id, token)
                    done = done | (token == eos_id)
                sequence[:, length] = token
                yield token
                if eos_id is not None and bool(done.all()):
                    break
    finally:
        model.train(was_training)


def _last_logits(model, ids, context_size, cache, use_cache, capacity):
    """(logits (B, V) for the token after ``ids``, the cache to use next time).

    The cache is reused while it holds every token of ``ids`` but the last; on the first
    step, or once the window slides (positions change), a new one of ``capacity`` tokens
    is filled."""
    if not use_cache:
        return model(ids[:, -context_size:], last_only=True).data[:, -1, :], None
    if cache is None or ids.shape[1] > context_size:
        cache = KVCache(capacity)
        return model(ids[:, -context_size:], cache, last_only=True).data[:, -1, :], cache
    return model(ids[:, cache.length:], cache, last_only=True).data[:, -1, :], cache


def generate(model, ids, max_new_tokens, context_size=None, temperature=0.0, top_k=None,
             top_p=None, eos_id=None, use_cache=True):
    """Extend ``ids`` (B, T) or (T,) by up to ``max_new_tokens`` tokens -> (B, T + new).

    Sampling draws from tinygpt's seeded generator: call ``tinygpt.manual_seed`` first for
    reproducible text. ``eos_id`` ends a sequence early; it is kept in the output, and
    sequences that finished first are padded with it.
    """
    ids = _as_batch(ids)
    tokens = list(stream(model, ids, max_new_tokens, context_size, temperature, top_k,
                         top_p, eos_id, use_cache))
    if not tokens:
        return ids
    return backend.xp().concatenate([ids, backend.xp().stack(tokens, axis=1)], axis=1)


class TextStreamer:
    """The text of generated tokens, written piece by piece as they arrive (for terminals).

    Each token is decoded once, together with at most the few tokens before it that did not
    yet end on a whole character, so streaming costs time linear in the output's length
    (decoding everything so far at each step would be quadratic). A byte-level BPE token can
    end inside a multi-byte UTF-8 character, whose text then ends in U+FFFD: such tokens
    are held until the character is complete (a character has at most 4 bytes, so after 4
    tokens the text is written as it is).

    With ``stop`` (e.g. "###", the start of the next prompt section), text that might begin
    the stop string is held back, writing ends where it appears, and the text before it
    loses its trailing whitespace.

        streamer = TextStreamer(tokenizer, write=sys.stdout.write)
        for token in stream(model, [ids], 50):
            streamer.put(int(token[0]))
        text = streamer.end()
    """

    MAX_PENDING = 4

    def __init__(self, tokenizer, write=None, stop: str | None = None):
        self.tokenizer, self.stop = tokenizer, stop
        self.write = write if write is not None else (lambda text: None)
        self.pending = []  # token ids whose text may end inside a character
        self.held = ""  # decoded text not written yet (a possible start of ``stop``)
        self.parts = []  # the text written so far
        self.stopped = False  # ``stop`` was seen: later tokens are ignored

    def put(self, token: int) -> None:
        """Add one generated token id; write whatever text is now complete."""
        if self.stopped:
            return
        self.pending.append(int(token))
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < self.MAX_PENDING:
            return
        self.pending = []
        self._release(self.held + text, final=False)

    def end(self) -> str:
        """Write what is still held back; return the whole text written."""
        if not self.stopped:
            text = self.tokenizer.decode(self.pending) if self.pending else ""
            self.pending = []
            self._release(self.held + text, final=True)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _release(self, text: str, final: bool) -> None:
        """Write ``text`` except the part that must wait (see the class docstring)."""
        keep = len(text)
        if self.stop is not None:
            cut = text.find(self.stop)
            if cut >= 0:
                text, final, self.stopped = text[:cut], True, True
            keep = len(text.rstrip()) if final else self._safe_length(text)
        if keep:
            self.parts.append(text[:keep])
            self.write(text[:keep])
        self.held = "" if final else text[keep:]

    def _safe_length(self, text: str) -> int:
        """How much of ``text`` can be written now: not trailing whitespace (it might come
        right before ``stop``) nor a trailing prefix of ``stop``."""
        keep = len(text.rstrip())
        for k in range(len(self.stop) - 1, 0, -1):
            if text[:keep].endswith(self.stop[:k]):
                return len(text[:keep - k].rstrip())
        return keep
