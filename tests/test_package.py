"""What ``import tinygpt`` loads: the engine and the model, nothing above them."""

import ast
import subprocess
import sys
from pathlib import Path

import tinygpt

HEAVY = ("safetensors", "huggingface_hub", "matplotlib", "tqdm", "tiktoken")


def test_import_tinygpt_loads_no_io_or_task_libraries():
    """issue 9's check, in a fresh interpreter."""
    code = ("import tinygpt, sys; print(sorted(m for m in sys.modules "
            f"if m.startswith({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_lazy_names_are_the_functions_of_their_modules():
    from tinygpt import checkpoints, generation, weights

    assert tinygpt.generate is generation.generate
    assert tinygpt.load_gpt2 is checkpoints.load_gpt2
    assert tinygpt.save_pretrained is weights.save_pretrained
    assert "generate" in dir(tinygpt)
    assert isinstance(tinygpt.GPTModel(tinygpt.GPTConfig(
        vocab_size=5, context_length=4, emb_dim=8, n_heads=2, n_layers=1)), tinygpt.nn.Module)


def test_tensor_does_not_import_functional():
    """functional.py builds on tensor.py, so tensor.py must not import it back, not even
    inside a function (the cycle Tensor.softmax used to make)."""
    tree = ast.parse(Path(tinygpt.__file__).with_name("tensor.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            imported |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    assert not any("functional" in name for name in imported), imported
