"""Instruction fine-tuning: the book's prompt format and collate function, exactly; and a tiny
GPT that memorises eight instructions and answers them back word for word."""

import contextlib
import io
import json

import numpy
import pytest

import tinygpt
from tinygpt.cli import main
from tinygpt.config import GPTConfig
from tinygpt.finetune import alpaca, instruct
from tinygpt.finetune.alpaca import RESPONSE_HEADER, RESPONSES_FILE, split_data
from tinygpt.finetune.instruct import collate, encode_entries, format_input, format_response
from tinygpt.finetune.instruct import run as instruct_run
from tinygpt.finetune.instruct.data import instruction_batches
from tinygpt.finetune.instruct.run import InstructConfig, run_instruction_finetuning
from tinygpt.nn import GPTModel
from tinygpt.tokenizer import gpt2_encoding

# Eight short entries in the book's format (the first two are the book's examples 50 and 999).
ENTRIES = [
    {"instruction": "Identify the correct spelling of the following word.",
     "input": "Ocassion", "output": "The correct spelling is 'Occasion.'"},
    {"instruction": "What is an antonym of 'complicated'?", "input": "",
     "output": "An antonym of 'complicated' is 'simple'."},
    {"instruction": "Convert 45 kilometers to meters.", "input": "",
     "output": "45 kilometers is 45000 meters."},
    {"instruction": "Edit the following sentence for grammar.",
     "input": "He go to the park every day.", "output": "He goes to the park every day."},
    {"instruction": "Name the capital of France.", "input": "",
     "output": "The capital of France is Paris."},
    {"instruction": "Translate the following sentence into French.",
     "input": "Where is the nearest restaurant?", "output": "Où est le restaurant le plus proche?"},
    {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
     "output": "The car is as fast as lightning."},
    {"instruction": "What is the chemical symbol for gold?", "input": "",
     "output": "The chemical symbol for gold is Au."},
]


# ----------------------------------------------------------------------------- formatting

def test_format_input_with_input_matches_the_book():
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n"
        "\n"
        "### Instruction:\n"
        "Identify the correct spelling of the following word.\n"
        "\n"
        "### Input:\n"
        "Ocassion"
    )
    assert format_input(ENTRIES[0]) == expected
    assert format_response(ENTRIES[0]) == "\n\n### Response:\nThe correct spelling is 'Occasion.'"


def test_format_input_without_input_matches_the_book():
    expected = (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n"
        "\n"
        "### Instruction:\n"
        "What is an antonym of 'complicated'?"
    )
    assert format_input(ENTRIES[1]) == expected
    assert format_input(ENTRIES[1]) + format_response(ENTRIES[1]) == (
        expected + "\n\n### Response:\nAn antonym of 'complicated' is 'simple'.")


def test_split_data_is_the_books_85_10_5():
    entries = [{"instruction": str(i), "input": "", "output": str(i)} for i in range(1100)]
    split = split_data(entries)
    assert (len(split.train), len(split.val), len(split.test)) == (935, 55, 110)
    assert split.train == entries[:935]  # no shuffling, as the book
    assert split.test == entries[935:1045]
    assert split.val == entries[1045:]
    shuffled = split_data(entries, seed=1)
    assert shuffled == split_data(entries, seed=1)
    assert shuffled.train != split.train
    assert sorted(e["instruction"] for part in shuffled for e in part) == sorted(
        e["instruction"] for e in entries)


