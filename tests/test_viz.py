"""tinygpt.viz: the DOT text names every op with its output shape, names leaves, groups a GPT
by module; draw() renders with Graphviz or falls back to the .dot file."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import tinygpt
import tinygpt.functional as F
from tinygpt import viz
from tinygpt.nn import GPTModel

NODE = re.compile(r'^\s*(n\d+) \[label="([^"]*)", shape=(\w+)\];$', re.M)


def nodes(dot):
    """{node id: (label lines, shape)} parsed from DOT text."""
    return {nid: (label.split("\\n"), shape) for nid, label, shape in NODE.findall(dot)}


def small_expression():
    x = tinygpt.tensor(np.ones((2, 3)), requires_grad=True)
    w = tinygpt.tensor(np.full((3, 1), 0.5), requires_grad=True)
    b = tinygpt.tensor([0.25], requires_grad=True)
    loss = ((x @ w).tanh() * 2.0 + b).sum()
    return loss, {"x": x, "w": w, "b": b}


def tiny_gpt():
    cfg = tinygpt.GPTConfig(vocab_size=11, context_length=8, emb_dim=8, n_heads=2, n_layers=2,
                            drop_rate=0.0, qkv_bias=False)
    model = GPTModel(cfg)
    loss = F.cross_entropy(model(np.array([[1, 2, 3, 4]])), np.array([[2, 3, 4, 5]]))
    return model, loss


def test_every_op_of_a_small_expression_with_its_shape():
    loss, names = small_expression()
    found = nodes(viz.to_dot(loss, names=names))
    ops = sorted((label[0], label[1]) for label, shape in found.values() if shape == "box")
    assert ops == [("add", "(2, 1)"), ("matmul", "(2, 1)"), ("mul", "(2, 1)"),
                   ("sum", "()"), ("tanh", "(2, 1)")]
    leaves = sorted(label[0] for label, shape in found.values() if shape == "ellipse")
    assert leaves == ["2", "b", "w", "x"]  # the constant 2.0 is shown by its value
    assert len(re.findall(r"n\d+ -> n\d+;", viz.to_dot(loss))) == 8  # 2+1+2+2+1 inputs


def test_gradient_norms_of_leaves_after_backward():
    loss, names = small_expression()
    loss.backward(retain_graph=True)
    found = nodes(viz.to_dot(loss, names=names, grads=True))
    labels = {label[0]: label for label, _ in found.values()}
    for name, t in names.items():
        assert labels[name][2] == f"|grad| {np.linalg.norm(t.grad):.3g}"


def test_a_freed_graph_is_a_clear_error():
    loss, _ = small_expression()
    loss.backward()
    with pytest.raises(ValueError, match=r"retain_graph=True"):
        viz.to_dot(loss)


def cluster_body(dot, label):
    """The text of the cluster labelled ``label``, up to its closing brace."""
    start = dot.index(f'label="{label}";')
    depth, i = 1, start
    while depth:
        i += 1
        depth += {"{": 1, "}": -1}.get(dot[i], 0)
    return dot[start:i]


def test_a_gpt_is_grouped_by_module_and_parameters_are_named():
    model, loss = tiny_gpt()
    dot = viz.to_dot(loss, model=model)
    labels = [label[0] for label, _ in nodes(dot).values()]
    assert sorted(name for name in labels if "." in name) == sorted(
        name for name, _ in model.named_parameters())
    for i in range(2):
        att = cluster_body(dot, f"trf_blocks.{i}.att")
        assert "attention\\n(1, 2, 4, 4)" in att and f"trf_blocks.{i}.att.W_query.weight" in att
        ff = cluster_body(dot, f"trf_blocks.{i}.ff")
        assert "gelu\\n(1, 4, 32)" in ff and "attention" not in ff
    assert "cross_entropy" not in cluster_body(dot, "GPTModel")  # the loss is outside


def test_draw_falls_back_to_dot_with_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no Graphviz dot program
    loss, names = small_expression()
    written = viz.draw(loss, tmp_path / "graph.svg", names=names)
    assert written == tmp_path / "graph.dot" and not (tmp_path / "graph.svg").exists()
    assert written.read_text() == viz.to_dot(loss, names=names)
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and f"dot -Tsvg {written} -o {tmp_path / 'graph.svg'}" in out


def test_draw_rejects_unknown_formats(tmp_path):
    loss, _ = small_expression()
    with pytest.raises(ValueError, match=r"graph.jpg should end in .svg, .png, .pdf or .dot"):
        viz.draw(loss, tmp_path / "graph.jpg")


def test_draw_renders_svg_with_graphviz(tmp_path):
    pytest.importorskip("graphviz", reason="the [viz] extra (graphviz package) is not installed")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed")
    loss, names = small_expression()
    written = viz.draw(loss, tmp_path / "graph.svg", names=names)
    svg = written.read_text()
    assert written == tmp_path / "graph.svg" and svg.lstrip().startswith("<?xml")
    assert svg.count("<g id=\"node") == 9 and ">matmul</text>" in svg
