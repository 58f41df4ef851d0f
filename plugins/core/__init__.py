"""Framework-free math and networks (pure torch + torchvision).

Importing this package must not import detectron2, mmdet, mmcv or mmengine (a test asserts it).

Main entry points, by paper:

- Focal Loss for Dense Object Detection (RetinaNet): :func:`sigmoid_focal_loss`,
  :func:`alpha_balanced_bce`, :func:`prior_prob_bias`, box losses :func:`huber_loss`,
  :func:`smooth_l1_loss`.
- EfficientDet: :class:`EfficientDet`, :data:`EFFICIENTDET_VARIANTS` (D0-D7, D7x, test),
  :class:`EfficientNet`, :class:`BiFPN`, :class:`WeightedFusion`, :func:`generate_anchors`,
  :func:`encode_boxes` / :func:`decode_boxes`.
- CornerNet: :class:`HourglassNet`, :class:`CornerNetHead`, :func:`corner_pool`,
  :func:`gaussian_radius`, :func:`cornernet_targets`, :func:`cornernet_loss`,
  :func:`decode_corners`, :func:`gaussian_focal_loss`.
- Soft-NMS: :func:`soft_nms`, :func:`batched_soft_nms`.
"""

from plugins.core.anchors import generate_anchors
from plugins.core.bifpn import BiFPN
from plugins.core.box_coder import decode_boxes, encode_boxes
from plugins.core.box_loss import huber_loss, smooth_l1_loss
from plugins.core.corner_pool import BottomRightPool, CornerPool, TopLeftPool, corner_pool
from plugins.core.cornernet import (
    CornerNet,
    CornerNetHead,
    cornernet_loss,
    cornernet_targets,
    decode_corners,
    gaussian_radius,
)
from plugins.core.efficientdet import EfficientDet
from plugins.core.efficientnet import EfficientNet, efficientnet
from plugins.core.focal_loss import (
    GaussianFocalLoss,
    SigmoidFocalLoss,
    alpha_balanced_bce,
    gaussian_focal_loss,
    prior_prob_bias,
    sigmoid_focal_loss,
)
from plugins.core.fusion import WeightedFusion
from plugins.core.hourglass import HourglassNet
from plugins.core.soft_nms import batched_soft_nms, soft_nms
from plugins.core.variants import EFFICIENTDET_VARIANTS, EfficientDetVariant, get_variant

__all__ = [
    "BiFPN",
    "BottomRightPool",
    "CornerNet",
    "CornerNetHead",
    "CornerPool",
    "EFFICIENTDET_VARIANTS",
    "EfficientDet",
    "EfficientDetVariant",
    "EfficientNet",
    "GaussianFocalLoss",
    "HourglassNet",
    "SigmoidFocalLoss",
    "TopLeftPool",
    "WeightedFusion",
    "alpha_balanced_bce",
    "batched_soft_nms",
    "corner_pool",
    "cornernet_loss",
    "cornernet_targets",
    "decode_boxes",
    "decode_corners",
    "efficientnet",
    "encode_boxes",
    "gaussian_focal_loss",
    "gaussian_radius",
    "generate_anchors",
    "get_variant",
    "huber_loss",
    "prior_prob_bias",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "soft_nms",
]
