"""Score instruction responses with a larger LLM as the judge (the book's section 7.8).

Each test entry holds the instruction, the correct ``output`` and the fine-tuned model's
``model_response``. The judge (e.g. Llama 3 served by Ollama, asked through
``judge_client.query_model``) gets the book's prompt

    Given the input `{format_input(entry)}` and correct output `{output}`, score the model
    response `{model_response}` on a scale from 0 to 100, where 100 is the best score.
    Respond with the integer number only.

and its answer is parsed into an integer. Like the book, an answer with no number from 0 to
100 in it is skipped (not scored as 0) and counted; ``JudgeResult`` reports the average over
the scored entries and how many were skipped. An empty model response scores 0 without
asking the judge.

Scores already obtained are never lost: ``run_judge`` writes them after every entry, and a
run started again on the same files asks only for the entries not scored yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tinygpt.finetune.alpaca import format_input, read_json, save_json
from tinygpt.finetune.judge_client import (
    OLLAMA_URL,
    JudgeError,
    check_request_limits,
    query_model,
)


def scoring_prompt(entry, key="model_response") -> str:
    """The book's scoring prompt for one entry."""
    return (
        f"Given the input `{format_input(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry[key]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def parse_score(text) -> int | None:
    """The score in a judge's answer: its first number if that lies in [0, 100] (rounded),
    so "85", " 85.\\n", "Score: 85" and "85/100" all give 85; None when there is none."""
    if not isinstance(text, str):
        return None
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    if not 0 <= value <= 100:
        return None
    return int(round(value))


@dataclass
class JudgeResult:
    """Scores per entry (None where the answer could not be parsed) and their summary."""

    scores: list = field(default_factory=list)
    answers: list = field(default_factory=list)

    @property
    def scored(self) -> list:
        return [s for s in self.scores if s is not None]

    @property
    def skipped(self) -> int:
        return sum(s is None for s in self.scores)

    @property
    def average(self) -> float | None:
        scored = self.scored
        return sum(scored) / len(scored) if scored else None

    def summary(self) -> str:
        text = f"Number of scores: {len(self.scored)} of {len(self.scores)}"
        if self.skipped:
            text += f" ({self.skipped} answer(s) held no score from 0 to 100 and were skipped)"
        avg = self.average
        return text + (f"\nAverage score: {avg:.2f}" if avg is not None
                       else "\nAverage score: none (no answer could be parsed)")


def _check_entry(entry, i, key) -> None:
    for name in ("instruction", "output", key):
        if not isinstance(entry, dict) or not isinstance(entry.get(name), str):
            raise ValueError(f"entry {i} has no text field {name!r} (responses files "
                             "hold instruction, input, output and model_response)")


def score_responses(entries, model="llama3", url=OLLAMA_URL, api="ollama",
                    key="model_response", progress=True, log=print, result=None,
                    on_score=None, **query_args) -> JudgeResult:
    """Ask the judge to score every entry's ``key`` against its ``output`` (0-100).

    ``result`` (a ``JudgeResult`` the caller keeps) is filled entry by entry, continuing
    after the scores it already holds, and ``on_score(result)`` is called after each new
    one: when the judge fails part-way (``JudgeError``), the scores obtained so far are in
    ``result``. ``query_args`` go to ``query_model`` (retries, timeout, api_key, ...).
    """
    from tqdm.auto import tqdm

    for i, entry in enumerate(entries):
        _check_entry(entry, i, key)
    result = result if result is not None else JudgeResult()
    todo = entries[len(result.scores):]
    for entry in tqdm(todo, desc="Scoring entries", disable=not progress, leave=False):
        if entry[key] == "":
            answer, score = "", 0
        else:
            answer = query_model(scoring_prompt(entry, key), model, url, api, **query_args)
            score = parse_score(answer)
            if score is None and log is not None:
                log(f"Could not convert score: {answer!r}")
        result.scores.append(score)
        result.answers.append(answer)
        if on_score is not None:
            on_score(result)
    return result


@dataclass
class JudgeRunConfig:
    """What ``tinygpt judge`` reads, asks and writes. ``out`` defaults to
    ``RESPONSES-scores.json`` beside the responses file."""

    responses: Path
    url: str = OLLAMA_URL
    api: str = "ollama"
    judge_model: str = "llama3"
    key: str = "model_response"
    api_key: str | None = None
    retries: int = 3
    timeout: float = 120.0
    limit: int | None = None
    out: Path | None = None

    def __post_init__(self):
        self.responses = Path(self.responses)
        if self.out is None:
            self.out = self.responses.with_name(self.responses.stem + "-scores.json")
        self.out = Path(self.out)
        check_request_limits(self.retries, self.timeout)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of entries, got {self.limit}")


def _scored_entries(entries, result) -> list[dict]:
    return [{**e, "score": s, "judge_answer": a}
            for e, s, a in zip(entries, result.scores, result.answers)]


def _earlier_scores(path: Path, entries) -> JudgeResult:
    """The scores a previous run wrote to ``path`` for the same leading entries."""
    result = JudgeResult()
    if not path.is_file():
        return result
    earlier = read_json(path, "scores file")
    if not isinstance(earlier, list):
        raise ValueError(f"{path}: expected the JSON list of scored entries `tinygpt judge` "
                         "writes; delete it or pass another --out")
    for old, entry in zip(earlier, entries):
        if not isinstance(old, dict) or "score" not in old:
            break
        if {k: v for k, v in old.items() if k not in ("score", "judge_answer")} != entry:
            break
        result.scores.append(old["score"])
        result.answers.append(old.get("judge_answer", ""))
    return result


def run_judge(cfg: JudgeRunConfig, log=print) -> JudgeResult:
    """Score a responses file (as ``tinygpt finetune-instruct`` writes it), writing each
    entry with its score and the judge's answer to ``cfg.out`` as the scores come in, and
    print the summary. Scores already in ``cfg.out`` for the same entries are kept, not
    asked for again."""
    entries = read_json(cfg.responses, "responses file")
    if not isinstance(entries, list):
        raise ValueError(f"{cfg.responses}: expected a JSON list of entries")
    entries = entries[:cfg.limit] if cfg.limit is not None else entries
    result = _earlier_scores(cfg.out, entries)
    if result.scores:
        log(f"keeping the {len(result.scores)} scores already in {cfg.out}")
    try:
        score_responses(entries, model=cfg.judge_model, url=cfg.url, api=cfg.api, key=cfg.key,
                        result=result, retries=cfg.retries, timeout=cfg.timeout,
                        api_key=cfg.api_key,
                        on_score=lambda r: save_json(_scored_entries(entries, r), cfg.out))
    except JudgeError as err:
        kept = (f"the {len(result.scores)} scores obtained are kept in {cfg.out}; run the "
                "same command again to continue" if result.scores else "no score was obtained")
        raise JudgeError(f"{err} ({kept})") from None
    log(result.summary())
    log(f"scores: {cfg.out}")
    if result.average is None:
        raise RuntimeError("the judge gave no usable score")
    return result
