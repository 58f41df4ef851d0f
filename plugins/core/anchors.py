"""Multi-level anchor boxes of EfficientDet / RetinaNet.

Paper: EfficientDet, Tan et al. 2020, https://arxiv.org/abs/1911.09070 (anchors as in RetinaNet,
Focal Loss for Dense Object Detection, Lin et al. 2017, https://arxiv.org/abs/1708.02002).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from plugins.core._validate import check_positive


def feature_sizes(image_size: tuple[int, int], max_level: int) -> list[tuple[int, int]]:
    """Feature map sizes of levels ``0..max_level`` (level ``l`` halves level ``l - 1``, rounding up).

    Args:
        image_size: ``(H, W)`` of the input.
        max_level: coarsest level.

    Returns:
        ``max_level + 1`` pairs ``(H_l, W_l)``; entry 0 is ``image_size``.
    """
    h, w = int(image_size[0]), int(image_size[1])
    sizes = [(h, w)]
    for _ in range(max_level):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        sizes.append((h, w))
    return sizes


def _as_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if len(image_size) != 2:
        raise ValueError(f"image_size: expected (H, W), got {image_size!r}")
    h, w = int(image_size[0]), int(image_size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size: expected positive (H, W), got {image_size!r}")
    return h, w


def generate_anchors(
    image_size: int | Sequence[int],
    min_level: int = 3,
    max_level: int = 7,
    num_scales: int = 3,
    aspect_ratios: Sequence[tuple[float, float] | float] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4)),
    anchor_scale: float | Sequence[float] = 4.0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Generate the anchors of every level, ordered level, y, x, anchor.

    On level ``l`` with stride ``s = image_size / size_l`` (``2**l`` when divisible) the anchors of
    a cell centred at ``((x + 0.5) s, (y + 0.5) s)`` have, for octave ``o`` in
    ``range(num_scales)`` and aspect ``(a_w, a_h)``, width ``anchor_scale * s * 2**(o / num_scales)
    * a_w`` and height ``... * a_h``. Within a cell the anchor index is ``o * len(aspect_ratios) + a``.
    A scalar aspect ratio ``r`` means ``(sqrt(r), 1 / sqrt(r))``.

    Args:
        image_size: ``(H, W)`` input size (an int means square).
        min_level: finest level. Default 3.
        max_level: coarsest level. Default 7.
        num_scales: octave scales per location. Default 3.
        aspect_ratios: ``(w, h)`` multipliers. Default ``((1, 1), (1.4, 0.7), (0.7, 1.4))``.
        anchor_scale: base size in strides, one value or one per level. Default 4.0.
        device: device of the result. Default CPU.

    Returns:
        ``Tensor[sum_l H_l * W_l * A, 4]`` float32 ``(x1, y1, x2, y2)`` boxes,
        ``A = num_scales * len(aspect_ratios)``.

    Raises:
        ValueError: non-positive sizes/counts, ``max_level < min_level``, or a per-level
            ``anchor_scale`` of the wrong length.
    """
    h, w = _as_size(image_size)
    check_positive("num_scales", num_scales)
    check_positive("min_level", min_level, allow_zero=True)
    if max_level < min_level:
        raise ValueError(f"max_level: expected >= min_level={min_level}, got {max_level}")
    if len(aspect_ratios) == 0:
        raise ValueError("aspect_ratios: expected at least one aspect ratio, got none")
    num_levels = max_level - min_level + 1
    if isinstance(anchor_scale, (int, float)):
        scales = [float(anchor_scale)] * num_levels
    else:
        scales = [float(s) for s in anchor_scale]
        if len(scales) != num_levels:
            raise ValueError(
                f"anchor_scale: expected one value or {num_levels} values, got {len(scales)}"
            )
    ratios = []
    for r in aspect_ratios:
        if isinstance(r, (int, float)):
            aw = float(r) ** 0.5
            ratios.append((aw, 1.0 / aw))
        else:
            ratios.append((float(r[0]), float(r[1])))

    sizes = feature_sizes((h, w), max_level)
    out = []
    f64 = dict(dtype=torch.float64, device=device)
    for k, level in enumerate(range(min_level, max_level + 1)):
        sy, sx = h / sizes[level][0], w / sizes[level][1]
        half = torch.tensor(
            [
                [
                    scales[k] * sx * 2 ** (o / num_scales) * aw / 2.0,
                    scales[k] * sy * 2 ** (o / num_scales) * ah / 2.0,
                ]
                for o in range(num_scales)
                for aw, ah in ratios
            ],
            **f64,
        )  # (A, 2) half width, half height
        cx = torch.arange(sx / 2, w, sx, **f64)
        cy = torch.arange(sy / 2, h, sy, **f64)
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        centers = torch.stack((gx.reshape(-1), gy.reshape(-1)), dim=1)[:, None, :]  # (HW, 1, 2)
        boxes = torch.cat((centers - half, centers + half), dim=2)  # (HW, A, 4)
        out.append(boxes.reshape(-1, 4))
    return torch.cat(out).to(torch.float32)


__all__ = ["feature_sizes", "generate_anchors"]
