"""Optimizers, clipping and the appendix D schedule, checked against PyTorch and the book."""

import copy
import math
import types

import numpy as np
import pytest
import torch

import tinygpt
from tinygpt import backend
from tinygpt.optim import (
    SGD,
    AdamW,
    WarmupCosineSchedule,
    clip_grad_norm,
    param_groups_for_weight_decay,
    warmup_cosine_lr,
)

SHAPES = [(4, 3), (3,), (5, 4), (5,)]  # two matrices (decayed) and two vectors (not)


def make_params(seed=0, shapes=SHAPES, dtype=np.float64):
    """The same starting values as tinygpt parameters and as torch leaf tensors."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ours = [tinygpt.Tensor(a.copy(), requires_grad=True) for a in init]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    return ours, theirs


def groups_of(params, weight_decay):
    """Matrices decayed, vectors not (works for tinygpt and torch tensors alike)."""
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def set_grads(ours, theirs, rng, scale):
    for p, t in zip(ours, theirs):
        g = rng.standard_normal(p.shape).astype(p.dtype) * scale
        p.grad = g.copy()
        t.grad = torch.tensor(g.copy())


def max_deviation(ours, theirs):
    return max(float(np.abs(p.data - t.detach().numpy()).max()) for p, t in zip(ours, theirs))


def book_lrs(n_steps, peak_lr, warmup_steps, initial_lr, min_lr):
    """Appendix D's training loop, transcribed, with the model and data left out."""
    total_training_steps = n_steps
    lr_increment = (peak_lr - initial_lr) / warmup_steps
    global_step, track_lrs = -1, []
    for _ in range(n_steps):
        global_step += 1
        if global_step < warmup_steps:
            lr = initial_lr + global_step * lr_increment
        else:
            progress = ((global_step - warmup_steps) /
                        (total_training_steps - warmup_steps))
            lr = min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        track_lrs.append(lr)
    return track_lrs


SCHEDULE = dict(peak_lr=0.05, total_steps=10, warmup_steps=3, initial_lr=1e-3, min_lr=1e-4)


# ----------------------------------------------------------------------------- AdamW

@pytest.mark.parametrize("amsgrad", [False, True])
def test_ten_adamw_steps_with_schedule_and_clipping_match_torch(amsgrad):
    ours, theirs = make_params()
    opt = AdamW(groups_of(ours, 0.1), amsgrad=amsgrad)
    ref = torch.optim.AdamW(groups_of(theirs, 0.1), amsgrad=amsgrad)
    schedule = WarmupCosineSchedule(opt, **SCHEDULE)
    lrs = book_lrs(10, 0.05, 3, 1e-3, 1e-4)
    rng = np.random.default_rng(1)
    for step in range(10):
        for group in ref.param_groups:
            group["lr"] = lrs[step]
        assert [g["lr"] for g in opt.param_groups] == [lrs[step]] * 2
        # Alternate small and large gradients, so that some steps clip and some do not.
        set_grads(ours, theirs, rng, scale=(0.05, 3.0)[step % 2])
        norm = clip_grad_norm(ours, max_norm=1.0)
        ref_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm=1.0).item()
        assert norm == pytest.approx(ref_norm, rel=1e-12)
        opt.step()
        ref.step()
        schedule.step()
        assert max_deviation(ours, theirs) < 1e-12
    # The moments agree too, under PyTorch's names (state indices count through the groups).
    for i, t in enumerate(t for group in ref.param_groups for t in group["params"]):
        for name in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()):
            np.testing.assert_allclose(opt.state[i][name], ref.state[t][name].numpy(),
                                       rtol=1e-12, atol=1e-15)
        assert opt.state[i]["step"] == ref.state[t]["step"].item() == 10


