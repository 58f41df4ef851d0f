"""Training augmentation of the Detectron2 adapter: ``INPUT.SCALE_JITTER``.

EfficientDet's scale jitter, as the paper's reference input pipeline does it: a horizontal
flip, then the image rescaled to fit ``S * scale`` for a random ``scale``, then a random
``S x S`` crop, or padding at the right and bottom when the image is smaller. The crop's
vertical and horizontal offsets are drawn independently.

Detectron2's ``FixedSizeCrop`` draws one number for both offsets, so its crops lie on the
diagonal of the possible offsets (top-left, centre, bottom-right, never top-right), and a flip
placed after it moves the padding to the left in half of the padded images;
:func:`scale_jitter_augmentations` puts the flip first and crops with
:class:`RandomFixedSizeCrop`. CornerNet's recipe uses the same augmentation.
"""

from __future__ import annotations

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import CropTransform, Transform

__all__ = ["RandomFixedSizeCrop", "scale_jitter_augmentations"]


class RandomFixedSizeCrop(T.FixedSizeCrop):
    """``FixedSizeCrop`` whose crop offsets along y and x are drawn independently.

    Args:
        crop_size: ``(height, width)`` of the output.
        pad: pad a smaller image at the right and bottom to ``crop_size``. Default ``True``.
        pad_value: the padding's pixel value. Default 128 (as ``FixedSizeCrop``).
    """

    def _get_crop(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        out_h, out_w = self.crop_size
        # uniform in [0, largest offset], one draw per axis
        y0 = int(np.round(max(height - out_h, 0) * np.random.uniform(0.0, 1.0)))
        x0 = int(np.round(max(width - out_w, 0) * np.random.uniform(0.0, 1.0)))
        return CropTransform(x0, y0, out_w, out_h, width, height)


def scale_jitter_augmentations(
    size: int, min_scale: float, max_scale: float, flip: str = "horizontal"
) -> list[T.Augmentation]:
    """Flip, ``ResizeScale(min_scale, max_scale, size, size)``, ``RandomFixedSizeCrop``.

    Args:
        size: the square output side ``S``.
        min_scale, max_scale: range of the random scale of the ``S x S`` target.
        flip: ``"horizontal"``, ``"vertical"`` or ``"none"`` (``INPUT.RANDOM_FLIP``).

    Returns:
        The augmentations, in order.
    """
    augs: list[T.Augmentation] = []
    if flip != "none":
        augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
    augs += [
        T.ResizeScale(min_scale, max_scale, size, size),
        RandomFixedSizeCrop((size, size)),
    ]
    return augs
