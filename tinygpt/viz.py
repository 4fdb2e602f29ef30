"""Draw the graph behind a tensor: ``to_dot`` gives Graphviz DOT text, ``draw`` a picture.

    loss = F.cross_entropy(model(x), y)
    tinygpt.viz.draw(loss, "graph.svg", model=model)

Every op is one box with its name and output shape; the leaves (inputs, parameters,
constants) are ellipses, named when their name is known: ``model=`` names every parameter as
``named_parameters()`` does (``trf_blocks.0.att.W_query.weight``) and ``names=`` names any
tensor. Ops created inside a ``Module`` call are drawn inside a box labelled with that module
(its path in ``model``, else its class), nested as the modules are, so a GPT block reads as
norm1 → att → add → norm2 → ff → add. After ``backward(retain_graph=True)``, ``grads=True``
adds each leaf's gradient norm.

``draw`` renders through the ``graphviz`` Python package and Graphviz's ``dot`` program
(``pip install "tinygpt[viz]"`` and e.g. ``apt install graphviz``); without them it writes the
.dot file and says how to render it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy

from tinygpt import backend
from tinygpt.fileio import atomic_write, atomic_write_text
from tinygpt.tensor import Tensor, _graph_freed

FORMATS = ("svg", "png", "pdf")


def to_dot(tensor: Tensor, model=None, names=None, grads=False, rankdir="TB") -> str:
    """DOT text of the graph that computed ``tensor``.

    model: a Module whose parameter names label its parameters and whose module paths label
    the clusters; names: {name: Tensor} for other leaves; grads: add leaf gradient norms.
    """
    nodes = graph_nodes(tensor)
    leaf_names = _leaf_names(model, names)
    module_paths = {id(m): path for path, m in model.named_modules()} if model else {}
    ids = {id(node): f"n{i}" for i, node in enumerate(nodes)}

    root = _Cluster(None)  # ops outside any module call
    placed = {}  # id(op node) -> its cluster
    for node in nodes:  # ops first: they make the clusters the leaves go into
        if node._op:
            placed[id(node)] = _cluster_of_call(root, node._scope)
    by_path = {module_paths[id(c.module)]: c for c in root.walk() if id(c.module) in module_paths}
    # the first op that uses each tensor (walking backwards, the earliest is written last)
    first_use = {id(p): node for node in reversed(nodes) for p in node._parents}
    for node in nodes:
        if not node._op:
            placed[id(node)] = _leaf_cluster(node, root, leaf_names, by_path, first_use, placed)
    for node in nodes:
        label, shape = _node_label(node, leaf_names, grads)
        placed[id(node)].lines.append(f'{ids[id(node)]} [label="{label}", shape={shape}];')

    edges = [f"{ids[id(parent)]} -> {ids[id(node)]};" for node in nodes
             for parent in node._parents]
    body = root.render(module_paths, indent="  ")
    return "\n".join(["digraph tinygpt {", f"  rankdir={rankdir};",
                      '  node [fontname="Helvetica", fontsize=10];',
                      *body, *("  " + e for e in edges), "}"]) + "\n"


def draw(tensor: Tensor, path, **to_dot_options) -> Path:
    """Write the graph of ``tensor`` to ``path`` (.svg, .png, .pdf or .dot); return the path
    written, which is the .dot file beside ``path`` when Graphviz is not installed."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS + ("dot",):
        raise ValueError(f"draw: {path} should end in .svg, .png, .pdf or .dot")
    dot_text = to_dot(tensor, **to_dot_options)
    if fmt == "dot":
        return atomic_write_text(path, dot_text)
    graphviz = _graphviz_or_none()
    if graphviz is None:
        dot_path = atomic_write_text(path.with_suffix(".dot"), dot_text)
        print(f"wrote {dot_path}: for {fmt.upper()} install Graphviz (`pip install graphviz` and "
              f"its `dot` program), or run `dot -T{fmt} {dot_path} -o {path}`")
        return dot_path
    image = graphviz.Source(dot_text).pipe(format=fmt)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(image))


def _graphviz_or_none():
    """The graphviz package if it and the dot program are both installed, else None."""
    try:
        import graphviz
    except ImportError:
        return None
    return graphviz if shutil.which("dot") else None


# ----------------------------------------------------------------------------- the graph

def graph_nodes(tensor) -> list[Tensor]:
    """Every tensor in the graph behind ``tensor``, each after its parents (iterative DFS):
    the ops (``t._op`` names them) and the leaves."""
    if tensor._backward is _graph_freed:
        raise ValueError("backward() has freed the graph behind this tensor; call "
                         "backward(retain_graph=True) to look at it after backward")
    order, seen, stack = [], set(), [(tensor, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
        elif id(node) not in seen:
            seen.add(id(node))
            stack.append((node, True))
            stack.extend((p, False) for p in node._parents if id(p) not in seen)
    return order


def _leaf_names(model, names):
    """{id(tensor): name} from a model's parameters and an explicit {name: tensor} dict."""
    found = {id(p): name for name, p in model.named_parameters()} if model else {}
    found.update({id(t): name for name, t in (names or {}).items()})
    return found


def _node_label(node, leaf_names, grads):
    """(label, Graphviz shape): ops are boxes, leaves ellipses."""
    shape = str(tuple(node.shape))
    if node._op:
        return f"{node._op}\\n{shape}", "box"
    name = leaf_names.get(id(node))
    if name is None:
        if node.requires_grad:
            name = "input"
        else:  # a constant: show a single number itself
            name = f"{node.item():.4g}" if node.size == 1 else "constant"
    label = f"{name}\\n{shape}"
    if grads and node.grad is not None:
        norm = float(numpy.linalg.norm(backend.move(node.grad, "numpy")))
        label += f"\\n|grad| {norm:.3g}"
    return label, "ellipse"


# ----------------------------------------------------------------------------- modules

class _Cluster:
    """One Module call in the drawing: its node lines and the calls nested inside it."""

    def __init__(self, module):
        self.module, self.lines, self.children = module, [], {}

    def walk(self):
        """This cluster and every cluster inside it."""
        yield self
        for child in self.children.values():
            yield from child.walk()

    def render(self, module_paths, indent):
        out = [indent + line for line in self.lines]
        for key, child in self.children.items():
            label = module_paths.get(id(child.module)) or type(child.module).__name__
            out.append(f"{indent}subgraph cluster_{key} {{")
            out.append(f'{indent}  label="{label}"; style=rounded; color=gray60;')
            out.extend(child.render(module_paths, indent + "  "))
            out.append(f"{indent}}}")
        return out


def _cluster_of_call(root, scope):
    """The cluster of a module call. ``scope`` is the chain the op recorded (see tensor.py):
    (innermost module, (its caller, (...))). Each call is its own cluster, so a module
    called twice is drawn twice."""
    chain = []
    while scope is not None:
        chain.append(scope)
        scope = scope[1]
    cluster = root
    for frame in reversed(chain):  # outermost call first
        key = f"{id(frame):x}"  # one call of one module
        if key not in cluster.children:
            cluster.children[key] = _Cluster(frame[0])
        cluster = cluster.children[key]
    return cluster


def _leaf_cluster(leaf, root, leaf_names, by_path, first_use, placed):
    """Where a leaf is drawn: a named parameter in its module's cluster, a constant beside
    the op that uses it, anything else (inputs) at the top."""
    name = leaf_names.get(id(leaf))
    if name is not None:
        return by_path.get(name.rpartition(".")[0], root)
    user = first_use.get(id(leaf))
    if user is not None and not leaf.requires_grad:
        return placed[id(user)]
    return root