def test_load_entries_names_what_is_wrong(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"instruction": "x", "input": ""}]))
    with pytest.raises(ValueError, match="entry 0 lacks the text field.*output"):
        alpaca.load_entries(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        alpaca.load_entries(path)


# ----------------------------------------------------------------------------- collate

BOOK_BATCH = [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]


def test_collate_reproduces_the_books_example():
    inputs, targets = collate(BOOK_BATCH)
    # The book prints exactly these two tensors (listing 7.5 and the output after it).
    assert inputs.dtype == numpy.int64 and targets.dtype == numpy.int64
    numpy.testing.assert_array_equal(inputs, [
        [0, 1, 2, 3, 4],
        [5, 6, 50256, 50256, 50256],
        [7, 8, 9, 50256, 50256],
    ])
    numpy.testing.assert_array_equal(targets, [
        [1, 2, 3, 4, 50256],
        [6, 50256, -100, -100, -100],
        [8, 9, 50256, -100, -100],
    ])


def test_collate_truncates_to_allowed_max_length():
    inputs, targets = collate(BOOK_BATCH, allowed_max_length=3)
    numpy.testing.assert_array_equal(inputs, [[0, 1, 2], [5, 6, 50256], [7, 8, 9]])
    numpy.testing.assert_array_equal(targets, [[1, 2, 3], [6, 50256, -100], [8, 9, 50256]])


def test_collate_custom_pad_and_ignore_index():
    inputs, targets = collate([[3, 4], [5]], pad_token_id=0, ignore_index=-1)
    numpy.testing.assert_array_equal(inputs, [[3, 4], [5, 0]])
    numpy.testing.assert_array_equal(targets, [[4, 0], [0, -1]])


def test_collate_mask_prompt_masks_the_targets_that_predict_prompt_tokens():
    batch = [([0, 1, 2], [3, 4]), ([5], [6]), ([7, 8], [9])]
    inputs, targets = collate(batch, mask_prompt=True)
    # The same sequences as the book's example ...
    numpy.testing.assert_array_equal(inputs, collate(BOOK_BATCH)[0])
    # ... and targets[:len(prompt) - 1] = -100: the first response token is still a target.
    numpy.testing.assert_array_equal(targets, [
        [-100, -100, 3, 4, 50256],
        [6, 50256, -100, -100, -100],
        [-100, 9, 50256, -100, -100],
    ])
    inputs, targets = collate(batch, mask_prompt=True, allowed_max_length=2)
    numpy.testing.assert_array_equal(targets, [[-100, -100], [6, 50256], [-100, 9]])


def test_collate_rejects_bad_batches():
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="pair"):
        collate([[1, 2, 3]], mask_prompt=True)
    with pytest.raises(ValueError, match="allowed_max_length"):
        collate(BOOK_BATCH, allowed_max_length=0)


def test_encode_entries_pairs_split_the_full_text_at_the_prompt():
    enc = gpt2_encoding()
    full = encode_entries(ENTRIES, enc)
    pairs = encode_entries(ENTRIES, enc, mask_prompt=True)
    for entry, ids, (prompt, response) in zip(ENTRIES, full, pairs):
        assert ids == enc.encode(format_input(entry) + format_response(entry))
        assert prompt == enc.encode(format_input(entry))
        assert prompt + response == ids
        assert enc.decode(response) == format_response(entry)


def test_instruction_batches_are_deterministic_shuffled_epochs():
    items = [[i] * (i % 3 + 1) for i in range(10)]
    batches = instruction_batches(items, items[:3], batch_size=3, seed=7)
    assert batches.batches_per_epoch == 3  # the 10th item is dropped each epoch
    first = [batches.train_batch(i) for i in range(3)]
    for i, (x, y) in enumerate(first):
        again = batches.train_batch(i)
        numpy.testing.assert_array_equal(x, again[0])
        numpy.testing.assert_array_equal(y, again[1])
    seen = [int(x[r, 0]) for x, _ in first for r in range(3)]
    assert len(set(seen)) == 9
    epoch2 = [int(x[r, 0]) for i in range(3, 6) for x in [batches.train_batch(i)[0]]
              for r in range(3)]
    assert epoch2 != seen
    evals = batches.eval_batches("val", 5)
    assert len(evals) == 1 and evals[0][0].shape[0] == 3


# ----------------------------------------------------------------------------- end to end

