"""Gradient clipping of the Detectron2 adapter, ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE``.

Detectron2 0.6 clips each parameter's gradient on its own (``"value"``, ``"norm"``). The
EfficientDet paper clips the norm of all gradients together at 10, as MMDetection's
``optim_wrapper.clip_grad`` does; ``CLIP_TYPE: "full_model"`` (the name Detectron2's own
projects give it) does that here: before every step, the gradients of all parameters the
optimizer holds are scaled down together so that their joint ``NORM_TYPE`` norm is at most
``CLIP_VALUE``.

The two are not interchangeable under Adam: per-parameter clipping lets the first steps' large
gradients into Adam's second moment (a memory of about 1000 steps at ``beta2 = 0.999``), which
shrinks every later update; the joint clip bounds them. On the EfficientDet Shapes demo the
per-parameter clip learned markedly slower (BENCHMARKS.md / the demo config's header).
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["CLIP_TYPES", "FULL_MODEL", "check_clip_config", "with_gradient_clipping"]

FULL_MODEL = "full_model"
#: accepted ``CLIP_TYPE`` values: Detectron2's per-parameter ones and the joint one
CLIP_TYPES = ("value", "norm", FULL_MODEL)


def _full_model_clipping(
    optimizer_cls: type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> type[torch.optim.Optimizer]:
    """``optimizer_cls`` whose ``step`` first clips the joint norm of all its gradients."""

    def step(self, closure=None):
        grads = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch.nn.utils.clip_grad_norm_(grads, max_norm, norm_type)
        return optimizer_cls.step(self, closure)

    name = f"{optimizer_cls.__name__}FullModelGradientClipping"
    return type(name, (optimizer_cls,), {"step": step})


def check_clip_config(clip: CfgNode, key: str = "SOLVER.CLIP_GRADIENTS") -> None:
    """Raise ``ValueError`` naming the key when an enabled ``clip`` cannot be applied.

    Args:
        clip: a node with ``ENABLED``, ``CLIP_TYPE``, ``CLIP_VALUE`` and ``NORM_TYPE``.
        key: where ``clip`` comes from (a lower-case key such as the LazyConfig's
            ``optimizer.clip_gradients`` gets lower-case field names).
    """
    if not clip.ENABLED:
        return

    def name(field: str) -> str:
        return f"{key}.{field.lower() if key.islower() else field}"

    if str(clip.CLIP_TYPE) not in CLIP_TYPES:
        raise ValueError(
            f"{name('CLIP_TYPE')}: expected one of {', '.join(CLIP_TYPES)}, got {clip.CLIP_TYPE!r}"
        )
    if not float(clip.CLIP_VALUE) > 0.0:
        raise ValueError(
            f"{name('CLIP_VALUE')}: must be > 0 when clipping is enabled, got {clip.CLIP_VALUE}"
        )


def with_gradient_clipping(
    clip: CfgNode,
    optimizer_cls: type[torch.optim.Optimizer],
    key: str = "SOLVER.CLIP_GRADIENTS",
) -> type[torch.optim.Optimizer]:
    """``optimizer_cls`` with the clipping that ``clip`` (``SOLVER.CLIP_GRADIENTS``) asks for.

    Args:
        clip: a node with ``ENABLED``, ``CLIP_TYPE`` (:data:`CLIP_TYPES`), ``CLIP_VALUE`` and
            ``NORM_TYPE``.
        optimizer_cls: a ``torch.optim`` optimizer class.
        key: where ``clip`` comes from, for error messages (:func:`check_clip_config`).

    Returns:
        ``optimizer_cls`` itself when clipping is off, else a subclass that clips in ``step``.

    Raises:
        ValueError: an unknown ``CLIP_TYPE`` or a ``CLIP_VALUE`` that is not positive, naming
            the key.
    """
    if not clip.ENABLED:
        return optimizer_cls
    check_clip_config(clip, key)
    kind = str(clip.CLIP_TYPE)
    if kind == FULL_MODEL:
        return _full_model_clipping(optimizer_cls, float(clip.CLIP_VALUE), float(clip.NORM_TYPE))
    return maybe_add_gradient_clipping(
        CfgNode({"SOLVER": CfgNode({"CLIP_GRADIENTS": clip})}), optimizer_cls
    )
