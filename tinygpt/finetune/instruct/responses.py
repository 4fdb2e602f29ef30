"""An instruction-tuned model answering: one response extracted as the book does, the test
set's responses, and a terminal chat that streams each answer."""

from __future__ import annotations

import sys

from tinygpt.finetune.alpaca import END_OF_TEXT_ID, RESPONSE_HEADER, encode, format_input
from tinygpt.generation import TextStreamer, stream


def _stream_answer(model, tokenizer, prompt, streamer, max_new_tokens, eos_id, sampling):
    """Feed the tokens generated after ``prompt`` to ``streamer`` until <|endoftext|>, the
    streamer's stop string, or ``max_new_tokens``; returns the streamer's text."""
    ids = encode(tokenizer, prompt)
    for token in stream(model, [ids], max_new_tokens, context_size=model.cfg.context_length,
                        eos_id=eos_id, **sampling):
        token = int(token[0])
        if token == eos_id:
            break
        streamer.put(token)
        if streamer.stopped:
            break
    return streamer.end()


def respond(model, tokenizer, entry, max_new_tokens=256, eos_id=END_OF_TEXT_ID,
            temperature=0.0, top_k=None, top_p=None) -> str:
    """The model's answer to one entry, extracted as the book does: generate after
    ``format_input(entry)`` until <|endoftext|>, drop "### Response:" and the whitespace
    around the answer."""
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    text = _stream_answer(model, tokenizer, format_input(entry), TextStreamer(tokenizer),
                          max_new_tokens, eos_id, sampling)
    return text.replace("### Response:", "").strip()


def generate_responses(model, tokenizer, entries, max_new_tokens=256, eos_id=END_OF_TEXT_ID,
                       progress=True, key="model_response") -> list[dict]:
    """Copies of ``entries``, each with the model's greedy answer under ``key``."""
    from tqdm.auto import tqdm

    out = []
    for entry in tqdm(entries, desc="Generating responses", disable=not progress, leave=False):
        out.append({**entry, key: respond(model, tokenizer, entry, max_new_tokens, eos_id)})
    return out


STOP_MARKER = "###"  # a new prompt section: the answer is over


def chat(model, tokenizer, stdin=None, stdout=None, max_new_tokens=256, temperature=0.0,
         top_k=None, top_p=None, eos_id=END_OF_TEXT_ID, prompt_marker="> ") -> int:
    """A terminal loop: each line read is an instruction; the answer streams token by token
    and ends at <|endoftext|> or a new "###" heading. Stops at end of input or "/quit".
    Returns the number of answers given."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    interactive = hasattr(stdin, "isatty") and stdin.isatty()
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)

    def write(text):
        stdout.write(text)
        stdout.flush()

    answers = 0
    while True:
        if interactive:
            write(prompt_marker)
        line = stdin.readline()
        if not line:  # EOF (Ctrl-D)
            if interactive:
                write("\n")
            return answers
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return answers
        prompt = format_input({"instruction": line, "input": ""}) + RESPONSE_HEADER
        streamer = TextStreamer(tokenizer, write=write, stop=STOP_MARKER)
        try:
            _stream_answer(model, tokenizer, prompt, streamer, max_new_tokens, eos_id,
                           sampling)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            write(" [interrupted]")
        write("\n")
        answers += 1