def test_adamw_on_a_real_loss_matches_torch():
    """Gradients from a tinygpt loss and from the same loss in torch, 10 steps."""
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    w0, b0 = rng.standard_normal((2, 3)), rng.standard_normal(2)
    W, b = (tinygpt.Tensor(a.copy(), requires_grad=True) for a in (w0, b0))
    tW, tb = (torch.tensor(a.copy(), requires_grad=True) for a in (w0, b0))
    groups = param_groups_for_weight_decay({"lin.weight": W, "lin.bias": b}, 0.1)
    assert [g["param_names"] for g in groups] == [["lin.weight"], ["lin.bias"]]
    opt = AdamW(groups, lr=0.05)
    schedule = WarmupCosineSchedule(opt, **SCHEDULE)
    ref = torch.optim.AdamW([{"params": [tW], "weight_decay": 0.1},
                             {"params": [tb], "weight_decay": 0.0}], lr=0.05)
    X, Y, tX, tY = tinygpt.Tensor(x), tinygpt.Tensor(y), torch.tensor(x), torch.tensor(y)
    for lr in book_lrs(10, 0.05, 3, 1e-3, 1e-4):
        for group in ref.param_groups:
            group["lr"] = lr
        loss = (((X @ W.T + b).tanh() - Y) ** 2).mean()
        ref_loss = (((tX @ tW.T + tb).tanh() - tY) ** 2).mean()
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
        loss.backward()
        ref_loss.backward()
        clip_grad_norm([W, b], 0.5)
        torch.nn.utils.clip_grad_norm_([tW, tb], 0.5)
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
        schedule.step()
    assert max_deviation([W, b], [tW, tb]) < 1e-12


def test_adamw_float32_matches_torch():
    ours, theirs = make_params(dtype=np.float32)
    opt, ref = AdamW(ours, lr=0.01), torch.optim.AdamW(theirs, lr=0.01)
    rng = np.random.default_rng(3)
    for _ in range(10):
        set_grads(ours, theirs, rng, scale=1.0)
        opt.step()
        ref.step()
    assert all(p.dtype == np.float32 for p in ours)
    assert all(opt.state[i]["exp_avg"].dtype == np.float32 for i in range(len(ours)))
    assert max_deviation(ours, theirs) < 1e-6


def test_adamw_defaults_are_pytorchs():
    ours, theirs = make_params()
    opt, ref = AdamW(ours), torch.optim.AdamW(theirs)
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        assert opt.param_groups[0][key] == ref.param_groups[0][key]
    sgd, ref_sgd = SGD(ours), torch.optim.SGD(theirs)
    for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov"):
        assert sgd.param_groups[0][key] == ref_sgd.param_groups[0][key]


# ----------------------------------------------------------------------------- SGD

@pytest.mark.parametrize("momentum, dampening, weight_decay, nesterov", [
    (0.0, 0.0, 0.0, False),
    (0.0, 0.0, 0.01, False),
    (0.9, 0.0, 0.0, False),
    (0.9, 0.0, 0.0, True),
    (0.9, 0.0, 0.05, True),
    (0.5, 0.1, 0.01, False),
])
def test_sgd_matches_torch(momentum, dampening, weight_decay, nesterov):
    ours, theirs = make_params()
    kw = dict(lr=0.1, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
              nesterov=nesterov)
    opt, ref = SGD(ours, **kw), torch.optim.SGD(theirs, **kw)
    rng = np.random.default_rng(4)
    for _ in range(10):
        set_grads(ours, theirs, rng, scale=1.0)
        opt.step()
        ref.step()
    assert max_deviation(ours, theirs) < 1e-12


# ----------------------------------------------------------------------------- clipping

@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = make_params()
    set_grads(ours, theirs, np.random.default_rng(5), scale=1.0)
    ours[1].grad, theirs[1].grad = None, None  # a parameter without a gradient is skipped
    total = clip_grad_norm(ours, max_norm, norm_type=norm_type)
    ref_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(ref_total.item(), rel=1e-12)
    assert ours[1].grad is None
    for p, t in zip(ours, theirs):
        if p.grad is not None:
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12, atol=0)


def test_clip_grad_norm_leaves_shared_readonly_gradients_alone():
    # backward gives a and b the same read-only array here; clipping must replace, not scale.
    a = tinygpt.Tensor(np.ones(4), requires_grad=True)
    b = tinygpt.Tensor(np.ones(4), requires_grad=True)
    (a + b).sum().backward()
    shared = a.grad
    total = clip_grad_norm([a, b], max_norm=1.0)
    assert total == pytest.approx(math.sqrt(8))
    np.testing.assert_allclose(a.grad, np.full(4, 1 / (math.sqrt(8) + 1e-6)))
    np.testing.assert_allclose(b.grad, a.grad)
    np.testing.assert_array_equal(shared, np.ones(4))


