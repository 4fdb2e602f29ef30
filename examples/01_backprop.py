"""Backpropagation by hand and by tinygpt: micrograd's walkthrough, on tensors.

    python examples/01_backprop.py

1. a small expression, L = (a*b + c) * f, and a neuron, o = tanh(x1*w1 + x2*w2 + b):
   every node's value and gradient dL/dnode, printed with its name, next to the chain rule
   worked out by hand;
2. a tiny two-layer network on four points (float64): its parameter gradients, checked
   against finite differences with tinygpt.gradcheck;
3. a few steps of plain gradient descent, the loss going down.

Everything is deterministic (tinygpt.manual_seed), and takes about a second.
"""

import argparse

import numpy as np

import tinygpt
import tinygpt.functional as F

# The walkthrough takes no options; --help says what it does, like every other example.
argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                        epilog="Run it as it is: python examples/01_backprop.py").parse_args()


def scalar(value, name):
    """A float64 leaf that wants a gradient; ``nodes`` remembers it under ``name``."""
    t = tinygpt.tensor(value, dtype="float64", requires_grad=True)
    nodes[name] = (t, t)  # (the node, the leaf whose .grad is dL/dnode)
    return t


def probe(t, name):
    """Make the gradient of an intermediate node visible.

    tinygpt, like PyTorch, stores .grad only on leaves. Adding a leaf that is zero changes no
    value, and since d(t + z)/dz = 1, that leaf's gradient is exactly dL/dt.
    """
    zero = tinygpt.tensor(0.0, dtype="float64", requires_grad=True)
    nodes[name] = (t, zero)
    return t + zero


def grad(name):
    return float(nodes[name][1].grad)


def show(out_name, out):
    """Print every node and its gradient; the output's own gradient is 1: backward starts
    there."""
    print("   backward() gives:")
    for name, (node, _) in nodes.items():
        print(f"  {name:>4} = {node.item():8.4f}    d{out_name}/d{name} = {grad(name):8.4f}")
    print(f"  {out_name:>4} = {out.item():8.4f}    d{out_name}/d{out_name} = {1.0:8.4f}")


# ----------------------------------------------------------------------------- 1. expressions

print("1. A small expression: L = (a*b + c) * f")
nodes = {}
a, b, c, f = scalar(2.0, "a"), scalar(-3.0, "b"), scalar(10.0, "c"), scalar(-2.0, "f")
e = probe(a * b, "e")  # e = a*b = -6
d = probe(e + c, "d")  # d = e + c = 4
L = d * f  # L = -8
L.backward()  # one walk from L back to the leaves, in reverse topological order
show("L", L)
# The chain rule by hand: dL/dd = f, dL/df = d; '+' passes the gradient on unchanged, so
# dL/de = dL/dc = dL/dd; '*' swaps its inputs: dL/da = dL/de * b, dL/db = dL/de * a.
assert (grad("d"), grad("f")) == (f.item(), d.item())
assert grad("e") == grad("c") == grad("d")
assert (grad("a"), grad("b")) == (grad("e") * b.item(), grad("e") * a.item()) == (6.0, -4.0)

print("\n   A neuron: o = tanh(x1*w1 + x2*w2 + b)")
nodes = {}
x1, x2 = scalar(2.0, "x1"), scalar(0.0, "x2")
w1, w2 = scalar(-3.0, "w1"), scalar(1.0, "w2")
bias = scalar(6.8813735870195432, "b")  # chosen so that o = tanh(0.8814) = 0.7071
n = probe(x1 * w1 + x2 * w2 + bias, "n")
o = n.tanh()
o.backward()
show("o", o)
# d tanh(n)/dn = 1 - tanh(n)^2 = 1 - 0.5 = 0.5; then '*' swaps: dL/dw1 = 0.5 * x1 = 1.0,
# and dL/dw2 = 0.5 * x2 = 0: an input of zero gives its weight no gradient.
assert abs(grad("n") - 0.5) < 1e-12 and abs(grad("w1") - 1.0) < 1e-12 and grad("w2") == 0

print("\n   relu, and a tensor used more than once (its gradients add up):")
x = tinygpt.tensor([-1.0, 0.5, 2.0], dtype="float64", requires_grad=True)
y = (x * x + x).relu().sum()  # x appears twice in x*x (and once more in + x)
y.backward()
print(f"   x = {x.numpy()},  y = sum(relu(x^2 + x)) = {y.item():.4f}")
print(f"   dy/dx = {x.grad}   (2x + 1 where x^2 + x > 0, else 0)")
np.testing.assert_allclose(x.grad, np.where(x.numpy() ** 2 + x.numpy() > 0, 2 * x.numpy() + 1, 0))

# ----------------------------------------------------------------------------- 2. a network

print("\n2. A two-layer network on four points (3 inputs -> 4 tanh units -> 1 tanh output)")
xs = tinygpt.tensor([[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]],
                    dtype="float64")
ys = tinygpt.tensor([1.0, -1.0, -1.0, 1.0], dtype="float64")  # the targets

tinygpt.manual_seed(1)
params = {  # weights are (out_features, in_features), as in PyTorch's nn.Linear
    "W1": tinygpt.randn(4, 3, dtype="float64", requires_grad=True),
    "b1": tinygpt.zeros(4, dtype="float64", requires_grad=True),
    "W2": tinygpt.randn(1, 4, dtype="float64", requires_grad=True),
    "b2": tinygpt.zeros(1, dtype="float64", requires_grad=True),
}


def loss_fn(W1, b1, W2, b2):
    """Mean squared error of the network's predictions on the four points."""
    hidden = F.linear(xs, W1, b1).tanh()  # (4, 4)
    pred = F.linear(hidden, W2, b2).tanh().reshape(4)  # (4,)
    return ((pred - ys) ** 2).mean()


loss = loss_fn(*params.values())
loss.backward()
print(f"   loss = {loss.item():.6f}; backward() filled every parameter's .grad:")
for name, p in params.items():
    rows = np.array2string(p.grad, precision=4, suppress_small=True).splitlines()
    print(f"   d loss / d {name} {str(p.shape):6} = " + "\n".join(
        [rows[0]] + [" " * 26 + r for r in rows[1:]]))

# gradcheck nudges every parameter element by +-1e-6, re-evaluates the loss and compares
# (L(p + eps) - L(p - eps)) / (2 eps) with what backward() gave; it raises if they differ.
tinygpt.gradcheck(loss_fn, list(params.values()))
print("   gradcheck: backward() agrees with finite differences for all 25 parameters")

# ----------------------------------------------------------------------------- 3. descent

print("\n3. Gradient descent: p <- p - lr * dloss/dp")
lr = 0.2
losses = []
for step in range(30):
    for p in params.values():
        p.grad = None  # gradients accumulate across backward() calls: reset them each step
    loss = loss_fn(*params.values())
    loss.backward()
    with tinygpt.no_grad():  # the update itself is not part of any graph
        for p in params.values():
            p.data -= lr * p.grad
    losses.append(loss.item())
    if step % 5 == 0 or step == 29:
        print(f"   step {step:2d}: loss {loss.item():.6f}")

with tinygpt.no_grad():
    final = loss_fn(*params.values()).item()
print(f"   after 30 steps: loss {final:.6f} (from {losses[0]:.6f})")
assert final < losses[0] / 2, "the loss should have gone down"
