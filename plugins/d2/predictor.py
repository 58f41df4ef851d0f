"""``Predictor``: Detectron2's ``DefaultPredictor`` for any image array a user may hand it.

Detectron2's ``DefaultPredictor`` takes ``(H, W, 3)`` arrays only: a 2-D grayscale array
fails inside it with a numpy indexing error, and an image so elongated that its test resize
gives a 0 px side (1 x 5000 at ``INPUT.MAX_SIZE_TEST`` 256) fails in the resize.
:class:`Predictor` first passes the image through :mod:`plugins.core.image_input`:

* ``(H, W)`` / ``(H, W, 1)`` grayscale -> 3 channels; ``(H, W, 4)`` -> alpha dropped;
  anything else -> ``ValueError`` naming the shape;
* a too elongated image is zero-padded at the bottom / right just enough, and the
  predictions are clipped back to the original image (boxes wholly in the padding dropped).

The returned ``instances`` always have the caller's ``(H, W)`` as ``image_size``. Use::

    from plugins.d2.predictor import Predictor
    predictor = Predictor(cfg)            # cfg with MODEL.WEIGHTS, as DefaultPredictor
    instances = predictor(image)["instances"]
"""

from __future__ import annotations

import numpy as np
import torch
from detectron2.engine import DefaultPredictor
from detectron2.structures import Instances

from plugins.core.image_input import as_three_channels, pad_for_resize

__all__ = ["Predictor"]


class Predictor(DefaultPredictor):
    """``DefaultPredictor`` that accepts grayscale / RGBA arrays and extreme aspect ratios.

    Args:
        cfg: as for ``DefaultPredictor`` (``MODEL.WEIGHTS`` is loaded, ``INPUT.FORMAT``
            gives the channel order the caller uses).
    """

    def __call__(self, original_image: np.ndarray) -> dict:
        """Predict on one image.

        Args:
            original_image: ``(H, W, 3)`` in ``cfg.INPUT.FORMAT`` order, ``(H, W)`` or
                ``(H, W, 1)`` grayscale, or ``(H, W, 4)`` (alpha dropped); integer or float.

        Returns:
            ``DefaultPredictor``'s output; ``instances.image_size == (H, W)``.

        Raises:
            ValueError: an input of another shape or dtype, naming it.
        """
        image = as_three_channels(original_image, "original_image")
        height, width = image.shape[:2]
        image = pad_for_resize(image, self.aug.max_size)
        predictions = super().__call__(image)
        if image.shape[:2] != (height, width) and "instances" in predictions:
            predictions["instances"] = _crop_instances(predictions["instances"], height, width)
        return predictions


def _crop_instances(instances: Instances, height: int, width: int) -> Instances:
    """Clip boxes to ``(height, width)``, drop the empty ones, set the image size."""
    fields = instances.get_fields()
    keep = torch.ones(len(instances), dtype=torch.bool)
    if "pred_boxes" in fields:
        boxes = fields["pred_boxes"].clone()
        boxes.clip((height, width))
        fields = {**fields, "pred_boxes": boxes}
        keep = boxes.nonempty()
    return Instances((height, width), **fields)[keep]