class CompactTokenizer:
    """GPT-2's BPE restricted to the tokens a few texts use, renumbered 0..K-1, so a tiny
    model with a K-word vocabulary can learn them in seconds."""

    def __init__(self, texts):
        self.enc = gpt2_encoding()
        ids = sorted({t for text in texts for t in self.enc.encode(text)} | {50256})
        self.ids, self.index = ids, {g: i for i, g in enumerate(ids)}
        self.eot_token, self.n_vocab = self.index[50256], len(ids)

    def encode(self, text, **kwargs):
        return [self.index[t] for t in self.enc.encode(text, **kwargs)]

    def decode(self, ids):
        return self.enc.decode([self.ids[i] for i in ids])


def _chat_prompt(instruction):
    return format_input({"instruction": instruction, "input": ""}) + RESPONSE_HEADER


@pytest.fixture(scope="module")
def memorised():
    """A 2-layer, 64-dim GPT fine-tuned on ENTRIES until it knows them by heart."""
    texts = [format_input(e) + format_response(e) for e in ENTRIES]
    texts += [_chat_prompt(e["instruction"]) for e in ENTRIES]
    tokenizer = CompactTokenizer(texts)
    tinygpt.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=tokenizer.n_vocab, context_length=128, emb_dim=64,
                               n_heads=4, n_layers=2, drop_rate=0.0))
    items = encode_entries(ENTRIES, tokenizer)
    with _one_numba_thread():
        history, batches = instruct.finetune(
            model, items, items, epochs=100, batch_size=8, lr=3e-3, weight_decay=0.0,
            eval_every=50, pad_token_id=tokenizer.eot_token, log=lambda *a: None,
            progress=False)
    return model.eval(), tokenizer, history, batches


@contextlib.contextmanager
def _one_numba_thread():
    """Run the Numba kernels on one thread for a while. On matrices this small, threads only
    cost: on a 2-core machine, Numba's and OpenBLAS's thread pools taking turns made these
    100 steps about 20 times slower than single-threaded."""
    try:
        import numba
    except ImportError:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def test_finetuned_tiny_model_reproduces_its_training_responses(memorised):
    model, tokenizer, history, batches = memorised
    assert history.step_loss[-1] < 0.1 < history.step_loss[0]
    assert history.val_loss[-1] < 0.1
    summary = instruct.epoch_summary(history, batches.batches_per_epoch)
    assert len(summary) == 100 and summary[-1]["val_loss"] == history.val_loss[-1]
    answers = instruct.generate_responses(model, tokenizer, ENTRIES, max_new_tokens=40,
                                          eos_id=tokenizer.eot_token, progress=False)
    assert [a["model_response"] for a in answers] == [e["output"] for e in ENTRIES]
    assert all(a.items() >= e.items() for a, e in zip(answers, ENTRIES))  # keys kept


def test_chat_streams_the_answer_and_stops(memorised):
    model, tokenizer, _, _ = memorised
    stdin = io.StringIO("Name the capital of France.\n\nWhat is the chemical symbol for gold?\n"
                        "/quit\nnever read\n")
    stdout = io.StringIO()
    answers = instruct.chat(model, tokenizer, stdin=stdin, stdout=stdout, max_new_tokens=40,
                            eos_id=tokenizer.eot_token)
    assert answers == 2
    assert stdout.getvalue() == ("The capital of France is Paris.\n"
                                 "The chemical symbol for gold is Au.\n")


def test_chat_ends_at_end_of_input(memorised):
    model, tokenizer, _, _ = memorised
    stdout = io.StringIO()
    assert instruct.chat(model, tokenizer, stdin=io.StringIO("Name the capital of France."),
                         stdout=stdout, eos_id=tokenizer.eot_token) == 1
    assert stdout.getvalue() == "The capital of France is Paris.\n"


# ----------------------------------------------------------------------------- command line

FINETUNE_COMMANDS = ("finetune-classifier", "classify", "finetune-instruct", "judge", "chat",
                     "finetune-dpo")