def test_clip_grad_norm_without_gradients_and_single_tensor():
    p = tinygpt.Tensor(np.ones(3), requires_grad=True)
    assert clip_grad_norm([p], 1.0) == 0.0
    p.grad = np.full(3, 2.0)
    assert clip_grad_norm(p, 1.0) == pytest.approx(math.sqrt(12))
    p.grad = np.array([np.inf, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="non-finite|inf"):
        clip_grad_norm([p], 1.0, error_if_nonfinite=True)


# ----------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("n_steps, peak_lr, warmup_steps, initial_lr, min_lr", [
    (135, 0.01, 27, 0.0001, 0.00001),   # appendix D: 20% warm-up, min_lr = 0.1 * initial_lr
    (1000, 5e-4, 20, 1e-5, 1e-5),
    (10, 1e-3, 3, 3e-5, 1e-6),
    (7, 0.1, 6, 0.0, 0.0),
])
def test_schedule_equals_the_books_loop(n_steps, peak_lr, warmup_steps, initial_lr, min_lr):
    expected = book_lrs(n_steps, peak_lr, warmup_steps, initial_lr, min_lr)
    kw = dict(peak_lr=peak_lr, total_steps=n_steps, warmup_steps=warmup_steps,
              initial_lr=initial_lr, min_lr=min_lr)
    assert [warmup_cosine_lr(s, **kw) for s in range(n_steps)] == expected  # bit for bit
    ours, _ = make_params()
    opt = SGD(groups_of(ours, 0.0), lr=123.0)
    schedule = WarmupCosineSchedule(opt, **kw)
    seen = []
    for _ in range(n_steps):
        seen.append(schedule.get_lr())
        assert all(g["lr"] == seen[-1] for g in opt.param_groups)
        schedule.step()
    assert seen == expected


def test_schedule_edges():
    kw = dict(peak_lr=1.0, total_steps=10, initial_lr=0.5, min_lr=0.1)
    assert warmup_cosine_lr(0, warmup_steps=0, **kw) == 1.0  # no warm-up: cosine from peak
    assert warmup_cosine_lr(10, warmup_steps=2, **kw) == 0.1  # past the end: min_lr
    assert warmup_cosine_lr(50, warmup_steps=2, **kw) == 0.1
    assert warmup_cosine_lr(9, warmup_steps=10, **kw) == pytest.approx(0.95)  # all warm-up
    assert warmup_cosine_lr(6, warmup_steps=2, **kw) == pytest.approx(0.55)  # half way down


# ----------------------------------------------------------------------------- saving

def _through_json_shapes(state_dict):
    """What a checkpoint does to a state dict: string keys, lists for tuples, NumPy arrays."""
    if isinstance(state_dict, dict):
        return {str(k): _through_json_shapes(v) for k, v in state_dict.items()}
    if isinstance(state_dict, (list, tuple)):
        return [_through_json_shapes(v) for v in state_dict]
    if isinstance(state_dict, np.ndarray):
        return np.array(state_dict)
    return state_dict


def _deterministic_grads(params, step):
    for i, p in enumerate(params):
        p.grad = np.sin(p.data * (step + 1)) + 0.1 * (i + 1)


