"""Optimizers as graph rewrites: each appends its update rule to the training-step graph, so the
update runs inside the compiled step. Optimizer state (moments, accumulators, the step count)
lives in non-trainable parameters named ``<param>.<slot>``, updated in place with the weights.

    loss = ...                                   # inside a graph
    lr = graphc.input("lr", (), "float32")        # fed each step, so schedules need no recompiling
    graphc.optim.Adam(lr=1e-3).minimize(loss, params, lr)

The rules are the textbook ones (CS231n's forms for momentum and Nesterov; Zeiler's AdaDelta;
Kingma and Ba's Adam with bias correction). ``weight_decay`` adds wd * p to each gradient (L2);
``clip_norm`` rescales all gradients together so their global L2 norm is at most ``clip_norm``.

Every hyper-parameter is checked against its range (``RANGES``) when it is given and again by
``minimize``: a rate <= 0, a momentum or decay outside [0, 1), eps <= 0 raise
:class:`HyperparameterError` naming the optimizer, the argument and the allowed range.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import dsl
from ..autodiff import grad
from ..dsl import Tensor
from ..ops import elementwise as ew
from ..ops.nn import sum_of_squares
from .hyperparams import NON_NEGATIVE, POSITIVE, UNIT, HyperparameterError, Range


class Optimizer:
    """Base class: ``minimize`` differentiates the loss and appends ``update`` for every parameter."""

    name = "optimizer"
    #: the allowed range of every hyper-parameter (an attribute of the same name)
    RANGES: dict[str, Range] = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE,
                                "clip_norm": Range(0.0, low_open=True, optional=True)}

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0, clip_norm: float | None = None):
        self._set(lr=lr, weight_decay=weight_decay, clip_norm=clip_norm)

    def _set(self, **values) -> None:
        """Check each hyper-parameter against its range, then store it (as a float)."""
        for name, value in values.items():
            setattr(self, name, self.RANGES[name].check(type(self).__name__, name, value))

    def validate(self) -> None:
        """Check every hyper-parameter again: attributes may have been changed since construction."""
        self._set(**{name: getattr(self, name) for name in self.RANGES})

    def minimize(self, loss: Tensor, params: Sequence[Tensor], lr: Tensor | float | None = None) -> list[Tensor]:
        """Add gradients of ``loss`` and this rule's updates (Graph.update) to ``loss``'s graph.

        ``lr`` is a scalar graph input fed each step (schedules), or a float; default ``self.lr``.
        Returns the gradients (after weight decay and clipping).
        """
        self.validate()
        params = list(params)
        lr = self.lr if lr is None else lr
        grads = grad(loss, params)
        if self.weight_decay:
            grads = [g + p * self.weight_decay for g, p in zip(grads, params)]
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        self._state: list[tuple[Tensor, Tensor]] = []
        shared = self.shared_state(loss)
        for p, g in zip(params, grads):
            new_p = self.update(p, g, lr, shared)
            loss.graph.update(p, ew.cast(new_p, p.dtype))
        for s, new_s in self._state:
            loss.graph.update(s, ew.cast(new_s, s.dtype))
        return grads

    def slot(self, p: Tensor, name: str, init: float = 0.0) -> Tensor:
        """A state tensor shaped like ``p`` (a non-trainable parameter ``<p>.<name>``)."""
        return dsl.param(f"{p.name}.{name}", np.full(p.shape, init, p.dtype.np), trainable=False)

    def set_state(self, state: Tensor, new_value: Tensor) -> None:
        self._state.append((state, new_value))

    def shared_state(self, loss: Tensor) -> dict:
        return {}

    def update(self, p: Tensor, g: Tensor, lr, shared: dict) -> Tensor:
        raise NotImplementedError


def clip_by_global_norm(grads: Sequence[Tensor], max_norm: float) -> list[Tensor]:
    """Scale every gradient by min(1, max_norm / ||g||), ||g|| the L2 norm of all of them together."""
    norm = ew.sqrt(sum_of_squares(grads, "clip_by_global_norm"))
    scale = ew.minimum(max_norm / ew.maximum(norm, 1e-12), 1.0)
    return [g * ew.cast(scale, g.dtype) for g in grads]


class SGD(Optimizer):
    """p <- p - lr * g"""

    name = "sgd"

    def update(self, p, g, lr, shared):
        return p - g * lr


class Momentum(Optimizer):
    """v <- mu v - lr g;  p <- p + v"""

    name = "momentum"
    RANGES = {**Optimizer.RANGES, "momentum": UNIT}

    def __init__(self, lr=0.01, momentum=0.9, **kw):
        super().__init__(lr, **kw)
        self._set(momentum=momentum)

    def update(self, p, g, lr, shared):
        v = self.slot(p, "velocity")
        v_new = v * self.momentum - g * lr
        self.set_state(v, v_new)
        return p + v_new


class Nesterov(Momentum):
    """v' <- mu v - lr g;  p <- p - mu v + (1 + mu) v'   (Nesterov momentum, CS231n form)"""

    name = "nesterov"

    def update(self, p, g, lr, shared):
        v = self.slot(p, "velocity")
        v_new = v * self.momentum - g * lr
        self.set_state(v, v_new)
        return p - v * self.momentum + v_new * (1.0 + self.momentum)


class AdaGrad(Optimizer):
    """c <- c + g^2;  p <- p - lr g / (sqrt(c) + eps)"""

    name = "adagrad"
    RANGES = {**Optimizer.RANGES, "eps": POSITIVE}

    def __init__(self, lr=0.01, eps=1e-8, **kw):
        super().__init__(lr, **kw)
        self._set(eps=eps)

    def update(self, p, g, lr, shared):
        c = self.slot(p, "accumulator")
        c_new = c + ew.square(g)
        self.set_state(c, c_new)
        return p - g * lr / (ew.sqrt(c_new) + self.eps)


class RMSProp(Optimizer):
    """c <- rho c + (1 - rho) g^2;  p <- p - lr g / (sqrt(c) + eps)"""

    name = "rmsprop"
    RANGES = {**Optimizer.RANGES, "rho": UNIT, "eps": POSITIVE}

    def __init__(self, lr=0.001, rho=0.9, eps=1e-8, **kw):
        super().__init__(lr, **kw)
        self._set(rho=rho, eps=eps)

    def update(self, p, g, lr, shared):
        c = self.slot(p, "mean_square")
        c_new = c * self.rho + ew.square(g) * (1.0 - self.rho)
        self.set_state(c, c_new)
        return p - g * lr / (ew.sqrt(c_new) + self.eps)


class AdaDelta(Optimizer):
    """E[g2] <- rho E[g2] + (1 - rho) g^2;  d <- -sqrt(E[d2] + eps) / sqrt(E[g2] + eps) g;
    E[d2] <- rho E[d2] + (1 - rho) d^2;  p <- p + lr d   (Zeiler 2012; lr 1.0 is the paper's)"""

    name = "adadelta"
    RANGES = {**Optimizer.RANGES, "rho": UNIT, "eps": POSITIVE}

    def __init__(self, lr=1.0, rho=0.95, eps=1e-6, **kw):
        super().__init__(lr, **kw)
        self._set(rho=rho, eps=eps)

    def update(self, p, g, lr, shared):
        eg, ed = self.slot(p, "mean_square_grad"), self.slot(p, "mean_square_delta")
        eg_new = eg * self.rho + ew.square(g) * (1.0 - self.rho)
        delta = -(ew.sqrt(ed + self.eps) / ew.sqrt(eg_new + self.eps)) * g
        self.set_state(eg, eg_new)
        self.set_state(ed, ed * self.rho + ew.square(delta) * (1.0 - self.rho))
        return p + delta * lr


class Adam(Optimizer):
    """m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t <- t + 1;
    p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)"""

    name = "adam"
    RANGES = {**Optimizer.RANGES, "beta1": UNIT, "beta2": UNIT, "eps": POSITIVE}

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, **kw):
        super().__init__(lr, **kw)
        self._set(beta1=beta1, beta2=beta2, eps=eps)

    def shared_state(self, loss):
        # float64: 1 - beta2**t in float32 is off by ~1e-5 relative (0.999 is not a float32), which
        # would skew every step of a float64 model and the first steps of a float32 one.
        t = dsl.param("adam.t", np.zeros((), np.float64), trainable=False)
        t_new = t + 1.0
        self.set_state(t, t_new)
        return {"correction1": 1.0 - ew.pow(np.float64(self.beta1), t_new),
                "correction2": 1.0 - ew.pow(np.float64(self.beta2), t_new)}

    def update(self, p, g, lr, shared):
        m, v = self.slot(p, "m"), self.slot(p, "v")
        m_new = m * self.beta1 + g * (1.0 - self.beta1)
        v_new = v * self.beta2 + ew.square(g) * (1.0 - self.beta2)
        self.set_state(m, m_new)
        self.set_state(v, v_new)
        m_hat = m_new / ew.cast(shared["correction1"], p.dtype)
        v_hat = v_new / ew.cast(shared["correction2"], p.dtype)
        return p - m_hat * lr / (ew.sqrt(v_hat) + self.eps)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}

__all__ = ["AdaDelta", "AdaGrad", "Adam", "HyperparameterError", "Momentum", "Nesterov", "OPTIMIZERS", "Optimizer",
           "RMSProp", "SGD", "clip_by_global_norm"]