@pytest.mark.parametrize("command", FINETUNE_COMMANDS)
def test_every_command_and_option_has_help(command):
    from tinygpt.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(FINETUNE_COMMANDS) <= set(sub.choices)
    for action in sub.choices[command]._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings} has no help"


def test_finetune_instruct_defaults_are_the_books(monkeypatch):
    seen = []
    monkeypatch.setattr(instruct_run, "run_instruction_finetuning", seen.append)
    assert main(["finetune-instruct", "--data", "d.json", "--out", "o"]) == 0
    cfg = seen[0]
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay) == (2, 8, 5e-5, 0.1)
    assert (cfg.allowed_max_length, cfg.mask_prompt, cfg.lora_rank) == (1024, False, 0)
    assert cfg.model == "gpt2-medium"


def test_finetune_instruct_end_to_end(tmp_path, monkeypatch):
    """The run on 20 made-up entries with a minute GPT (GPT-2 vocabulary, 16 dims)."""
    entries = [{"instruction": f"Repeat the number {i}.", "input": "" if i % 2 else str(i),
                "output": f"The number is {i}."} for i in range(20)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries))
    tinygpt.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=16, n_heads=2,
                               n_layers=1, drop_rate=0.0))
    monkeypatch.setattr(instruct_run, "load_base_model", lambda name, seed=0: (model,
                                                                               gpt2_encoding()))
    out = tmp_path / "run"
    cfg = InstructConfig(data=data, model="tiny", out=out, epochs=1, batch_size=4, lr=1e-3,
                         mask_prompt=True, max_new_tokens=3, eval_every=2, eval_iters=1)
    logged = []
    history, responses = run_instruction_finetuning(cfg, log=logged.append)
    assert len(history.step_loss) == 4  # 17 training entries // 4
    assert (out / "checkpoint.safetensors").is_file() and (out / "losses.png").is_file()
    saved = json.loads((out / RESPONSES_FILE).read_text())
    assert saved == responses and len(saved) == 2  # int(0.1 * 20) test entries
    assert all(s.items() >= e.items() for s, e in zip(saved, entries[17:19]))
    assert all(isinstance(s["model_response"], str) for s in saved)
    assert any(line.startswith("epoch 1: mean step loss") for line in logged)
    from tinygpt.checkpoints import model_from_checkpoint

    reloaded = model_from_checkpoint(out / "checkpoint.safetensors")
    numpy.testing.assert_array_equal(reloaded.state_dict()["out_head.weight"],
                                     model.state_dict()["out_head.weight"])


def test_finetune_instruct_with_lora_saves_the_merged_model(tmp_path, monkeypatch):
    entries = [{"instruction": f"Count to {i}.", "input": "", "output": str(list(range(i)))}
               for i in range(12)]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries))
    tinygpt.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=50257, context_length=64, emb_dim=16, n_heads=2,
                               n_layers=1, drop_rate=0.0))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    monkeypatch.setattr(instruct_run, "load_base_model", lambda name, seed=0: (model,
                                                                               gpt2_encoding()))
    out = tmp_path / "lora"
    cfg = InstructConfig(data=data, model="tiny", out=out, epochs=2, batch_size=4, lr=1e-2,
                         lora_rank=2, lora_alpha=4, max_new_tokens=2, num_test=1)
    run_instruction_finetuning(cfg, log=lambda *a: None)
    assert (out / "lora-checkpoint" / "checkpoint.safetensors").is_file()
    merged = tinygpt.load_gpt2(out)  # the merged model, in Hugging Face layout
    state = merged.state_dict()
    assert set(before) <= set(state)  # plain Linear layers again (+ zero qkv biases: GPT-2's
    assert not any("lora" in k for k in state)  # layout always has them)
    numpy.testing.assert_array_equal(state["tok_emb.weight"], before["tok_emb.weight"])
    key = "trf_blocks.0.att.W_query.weight"
    assert not numpy.allclose(state[key], before[key])  # the adapters were folded in
    numpy.testing.assert_allclose(state[key], model.state_dict()[key])
