"""Checks shared by the Faster R-CNN demo tests of both frameworks (soft vs hard NMS outputs)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou


def rectangles_image(size: int = 256, seed: int = 0) -> np.ndarray:
    """A ``size x size`` BGR ``uint8`` image with four filled rectangles (seeded)."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 90, np.uint8)
    for x, y, w, h in rng.integers([0, 0, 20, 20], [size - 56, size - 56, 60, 60], (4, 4)):
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return image


def max_same_class_iou(boxes: Tensor, labels: Tensor) -> float:
    """The largest IoU between two different boxes of one class (``boxes: [N, 4]`` x1y1x2y2)."""
    iou = box_iou(boxes, boxes)
    same = labels[:, None] == labels[None, :]
    return float(torch.where(same, iou, 0.0).fill_diagonal_(0.0).max())


def assert_soft_decays_hard(soft: tuple, hard: tuple) -> None:
    """``(boxes, scores, labels)`` of one model and image after soft and after hard NMS (no cut).

    The top box is the same and undecayed; boxes kept by both never score higher after soft-NMS
    and some (those overlapping a higher one) score lower; soft-NMS keeps more boxes.
    """
    (boxes, scores, labels), (hboxes, hscores, hlabels) = soft, hard
    assert torch.equal(boxes[0], hboxes[0]) and float(scores[0]) == float(hscores[0])
    by_key = {(int(c), *b.tolist()): float(s) for b, s, c in zip(hboxes, hscores, hlabels)}
    pairs = [
        (float(s), by_key.get((int(c), *b.tolist()))) for b, s, c in zip(boxes, scores, labels)
    ]
    pairs = [(s, h) for s, h in pairs if h is not None]
    assert all(s <= h for s, h in pairs)
    assert any(s < h for s, h in pairs)
    assert len(boxes) > len(hboxes)  # suppressed boxes stay, with decayed scores
