"""Argument checks shared by the core functions.

Every public core function validates its tensors with these helpers so that bad input raises a
``ValueError`` that names the argument and the expected shape, e.g.
``ValueError: boxes: expected shape (N, 4), got (3, 5)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Dim = int | str | None  # int: exact size; str: named free size (same name => same size); None: any


def _fmt(spec: Sequence[Dim]) -> str:
    return "(" + ", ".join("*" if d is None else str(d) for d in spec) + ")"


def check_tensor(
    name: str,
    value: object,
    shape: Sequence[Dim] | None = None,
    *,
    floating: bool | None = None,
    sizes: dict[str, int] | None = None,
) -> Tensor:
    """Validate ``value`` and return it.

    Args:
        name: argument name used in the error message.
        value: the object to check; must be a ``torch.Tensor``.
        shape: expected shape; ints must match exactly, strings are named sizes that must agree
            across calls sharing ``sizes``, ``None`` matches anything.
        floating: ``True`` requires a floating dtype, ``False`` an integer/bool dtype.
        sizes: dict collecting named sizes across several checks (filled in place).

    Raises:
        ValueError: wrong type, rank, size or dtype; the message names ``name``.
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if shape is not None:
        if value.dim() != len(shape):
            raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {tuple(value.shape)}")
        seen = sizes if sizes is not None else {}
        for want, got in zip(shape, value.shape):
            if want is None:
                continue
            if isinstance(want, str):
                if want in seen and seen[want] != got:
                    raise ValueError(
                        f"{name}: expected shape {_fmt(shape)} with {want}={seen[want]}, "
                        f"got {tuple(value.shape)}"
                    )
                seen[want] = int(got)
            elif want != got:
                raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {tuple(value.shape)}")
    if floating is True and not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {value.dtype}")
    if floating is False and value.is_floating_point():
        raise ValueError(f"{name}: expected an integer tensor, got {value.dtype}")
    return value


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is > 0 (or >= 0 with ``allow_zero``)."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a value {bound}, got {value!r}")


__all__ = ["check_tensor", "check_choice", "check_positive", "torch"]
