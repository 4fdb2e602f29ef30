"""The NumPy/CuPy switch, proved on a machine without a GPU by a fake CuPy.

The fake is an array module built on NumPy whose arrays refuse to become NumPy arrays
implicitly, as CuPy's do: ``numpy.asarray(a)``, ``numpy.exp(a)``, ``numpy.sum(a)`` and
``a + numpy_array`` all raise TypeError. Its own functions (``fake.exp``, ``fake.where``,
``a.sum()``) unwrap, call NumPy and wrap the result again. A network run forward and backward
on the fake therefore proves that the engine reaches the array module only through
``backend.xp()``; any stray ``numpy.something(tensor.data)`` fails. With the kernels in
reference mode on both sides, the fake run does the very same NumPy arithmetic, so its loss
and gradients must equal the NumPy run's exactly.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import tinygpt
import tinygpt.functional as F
from tinygpt import Tensor, backend, kernels

# ----------------------------------------------------------------------------- the fake CuPy

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly.")  # CuPy's own message


def _wrap(obj):
    """NumPy results become fake device arrays (0-d arrays for NumPy scalars, as CuPy)."""
    if isinstance(obj, np.ndarray):
        return FakeArray(obj)
    if isinstance(obj, np.generic):
        return FakeArray(np.asarray(obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_wrap(o) for o in obj)
    return obj


def _unwrap(obj):
    """Fake arrays become their NumPy array; a real NumPy array here is a host/device mix-up."""
    if isinstance(obj, FakeArray):
        return obj._a
    if isinstance(obj, np.ndarray):
        raise TypeError(f"fake cupy: got a numpy.ndarray {obj.shape} where a device array was "
                        "expected; move it with the backend's asarray()")
    if isinstance(obj, (tuple, list)):
        return type(obj)(_unwrap(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    return obj


class FakeArray:
    """A stand-in for cupy.ndarray: holds a NumPy array, never hands it to NumPy implicitly.

    It wraps an ndarray rather than subclassing one: ``numpy.asarray`` on an ndarray subclass
    returns a base-class view without ever calling ``__array__``, so a subclass could not
    refuse it. A wrapper with no buffer and no ``__array_interface__`` can.
    """

    __slots__ = ("_a",)
    __array_ufunc__ = None  # numpy.exp(a), ndarray + a: TypeError / defer to our operators
    __hash__ = None

    def __init__(self, array):
        assert isinstance(array, np.ndarray) and not isinstance(array, FakeArray)
        self._a = array

    def __array__(self, dtype=None, copy=None):  # numpy.asarray(a), numpy.array(a)
        raise TypeError(IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):  # numpy.sum(a), numpy.where(...)
        raise TypeError(f"numpy.{func.__name__}() was called on a (fake) CuPy array; engine "
                        "code must use backend.xp()")

    def get(self):
        """Copy to the host, as cupy.ndarray.get()."""
        return self._a.copy()

    def __getattr__(self, name):  # shape, dtype, sum, reshape, astype, T, item, ...
        if name.startswith("__"):  # no __array_interface__ or __array_struct__ leaks
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *args, **kwargs: _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))
        return _wrap(attr)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        return bool(self._a)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __repr__(self):
        return f"FakeArray({self._a!r})"


def _operator(name):
    def method(self, *args):
        result = getattr(self._a, name)(*_unwrap(args))
        if name.startswith("__i") and name not in ("__invert__", "__index__"):
            return self  # in-place: self._a was changed
        return _wrap(result)

    method.__name__ = name
    return method


for _name in ("add sub mul truediv floordiv mod pow matmul and or xor lt le gt ge eq ne "
              "lshift rshift radd rsub rmul rtruediv rfloordiv rmod rpow rmatmul rand ror rxor "
              "iadd isub imul itruediv ipow neg pos abs invert").split():
    setattr(FakeArray, f"__{_name}__", _operator(f"__{_name}__"))


class _Wrapped:
    """A NumPy function or ufunc whose arguments and results cross the fake device boundary
    (``fake.add.at(...)`` works through __getattr__)."""

    def __init__(self, fn):
        self._fn = fn

    def __call__(self, *args, **kwargs):
        return _wrap(self._fn(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):
        attr = getattr(self._fn, name)
        return _Wrapped(attr) if callable(attr) else attr


class FakeCuPy(types.ModuleType):
    """``import cupy`` on a machine without a GPU: NumPy underneath, strict at the edges."""

    ndarray = FakeArray

    def __init__(self):
        super().__init__("fake_cupy")
        self.random = types.SimpleNamespace(
            default_rng=lambda seed=None: _Wrapped(np.random.default_rng(seed)))

    def __getattr__(self, name):
        attr = getattr(np, name)
        if name.startswith("_") or isinstance(attr, type) or not callable(attr):
            return attr  # dtypes (float32, bool_), constants (inf, nan, newaxis)
        return _Wrapped(attr)

    @staticmethod
    def asarray(obj, dtype=None):
        """Host data (NumPy arrays, lists, numbers) -> a device array; copies, as CuPy."""
        if isinstance(obj, FakeArray):
            return obj if dtype is None else _wrap(obj._a.astype(dtype, copy=False))
        return FakeArray(np.array(obj, dtype=dtype, copy=True))

    array = asarray

    @staticmethod
    def asnumpy(array):
        return array.get()


@pytest.fixture
def fake_cupy(monkeypatch):
    """The fake registered as 'cupy' (in a copy of the registry, restored afterwards)."""
    monkeypatch.setattr(backend, "_backends", dict(backend._backends))
    fake = FakeCuPy()
    backend.register_backend("cupy", fake, FakeArray)
    return fake


def test_the_fake_is_strict(fake_cupy):
    """Each way engine code could slip a device array into NumPy raises, as with CuPy."""
    a = fake_cupy.asarray([1.0, 2.0, 3.0])
    for leak in (lambda: np.asarray(a), lambda: np.array(a), lambda: np.exp(a),
                 lambda: np.sum(a), lambda: np.where(a > 1, a, 0), lambda: np.ones(3) + a,
                 lambda: a + np.ones(3), lambda: np.concatenate([a, a]), lambda: a[np.array([0])],
                 lambda: np.broadcast_to(a, (2, 3))):
        with pytest.raises(TypeError):
            leak()
    # ... while its own module and methods work and stay on the device
    assert isinstance(fake_cupy.exp(a), FakeArray) and isinstance(a.sum(), FakeArray)
    assert float(a.sum()) == 6.0 and a.shape == (3,) and a.dtype == np.float64
    np.testing.assert_array_equal(fake_cupy.asnumpy(fake_cupy.where(a > 1, a, 0)), [0, 2, 3])


# ----------------------------------------------------------------------------- same results

B, T, C, H, V = 2, 5, 8, 2, 7


def network_parameters(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"emb": (V, C), "pos": (T, C), "w1": (C, C), "b1": (C,), "ln_w": (C,),
              "ln_b": (C,), "wqkv": (3 * C, C), "w2": (V, 2 * C), "b2": (V,)}
    params = {name: rng.standard_normal(shape) * 0.5 for name, shape in shapes.items()}
    ids = rng.integers(0, V, size=(B, T))
    targets = rng.integers(0, V, size=(B, T))
    targets[0, 1] = targets[1, 3] = -100
    return params, ids, targets


def run_network(name, params, ids, targets, dtype="float64"):
    """Two layers with softmax-weighted mixing and multi-head attention, forward + backward,
    on backend ``name``; returns the loss and the gradients as NumPy arrays."""
    backend.set_backend(name)
    tinygpt.manual_seed(0)  # the same dropout masks on both backends
    p = {k: tinygpt.tensor(v, dtype=dtype, requires_grad=True) for k, v in params.items()}
    assert all(t.device == name for t in p.values())

    x = F.embedding(ids, p["emb"]) + p["pos"][tinygpt.arange(T)]
    h = F.layer_norm(F.gelu(F.linear(x, p["w1"], p["b1"])), p["ln_w"], p["ln_b"])
    h = F.dropout(h, 0.2, training=True)
    scores = (h @ h.transpose(-1, -2)) * (1.0 / math.sqrt(C))  # (B, T, T)
    future = tinygpt.tensor(np.triu(np.ones((T, T), dtype=bool), k=1))
    mix = F.softmax(scores.masked_fill(future, -np.inf), axis=-1) @ h  # (B, T, C)

    q, k, v = F.linear(mix, p["wqkv"]).split(3, axis=-1)
    heads = [t.reshape(B, T, H, C // H).transpose(1, 2) for t in (q, k, v)]
    att = F.scaled_dot_product_attention(*heads, causal=True)
    att = att.transpose(1, 2).reshape(B, T, C)
    logits = F.linear(tinygpt.concatenate([att, mix], axis=-1), p["w2"], p["b2"])

    loss = F.cross_entropy(logits, targets)
    # a few more ops on the way, so that every kind of primitive runs on the device
    every_third = tinygpt.tensor(np.arange(C) % 3 == 0)  # index arrays live there too
    extra = (F.log_softmax(logits, axis=0).max(axis=-1).mean() * 0.01
             + logits.var(axis=-1).sqrt().mean() * 0.01
             + tinygpt.where(logits > 0, logits, logits.exp() - 1.0).tanh().sum() * 0.001
             + tinygpt.stack([p["b1"], p["ln_b"]])[:, every_third].abs().sum() * 0.1
             + (p["ln_w"] ** 2).sum() * 0.01
             + (F.embedding(ids[0], p["emb"]) / 2.0).log_softmax().sum() * 1e-3)
    total = loss + extra
    total.backward()
    assert total.device == name
    assert all(type(t.grad) is backend.get(name).array_type for t in p.values())
    grads = {k: backend.move(t.grad, "numpy") for k, t in p.items()}
    return loss.item(), total.item(), grads


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_network_on_fake_cupy_equals_numpy(fake_cupy, dtype):
    params, ids, targets = network_parameters()
    with kernels.using("reference"):
        expected = run_network("numpy", params, ids, targets, dtype)
    backend.set_backend("cupy")
    assert kernels.impl() is kernels.reference  # the fake runs the reference kernels by itself
    got = run_network("cupy", params, ids, targets, dtype)
    assert got[:2] == expected[:2]
    for name, grad in expected[2].items():
        assert got[2][name].dtype == dtype
        np.testing.assert_array_equal(got[2][name], grad, err_msg=name)
    assert np.isfinite(got[0]) and all(np.abs(g).sum() > 0 for g in got[2].values())

    if dtype == "float64":  # and the NumPy backend's Numba kernels give the same numbers
        fast = run_network("numpy", params, ids, targets, dtype)
        np.testing.assert_allclose(fast[:2], got[:2], rtol=1e-12)
        for name, grad in fast[2].items():
            np.testing.assert_allclose(got[2][name], grad, rtol=1e-10, atol=1e-13,
                                       err_msg=name)


def test_gradcheck_runs_on_fake_cupy(fake_cupy):
    backend.set_backend("cupy")
    rng = np.random.default_rng(0)
    a, b = Tensor(rng.standard_normal((3, 4))), Tensor(rng.standard_normal((4, 2)))
    assert a.device == "cupy"
    assert tinygpt.gradcheck(lambda x, y: F.softmax(x @ y, axis=0).log().sum(axis=1), [a, b])
    q, k, v = (Tensor(rng.standard_normal((1, 2, 6, 4))) for _ in range(3))
    assert tinygpt.gradcheck(F.scaled_dot_product_attention, [q, k, v], directional=True)
    logits = Tensor(rng.standard_normal((4, 5)))
    assert tinygpt.gradcheck(lambda t: F.cross_entropy(t, [1, -100, 4, 0]), [logits])
    with pytest.raises(tinygpt.GradcheckError, match="finite differences"):
        tinygpt.gradcheck(lambda x: x.tanh() + Tensor(x.data * x.data), [a])  # hidden x^2


def test_tensors_are_created_on_the_active_backend(fake_cupy):
    backend.set_backend("cupy")
    for t in (tinygpt.tensor([1.0, 2.0]), tinygpt.zeros(2, 3), tinygpt.ones(3),
              tinygpt.randn(2, 2), tinygpt.arange(4), tinygpt.tensor(np.zeros(3))):
        assert isinstance(t.data, FakeArray) and t.device == "cupy"
    assert tinygpt.tensor([1.0]).dtype == np.float32
    assert isinstance(tinygpt.tensor([[1.5]]).numpy(), np.ndarray)
    assert tinygpt.tensor([[1.5]]).item() == 1.5
    tinygpt.manual_seed(3)
    first = tinygpt.randn(4).numpy()
    tinygpt.manual_seed(3)
    np.testing.assert_array_equal(tinygpt.randn(4).numpy(), first)


def test_to_round_trip(fake_cupy):
    host = tinygpt.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    device = host.to("cupy")
    assert isinstance(device.data, FakeArray) and device.device == "cupy"
    assert device.requires_grad and device.dtype == np.float64
    back = device.to("numpy")
    assert type(back.data) is np.ndarray and back.device == "numpy"
    np.testing.assert_array_equal(back.numpy(), host.numpy())
    np.testing.assert_array_equal(device.numpy(), host.numpy())
    assert host.to("numpy").data is host.data  # already there: no copy
    backend.set_backend("cupy")  # ops run on the active backend's array module
    (device * device).sum().backward()  # the copy is a leaf of its own graph
    assert isinstance(device.grad, FakeArray) and host.grad is None
    np.testing.assert_array_equal(fake_cupy.asnumpy(device.grad), 2 * host.numpy())


def test_mixing_backends_in_one_op_raises(fake_cupy):
    host = tinygpt.tensor([[1.0, 2.0]])
    device = tinygpt.tensor([[3.0, 4.0]]).to("cupy")
    for mix in (lambda: host + device, lambda: device * host, lambda: host - device,
                lambda: device / host, lambda: host @ device.T, lambda: device ** host,
                lambda: tinygpt.concatenate([host, device]), lambda: tinygpt.stack([device, host]),
                lambda: tinygpt.where(host > 1, host, device)):
        with pytest.raises(TypeError, match="different backends"):
            mix()
    weight = tinygpt.tensor([[1.0, 2.0]])
    for mix in (lambda: F.linear(host, device), lambda: F.linear(host, weight, device[0]),
                lambda: F.layer_norm(device, weight[0], weight[0]),
                lambda: F.scaled_dot_product_attention(host[None], device[None], host[None])):
        with pytest.raises(TypeError, match="different backends"):
            mix()


def test_cupy_missing_gives_install_hint(monkeypatch):
    monkeypatch.setattr(backend, "_backends", dict(backend._backends))
    backend._backends.pop("cupy", None)
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install .*\[gpu\]"):
        backend.set_backend("cupy")
    assert backend.active().name == "numpy"


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'tpu'.*numpy"):
        backend.set_backend("tpu")
    assert backend.active().name == "numpy"


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_tinygpt_backend_environment_variable():
    code = "import tinygpt; print(tinygpt.backend.active().name, tinygpt.tensor([1.0]).device)"
    ok = _python(code, TINYGPT_BACKEND="numpy")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["numpy", "numpy"]

    bad = _python(code, TINYGPT_BACKEND="bogus")
    assert bad.returncode != 0
    assert "ValueError: unknown backend 'bogus'" in bad.stderr


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed")
def test_tinygpt_backend_cupy_without_cupy():
    result = _python("import tinygpt", TINYGPT_BACKEND="cupy")
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr and "pip install" in result.stderr


# ----------------------------------------------------------------------------- real CuPy

def _real_cupy_works():
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(not _real_cupy_works(), reason="needs CuPy and a CUDA GPU")
def test_network_on_real_cupy_matches_numpy():
    params, ids, targets = network_parameters()
    with kernels.using("reference"):
        expected = run_network("numpy", params, ids, targets)
    got = run_network("cupy", params, ids, targets)
    np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-10)
    for name, grad in expected[2].items():
        np.testing.assert_allclose(got[2][name], grad, rtol=1e-8, atol=1e-12, err_msg=name)
