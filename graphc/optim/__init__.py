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

Parameter groups give some parameters their own rate or weight decay (PyTorch's param groups, chosen
by name so that they work with ``fit``, which builds the parameters itself; groups may overlap where
they set different things)::

    Adam(lr=1e-3, groups=[{"params": "conv*", "lr": 1e-4},        # fnmatch patterns of names,
                          {"params": ["*.b"], "weight_decay": 0.0}])  # or the parameter tensors

A group's ``lr`` is relative to the optimizer's: the step's rate (the ``lr`` input a schedule feeds)
times ``group lr / optimizer lr``, so a schedule scales every group by the same factor. State shared
by all parameters of one optimizer (Adam's step count ``adam.t``) is named per optimizer in the graph
(``adam.t``, then ``adam_1.t``, ...), so that two optimizers can update different parameters in one step.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import dsl
from ..autodiff import grad
from ..dsl import Tensor
from ..ir import GraphcError, Node
from ..ops import elementwise as ew
from ..ops.nn import sum_of_squares
from .hyperparams import NON_NEGATIVE, POSITIVE, UNIT, HyperparameterError, Range, user_line_text


class NotAParameterError(GraphcError, TypeError):
    """Something given to ``minimize`` as a parameter that is not a parameter of the loss's graph."""


class ParamGroupError(GraphcError, ValueError):
    """A parameter group that selects nothing, two groups setting the same thing for one parameter, an
    unknown group setting, or a parameter that another optimizer already updates."""


#: the settings a group may override, with their ranges
GROUP_RANGES: dict[str, Range] = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE}


@dataclass(frozen=True)
class ParamGroup:
    """Parameters selected by name patterns (fnmatch) or by tensor, with their own rate and weight
    decay (None: the optimizer's)."""

    params: tuple  # of str patterns and Tensors
    lr: float | None = None
    weight_decay: float | None = None

    def selects(self, p: Tensor) -> bool:
        """Whether parameter ``p`` is this tensor or its name matches one of the patterns."""
        return any(fnmatch.fnmatchcase(p.name, q) if isinstance(q, str) else p.node is q.node for q in self.params)

    def settings(self) -> list[str]:
        """The settings this group sets (the others are the optimizer's)."""
        return [k for k in GROUP_RANGES if getattr(self, k) is not None]

    def describe(self) -> str:
        return ", ".join(q if isinstance(q, str) else repr(q.name) for q in self.params)


def param_group(owner: str, index: int, spec: Mapping[str, Any] | ParamGroup) -> ParamGroup:
    """A checked :class:`ParamGroup` from a dict ``{"params": patterns or tensors, "lr": ..., "weight_decay": ...}``."""
    if isinstance(spec, ParamGroup):
        spec = {"params": spec.params, "lr": spec.lr, "weight_decay": spec.weight_decay}
    where = f"{owner} group {index}"
    if not isinstance(spec, Mapping) or "params" not in spec:
        raise ParamGroupError(f"{where}: a group is a dict with 'params' (name patterns or parameter tensors) and "
                              f"optionally {sorted(GROUP_RANGES)}; got {spec!r}{user_line_text()}")
    unknown = set(spec) - {"params"} - set(GROUP_RANGES)
    if unknown:
        raise ParamGroupError(f"{where}: unknown setting(s) {sorted(unknown)}; a group may set "
                              f"{sorted(GROUP_RANGES)}{user_line_text()}")
    params = spec["params"]
    params = (params,) if isinstance(params, (str, Tensor)) else tuple(params) if isinstance(params, Iterable) else ()
    if not params or not all(isinstance(q, (str, Tensor)) for q in params):
        raise ParamGroupError(f"{where}: 'params' must be name patterns (str) or parameter tensors; "
                              f"got {spec['params']!r}{user_line_text()}")
    values = {k: GROUP_RANGES[k].check(where, k, spec[k]) if spec.get(k) is not None else None for k in GROUP_RANGES}
    return ParamGroup(params, **values)


