"""``PluginsCheckImage``: the first step of our MMDetection test pipelines after loading.

mmdet's ``inference_detector`` and ``DetInferencer`` feed numpy arrays through the config's
test pipeline; a 2-D grayscale array then fails in the data preprocessor (``index 2 is out of
bounds``) and a 1 x 5000 image in OpenCV's resize (``inv_scale_x > 0``). This transform,
placed right after ``LoadImageFromFile`` in our configs::

    dict(type="PluginsCheckImage", scale=(image_size, image_size)),

makes grayscale ``(H, W)`` / ``(H, W, 1)`` images 3-channel, drops an alpha channel, and
raises a ``ValueError`` naming the shape for anything else, and for an image the following
keep-ratio ``Resize(scale)`` would shrink to 0 px on a side
(:mod:`plugins.core.image_input`).
"""

from __future__ import annotations

import math

from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

from plugins.core.image_input import as_three_channels, resized_size

__all__ = ["PluginsCheckImage"]


@TRANSFORMS.register_module()
class PluginsCheckImage(BaseTransform):
    """Make ``results["img"]`` a 3-channel image the test resize can handle, or fail clearly.

    Args:
        scale: the ``scale`` of the keep-ratio ``Resize`` that follows, ``(w, h)`` or
            ``(h, w)`` (only its min and max matter); ``None`` skips the size check.
            Default ``None``.

    Raises (in ``transform``):
        ValueError: an image of another shape or dtype, or one the resize would make 0 px
            high or wide.
    """

    def __init__(self, scale: tuple[int, int] | None = None) -> None:
        self.scale = tuple(scale) if scale is not None else None

    def transform(self, results: dict) -> dict:
        img = as_three_channels(results["img"], "img")
        height, width = img.shape[:2]
        if self.scale is not None:
            short, long = min(self.scale), max(self.scale)
            new_h, new_w = resized_size(height, width, short, long)
            if new_h == 0 or new_w == 0:
                raise ValueError(
                    f"img: an image of {height} x {width} px (height x width) would be resized "
                    f"to {new_h} x {new_w} px to fit the test scale {self.scale}; pad its "
                    f"shorter side to at least {math.ceil(max(height, width) / long)} px or "
                    "crop it"
                )
        results["img"] = img
        results["img_shape"] = (height, width)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale})"