@pytest.mark.parametrize("make_opt", [
    lambda groups: AdamW(groups, amsgrad=True),
    lambda groups: SGD(groups, lr=0.1, momentum=0.9, nesterov=True),
])
def test_state_dict_round_trip_resumes_exactly(make_opt):
    def run(params, opt, schedule, steps):
        for step in steps:
            _deterministic_grads(params, step)
            clip_grad_norm(params, 1.0)
            opt.step()
            opt.zero_grad()
            schedule.step()

    straight, _ = make_params()
    opt = make_opt(groups_of(straight, 0.1))
    run(straight, opt, WarmupCosineSchedule(opt, **SCHEDULE), range(10))

    first, _ = make_params()
    opt = make_opt(groups_of(first, 0.1))
    schedule = WarmupCosineSchedule(opt, **SCHEDULE)
    run(first, opt, schedule, range(5))
    saved = _through_json_shapes(opt.state_dict())
    saved_weights = [p.data.copy() for p in first]
    saved_schedule = copy.deepcopy(schedule.state_dict())
    saved_copy = copy.deepcopy(saved)
    run(first, opt, schedule, range(5, 7))  # later steps must not change the snapshot
    for key, entry in saved_copy["state"].items():
        for name, value in entry.items():
            np.testing.assert_array_equal(saved["state"][key][name], value)

    # A fresh process: new tensors holding the step-5 weights, new optimizer and schedule
    # (built with other hyperparameters, which loading replaces).
    resumed = [tinygpt.Tensor(w, requires_grad=True) for w in saved_weights]
    opt2 = make_opt(groups_of(resumed, 0.5))
    schedule2 = WarmupCosineSchedule(opt2, peak_lr=9.0, total_steps=99, warmup_steps=1)
    opt2.load_state_dict(saved)
    schedule2.load_state_dict(saved_schedule)
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.1, 0.0]
    run(resumed, opt2, schedule2, range(5, 10))
    for p, q in zip(resumed, straight):
        np.testing.assert_array_equal(p.data, q.data)
    # Loading copied the arrays: stepping did not write into the saved dict.
    for key, entry in saved_copy["state"].items():
        for name, value in entry.items():
            np.testing.assert_array_equal(saved["state"][key][name], value)


def test_state_dict_layout_is_pytorchs():
    ours, theirs = make_params()
    opt = AdamW(groups_of(ours, 0.1))
    ref = torch.optim.AdamW(groups_of(theirs, 0.1))
    set_grads(ours, theirs, np.random.default_rng(6), 1.0)
    opt.step()
    ref.step()
    sd, ref_sd = opt.state_dict(), ref.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in
                                                          ref_sd["param_groups"]]
    assert sd["state"].keys() == ref_sd["state"].keys()
    assert sd["state"][0].keys() == ref_sd["state"][0].keys()


class _FakeGPUArray(np.ndarray):
    """Arrays of a stand-in 'GPU' backend: NumPy underneath, told apart by their class."""


def _fake_gpu_module():
    fake = types.ModuleType("fakegpu")
    fake.__getattr__ = lambda name: getattr(np, name)
    fake.asarray = lambda a, dtype=None: np.asarray(a, dtype=dtype).view(_FakeGPUArray)
    fake.asnumpy = lambda a: np.asarray(a).view(np.ndarray).copy()
    return fake


def test_state_moves_to_the_parameters_backend(monkeypatch):
    monkeypatch.setitem(backend._backends, "fakegpu",
                        backend.Backend("fakegpu", _fake_gpu_module(), _FakeGPUArray))
    backend.set_backend("fakegpu")
    params = [tinygpt.Tensor(backend.xp().asarray(np.ones(s)), requires_grad=True)
              for s in SHAPES]
    assert all(p.device == "fakegpu" for p in params)
    opt = AdamW(params)
    for step in range(3):
        _deterministic_grads(params, step)
        for p in params:
            p.grad = backend.xp().asarray(p.grad)
        clip_grad_norm(params, 1.0)
        opt.step()
    assert isinstance(opt.state[0]["exp_avg"], _FakeGPUArray)
    on_host = {"state": {k: {n: backend.move(v, "numpy") if backend.is_array(v) else v
                             for n, v in s.items()} for k, s in opt.state_dict()["state"].items()},
               "param_groups": opt.state_dict()["param_groups"]}
    assert type(on_host["state"][0]["exp_avg"]) is np.ndarray
    opt2 = AdamW(params)
    opt2.load_state_dict(on_host)
    assert isinstance(opt2.state[0]["exp_avg"], _FakeGPUArray)
    np.testing.assert_array_equal(opt2.state[0]["exp_avg_sq"], opt.state[0]["exp_avg_sq"])