class Optimizer:
    """Base class: ``minimize`` differentiates the loss and appends ``update`` for every parameter."""

    name = "optimizer"
    #: the allowed range of every hyper-parameter (an attribute of the same name)
    RANGES: dict[str, Range] = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE,
                                "clip_norm": Range(0.0, low_open=True, optional=True)}

    #: True when weight decay shrinks the weights in the update (AdamW) instead of adding wd * p to the gradient
    decoupled_weight_decay = False

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0, clip_norm: float | None = None,
                 groups: Sequence[Mapping[str, Any] | ParamGroup] = ()):
        self._set(lr=lr, weight_decay=weight_decay, clip_norm=clip_norm)
        self.groups = self._check_groups(groups)

    def _check_groups(self, groups: Sequence[Mapping[str, Any] | ParamGroup]) -> list[ParamGroup]:
        if isinstance(groups, (Mapping, ParamGroup)):
            groups = [groups]
        return [param_group(type(self).__name__, i, spec) for i, spec in enumerate(groups)]

    def _set(self, **values) -> None:
        """Check each hyper-parameter against its range, then store it (as a float)."""
        for name, value in values.items():
            setattr(self, name, self.RANGES[name].check(type(self).__name__, name, value))

    def validate(self) -> None:
        """Check every hyper-parameter again: attributes may have been changed since construction."""
        self._set(**{name: getattr(self, name) for name in self.RANGES})
        self.groups = self._check_groups(self.groups)

    def minimize(self, loss: Tensor, params: Sequence[Tensor | Node], lr: Tensor | float | None = None) -> list[Tensor]:
        """Add gradients of ``loss`` and this rule's updates (Graph.update) to ``loss``'s graph.

        ``params``: the parameters to train, as the tensors ``graphc.param`` returned or as the graph's
        nodes (``g.trainable_params``).

        ``lr`` is a scalar graph input fed each step (schedules), or a float; default ``self.lr``.
        A parameter in one of ``self.groups`` gets that group's rate (``lr`` times group lr / ``self.lr``)
        and weight decay. Returns the gradients (after coupled weight decay and clipping).
        """
        self.validate()
        params = self._param_tensors(loss, params)
        self._check_not_updated(loss, params)
        lr = self.lr if lr is None else lr
        settings = self.settings_of(params)
        grads = grad(loss, params)
        if not self.decoupled_weight_decay:
            grads = [g + p * wd if wd else g for g, p, (_, wd) in zip(grads, params, settings)]
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        self._state: list[tuple[Tensor, Tensor]] = []
        shared = self.shared_state(loss)
        for p, g, (lr_scale, wd) in zip(params, grads, settings):
            rate = lr * lr_scale if lr_scale != 1.0 else lr
            new_p = self.update(p, g, rate, shared)
            if self.decoupled_weight_decay and wd:
                new_p = new_p - p * rate * wd  # p <- p - lr (step + wd p): the decay is not in the moments
            loss.graph.update(p, ew.cast(new_p, p.dtype))
        for s, new_s in self._state:
            loss.graph.update(s, ew.cast(new_s, s.dtype))
        return grads

    def settings_of(self, params: Sequence[Tensor]) -> list[tuple[float, float]]:
        """(rate factor, weight decay) of each parameter, from the groups that select it, else the optimizer's.

        Groups may overlap when they set different things ("conv*" a lower rate, "*.b" no decay: a conv
        bias gets both); a group that selects none of ``params``, or two groups setting the same thing
        for one parameter, is an error."""
        owner = type(self).__name__
        chosen: list[dict[str, int]] = [{} for _ in params]  # per parameter: setting -> the group that sets it
        for k, group in enumerate(self.groups):
            hits = [i for i, p in enumerate(params) if group.selects(p)]
            if not hits:
                names = ", ".join(p.name for p in params)
                raise ParamGroupError(f"{owner} group {k} ({group.describe()}) selects none of the parameters "
                                      f"it optimizes: {names}{user_line_text()}")
            for i in hits:
                for setting in group.settings():
                    if setting in chosen[i]:
                        first = chosen[i][setting]
                        raise ParamGroupError(
                            f"{owner}: parameter {params[i].name!r} gets {setting} from group {first} "
                            f"({self.groups[first].describe()}) and from group {k} ({group.describe()}); one group "
                            f"may set each setting of a parameter{user_line_text()}")
                    chosen[i][setting] = k
        settings = []
        for by in chosen:
            lr = self.groups[by["lr"]].lr if "lr" in by else self.lr
            wd = self.groups[by["weight_decay"]].weight_decay if "weight_decay" in by else self.weight_decay
            settings.append((lr / self.lr, wd))
        return settings

    def _param_tensors(self, loss: Tensor, params: Iterable[Tensor | Node]) -> list[Tensor]:
        """``params`` as Tensors of the loss's graph: the tensors ``graphc.param`` returned, or the graph's own
        parameter nodes (``g.trainable_params``); anything else is refused with what it is and what to pass."""
        owner = f"{type(self).__name__}.minimize"
        if not isinstance(loss, Tensor):
            raise NotAParameterError(f"{owner}: the loss must be a graphc Tensor (the scalar the step minimizes), "
                                     f"got {loss!r}{user_line_text()}")
        if isinstance(params, (Tensor, Node)):
            params = [params]
        tensors = []
        for k, p in enumerate(params):
            node = p.node if isinstance(p, Tensor) else p
            if not isinstance(node, Node) or node.op != "param" or node not in loss.graph:
                if isinstance(node, Node):
                    what = f"{node.op} {node.name!r} ({node.type_str})" if node.name else f"a {node.op} ({node.type_str})"
                else:
                    what = f"a {type(p).__name__}, {p!r}"
                raise NotAParameterError(
                    f"{owner}: params[{k}] is {what}, not a parameter of graph {loss.graph.name!r} (the loss's); "
                    f"pass the graph's parameters: g.trainable_params, or the tensors graphc.param returned"
                    f"{user_line_text()}")
            tensors.append(p if isinstance(p, Tensor) else Tensor(node, loss.graph))
        return tensors

    def _check_not_updated(self, loss: Tensor, params: Sequence[Tensor]) -> None:
        """A parameter already updated (by another optimizer's minimize) cannot get a second update."""
        updated = {id(p) for p, _ in loss.graph.updates}
        for p in params:
            if id(p.node) in updated:
                raise ParamGroupError(f"{type(self).__name__}: parameter {p.name!r} already has an update in graph "
                                      f"{loss.graph.name!r} (another optimizer's minimize?); give each optimizer "
                                      f"different parameters{user_line_text()}")

    def shared_param(self, loss: Tensor, slot: str, value: np.ndarray) -> Tensor:
        """State shared by all parameters of this optimizer (Adam's step count): a non-trainable parameter
        ``<name>.<slot>``, or ``<name>_1.<slot>``, ... when another optimizer in the graph has that name."""
        taken = {n.name for n in loss.graph.params}
        prefix, k = self.name, 0
        while f"{prefix}.{slot}" in taken:
            k += 1
            prefix = f"{self.name}_{k}"
        return dsl.param(f"{prefix}.{slot}", value, trainable=False)

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
        t = self.shared_param(loss, "t", np.zeros((), np.float64))
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


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019):
    p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd p), the moments seeing the loss's gradient alone.
    Its default ``weight_decay`` is 0.01 (PyTorch's)."""

    name = "adamw"
    decoupled_weight_decay = True

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, **kw):
        super().__init__(lr, beta1, beta2, eps, weight_decay=weight_decay, **kw)


OPTIMIZERS = {cls.name: cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam, AdamW)}

__all__ = ["AdaDelta", "AdaGrad", "Adam", "AdamW", "GROUP_RANGES", "HyperparameterError", "Momentum", "Nesterov",
           "NotAParameterError", "OPTIMIZERS", "Optimizer", "ParamGroup", "ParamGroupError", "RMSProp", "SGD", "clip_by_global_norm",
           "param_group"]
