"""``SGD``: stochastic gradient descent with momentum, as ``torch.optim.SGD``."""

from __future__ import annotations

from tinygpt.optim.optimizer import Optimizer, _check_nonnegative


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    With gradient g, learning rate lr, momentum mu, dampening tau and weight decay wd::

        g <- g + wd * p                      (coupled L2 decay: it goes through momentum)
        b <- g on the first step, else mu * b + (1 - tau) * g
        g <- g + mu * b  (nesterov)  or  b
        p <- p - lr * g
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        _check_nonnegative(f"{where}: momentum", group["momentum"])
        _check_nonnegative(f"{where}: weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: nesterov momentum needs momentum > 0 and dampening = 0, "
                             f"got momentum={group['momentum']}, dampening={group['dampening']}")

    def _update(self, p, grad, state, group):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd != 0:
            grad = grad + wd * p.data                    # g <- g + wd p
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()  # b_1 = g_1
            else:
                buf *= momentum                          # b <- mu b + (1 - tau) g
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= lr * grad                              # p <- p - lr g

    def _fused_step(self):
        """Every parameter's ``_update`` in one kernel pass over the buffer (same arithmetic)."""
        from tinygpt.kernels import optim as kernels  # Numba loads on the first step only

        runs = self._runs(self._coefficients)
        if runs:
            momentum = self._flat("momentum_buffer") if any(
                g["momentum"] != 0 for g in self.param_groups) else self.buffer.data[:0]
            kernels.sgd(self.buffer.data, self.buffer.grad, momentum, runs)

    def _coefficients(self, index, state, group):
        """Parameter ``index``'s row for ``kernels.optim.sgd``; its momentum buffer becomes a
        view of the flat one (the first step, with no buffer yet, starts it as g)."""
        momentum = group["momentum"]
        first_step = momentum != 0 and state.get("momentum_buffer") is None
        if momentum != 0:
            self._state_view(index, state, "momentum_buffer")
        return (group["lr"], momentum, 1 - group["dampening"], group["weight_decay"],
                float(group["nesterov"]), float(first_step))
