"""Instruction fine-tuning (the book's chapter 7): teach a GPT to answer in the Alpaca format.

    prompt format, data files, split        tinygpt.finetune.alpaca (format_input, ...)
    token ids and padded batches            data.encode_entries, data.collate
    training (tinygpt.train's loop)         training.finetune
    test responses, chat                    responses.generate_responses, responses.chat
    the whole run                           run.run_instruction_finetuning

The texts are padded into batches by ``collate`` (the book's custom_collate_fn: padding with
<|endoftext|>, targets shifted by one, every padding target after the first set to -100 so
the loss skips it) and trained at the book's settings: AdamW, learning rate 5e-5, weight
decay 0.1, two epochs, batch size 8. Then the model answers each test instruction greedily
and the answers are written beside the test entries (key ``model_response``), ready for an
LLM judge (``tinygpt.finetune.judge``). With ``mask_prompt=True`` (the book's exercise 7.2)
the loss covers the response tokens only.
"""

from tinygpt.finetune.alpaca import format_input, format_response
from tinygpt.finetune.instruct.data import collate, encode_entries
from tinygpt.finetune.instruct.responses import chat, generate_responses, respond
from tinygpt.finetune.instruct.run import InstructConfig, run_instruction_finetuning
from tinygpt.finetune.instruct.training import epoch_summary, finetune

__all__ = ["InstructConfig", "chat", "collate", "encode_entries", "epoch_summary", "finetune",
           "format_input", "format_response", "generate_responses", "respond",
           "run_instruction_finetuning"]