def test_load_state_dict_rejects_mismatches():
    ours, _ = make_params()
    opt = AdamW(groups_of(ours, 0.1))
    for p in ours:
        p.grad = np.ones(p.shape)
    opt.step()
    sd = opt.state_dict()

    with pytest.raises(ValueError, match="keys 'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
    with pytest.raises(ValueError, match="2 parameter groups but this optimizer has 1"):
        AdamW(ours).load_state_dict(sd)
    smaller = AdamW([{"params": ours[:1]}, {"params": ours[1:]}])
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the state dict but 1"):
        smaller.load_state_dict(sd)
    others, _ = make_params(shapes=[(4, 3), (3,), (5, 2), (5,)])
    with pytest.raises(ValueError, match=r"shape \(5, 4\) but the parameter has shape \(5, 2\)"):
        AdamW(groups_of(others, 0.1)).load_state_dict(sd)
    with pytest.raises(ValueError, match="betas"):
        bad = copy.deepcopy(sd)
        bad["param_groups"][0]["betas"] = (0.9, 1.0)
        opt.load_state_dict(bad)
    before = copy.deepcopy(opt.state)
    with pytest.raises(ValueError):
        bad = copy.deepcopy(sd)
        bad["state"][3]["exp_avg"] = np.zeros((2, 2))
        opt.load_state_dict(bad)
    for i, entry in before.items():  # a failed load changes nothing
        np.testing.assert_array_equal(opt.state[i]["exp_avg"], entry["exp_avg"])


def test_load_state_dict_checks_parameter_names():
    a, b = (tinygpt.Tensor(np.ones((2, 2)), requires_grad=True) for _ in range(2))
    sd = AdamW(param_groups_for_weight_decay({"x.weight": a}, 0.1)).state_dict()
    other = AdamW(param_groups_for_weight_decay({"y.weight": b}, 0.1))
    with pytest.raises(ValueError, match="'x.weight' where this optimizer has 'y.weight'"):
        other.load_state_dict(sd)


# ----------------------------------------------------------------------------- behaviour

def test_step_skips_missing_grads_zero_grad_and_no_graph():
    ours, _ = make_params()
    before = [p.data.copy() for p in ours]
    opt = AdamW(ours, lr=0.1)
    ours[0].grad = np.ones(ours[0].shape)
    assert opt.step(closure=lambda: 42.0) == 42.0
    assert not np.array_equal(ours[0].data, before[0])
    for p, b in zip(ours[1:], before[1:]):
        np.testing.assert_array_equal(p.data, b)
    assert list(opt.state) == [0]
    assert all(p.requires_grad and not p._parents for p in ours)  # still leaves
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(ours[0].grad, np.zeros(ours[0].shape))
    assert ours[1].grad is None
    opt.zero_grad()
    assert all(p.grad is None for p in ours)
    ours[0].grad = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"shape \(4, 3\) but its gradient has shape \(2, 2\)"):
        opt.step()


def test_param_groups_for_weight_decay_on_gpt_names():
    def t(*shape, requires_grad=True):
        return tinygpt.Tensor(np.zeros(shape), requires_grad=requires_grad)

    named = [
        ("tok_emb.weight", t(10, 4)), ("pos_emb.weight", t(6, 4)),
        ("trf_blocks.0.att.W_query.weight", t(4, 4)), ("trf_blocks.0.att.W_query.bias", t(4)),
        ("trf_blocks.0.ff.layers.0.weight", t(16, 4)), ("trf_blocks.0.ff.layers.0.bias", t(16)),
        ("trf_blocks.0.norm1.scale", t(4)), ("trf_blocks.0.norm1.shift", t(4)),
        ("final_norm.scale", t(4)), ("out_head.weight", t(10, 4)),
        ("frozen.weight", t(4, 4, requires_grad=False)),
    ]
    decay, keep = param_groups_for_weight_decay(iter(named), 0.1)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    assert decay["param_names"] == ["tok_emb.weight", "pos_emb.weight",
                                    "trf_blocks.0.att.W_query.weight",
                                    "trf_blocks.0.ff.layers.0.weight", "out_head.weight"]
    assert keep["param_names"] == ["trf_blocks.0.att.W_query.bias",
                                   "trf_blocks.0.ff.layers.0.bias", "trf_blocks.0.norm1.scale",
                                   "trf_blocks.0.norm1.shift", "final_norm.scale"]
    assert [p.shape for p in decay["params"]][0] == (10, 4)
    decay, keep = param_groups_for_weight_decay(
        named, 0.1, no_decay=lambda name, p: p.ndim < 2 or "emb" in name)
    assert "tok_emb.weight" in keep["param_names"] and "pos_emb.weight" in keep["param_names"]
    opt = AdamW([decay, keep])
    assert [len(g["params"]) for g in opt.param_groups] == [3, 7]


