"""Inference inputs: image arrays the predictors of both frameworks accept (numpy only).

The detectors take ``(H, W, 3)`` images; the predictors (:class:`plugins.d2.predictor.Predictor`
and the ``PluginsCheckImage`` step of our MMDetection test pipelines) pass what users hand
them through these functions first:

* :func:`as_three_channels`: grayscale ``(H, W)`` / ``(H, W, 1)`` is replicated into three
  channels, a 4th (alpha) channel is dropped, anything else is a ``ValueError`` naming the
  shape or dtype;
* :func:`resized_size`: the size the keep-ratio test resize gives (Detectron2's
  ``ResizeShortestEdge`` and mmcv's ``rescale_size`` use the same rule); a side of 0 px
  is what breaks the frameworks on very elongated images such as 1 x 5000;
* :func:`pad_for_resize`: zero-pads the bottom / right just enough that no side becomes
  0 px (coordinates of the original pixels are unchanged).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["as_three_channels", "pad_for_resize", "resized_size"]


def as_three_channels(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Return ``image`` as an ``(H, W, 3)`` array of the same dtype.

    Args:
        image: ``(H, W)`` or ``(H, W, 1)`` grayscale, ``(H, W, 3)``, or ``(H, W, 4)`` (the
            4th channel, alpha, is dropped). Integer or floating dtype.
        name: what to call the argument in error messages. Default ``"image"``.

    Returns:
        ``image`` itself when already ``(H, W, 3)``, else a new ``(H, W, 3)`` array (the gray
        channel replicated, or the first three channels).

    Raises:
        ValueError: not a numpy array, an empty image, another number of dimensions or
            channels, or a non-numeric dtype.
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"{name}: expected a numpy array of shape (H, W, 3) (or (H, W) grayscale), "
            f"got {type(image).__name__}"
        )
    if image.dtype == bool or not (
        np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    ):
        raise ValueError(f"{name}: expected an integer or float image, got dtype {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"{name}: expected shape (H, W, 3), (H, W) or (H, W, 1) grayscale, or (H, W, 4) "
            f"with alpha, got {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name}: empty image of shape {tuple(image.shape)}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    return image


def resized_size(height: int, width: int, short: float, long: float) -> tuple[int, int]:
    """Output ``(height, width)`` of the keep-ratio resize of the test pipelines.

    The scale is the largest that keeps the shorter side <= ``short`` and the longer side
    <= ``long`` (Detectron2: ``ResizeShortestEdge(short, max_size=long)`` when it scales the
    short side up to ``short``; mmcv: ``rescale_size((w, h), (long, short))``), and sides are
    rounded half up.

    Args:
        height, width: input size (> 0).
        short, long: target of the shorter and the longer side (> 0).

    Returns:
        ``(new_height, new_width)``; a side can be 0 for very elongated inputs.
    """
    scale = min(short / min(height, width), long / max(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def pad_for_resize(image: np.ndarray, long: float) -> np.ndarray:
    """Zero-pad the shorter side so that a resize to longer side ``long`` keeps it >= 1 px.

    With the shorter side ``s >= ceil(longer / long)``, the scale of :func:`resized_size` is
    ``min(short / s, long / longer)``, so that side becomes ``min(short, s * long / longer)
    >= min(short, 1)``: at least 1 px for any ``short >= 1``. Rows are added at the bottom,
    columns at the right, so the original pixels keep their coordinates.

    Args:
        image: ``(H, W, C)`` array.
        long: the resize's limit on the longer side (Detectron2 ``INPUT.MAX_SIZE_TEST``,
            mmdet ``max(scale)``).

    Returns:
        ``image`` itself when no padding is needed, else the padded copy.
    """
    h, w = image.shape[:2]
    need = math.ceil(max(h, w) / long)
    pad_h, pad_w = (max(0, need - h), 0) if h <= w else (0, max(0, need - w))
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (image.ndim - 2))