# ----------------------------------------------------------------------------- errors

def _p(shape=(2,), requires_grad=True):
    return tinygpt.Tensor(np.ones(shape), requires_grad=requires_grad)


@pytest.mark.parametrize("build, message", [
    (lambda: AdamW([_p()], lr=-1e-3), r"learning rate \(lr\) must be >= 0, got -0.001"),
    (lambda: SGD([_p()], lr=-0.1), r"learning rate \(lr\) must be >= 0"),
    (lambda: AdamW([_p()], betas=(1.0, 0.999)), r"betas\[0\] must be in \[0, 1\), got 1.0"),
    (lambda: AdamW([_p()], betas=(0.9, -0.1)), r"betas\[1\] must be in \[0, 1\)"),
    (lambda: AdamW([_p()], betas=(0.9,)), "betas must be a pair"),
    (lambda: AdamW([_p()], eps=-1e-8), "eps must be >= 0"),
    (lambda: AdamW([_p()], weight_decay=-0.1), "weight_decay must be >= 0"),
    (lambda: AdamW([_p()], lr=float("nan")), "lr"),
    (lambda: SGD([_p()], momentum=-0.9), "momentum must be >= 0"),
    (lambda: SGD([_p()], nesterov=True), "nesterov momentum needs momentum > 0"),
    (lambda: AdamW([]), "empty parameter list"),
    (lambda: AdamW([{"params": []}]), "empty parameter list"),
    (lambda: AdamW([_p(requires_grad=False)]), "does not require grad"),
    (lambda: AdamW([{"params": [_p()]}, {"params": [_p(requires_grad=False)], "lr": 1.0}]),
     "parameter group 1: parameter 0 .* does not require grad"),
    (lambda: AdamW([{"params": [_p()], "lr": -1.0}]), "parameter group 0: learning rate"),
    (lambda: (lambda p: AdamW([p, p]))(_p()), "appears more than once"),
    (lambda: param_groups_for_weight_decay([], -0.1), "weight_decay must be >= 0"),
])
def test_validation_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_type_errors():
    with pytest.raises(TypeError, match="single Tensor"):
        AdamW(_p())
    with pytest.raises(TypeError, match="expected a tinygpt Tensor"):
        AdamW([np.ones(2)])
    with pytest.raises(TypeError, match="not a mix"):
        AdamW([_p(), {"params": [_p()]}])


@pytest.mark.parametrize("kw, message", [
    (dict(warmup_steps=11), r"warmup_steps must be between 0 and total_steps \(10\), got 11"),
    (dict(warmup_steps=-1), "warmup_steps must be between 0"),
    (dict(total_steps=0, warmup_steps=0), "total_steps must be >= 1, got 0"),
    (dict(peak_lr=-1.0), "peak_lr must be >= 0, got -1.0"),
    (dict(initial_lr=-1e-5), "initial_lr must be >= 0"),
    (dict(min_lr=-1e-5), "min_lr must be >= 0"),
])
def test_schedule_validation_errors(kw, message):
    args = dict(peak_lr=1e-3, total_steps=10, warmup_steps=2, initial_lr=0.0, min_lr=0.0)
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        warmup_cosine_lr(0, **args)
    opt = SGD([_p()])
    with pytest.raises(ValueError, match=message):
        WarmupCosineSchedule(opt, **args)


def test_schedule_step_and_state_errors():
    with pytest.raises(ValueError, match="step must be >= 0, got -1"):
        warmup_cosine_lr(-1, peak_lr=1.0, total_steps=10, warmup_steps=2)
    schedule = WarmupCosineSchedule(SGD([_p()]), peak_lr=1.0, total_steps=10, warmup_steps=2)
    with pytest.raises(ValueError, match="lacks"):
        schedule.load_state_dict({"current_step": 3})
