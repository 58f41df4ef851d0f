"""CornerNet for Detectron2: config keys, Hourglass backbone and the ``CornerNet`` meta-arch.

`CornerNet: Detecting Objects as Paired Keypoints <https://arxiv.org/abs/1808.01244>`_.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_cornernet_config"]


def add_cornernet_config(cfg: CN) -> None:
    """Add the ``MODEL.HOURGLASS`` and ``MODEL.CORNERNET`` nodes (in place).

    Defaults follow the paper's Hourglass-104 CornerNet (mmdet's
    ``cornernet_hourglass104`` config) on COCO.

    Args:
        cfg: a Detectron2 config, e.g. from ``detectron2.config.get_cfg()``.
    """
    cfg.MODEL.HOURGLASS = CN()
    # How many times each hourglass module halves the resolution (5 in Hourglass-104).
    cfg.MODEL.HOURGLASS.DOWNSAMPLE_TIMES = 5
    # Number of stacked hourglass modules; each one feeds the head (2 in Hourglass-104).
    cfg.MODEL.HOURGLASS.NUM_STACKS = 2
    # Channels per hourglass level, outermost first (length DOWNSAMPLE_TIMES + 1).
    cfg.MODEL.HOURGLASS.STAGE_CHANNELS = [256, 256, 384, 384, 384, 512]
    # Residual blocks per hourglass level, outermost first (length DOWNSAMPLE_TIMES + 1).
    cfg.MODEL.HOURGLASS.STAGE_BLOCKS = [2, 2, 2, 2, 2, 4]
    # Channels of the per-stack output feature maps (stride 4) given to the head.
    cfg.MODEL.HOURGLASS.FEAT_CHANNELS = 256

    cfg.MODEL.CORNERNET = CN()
    # Number of object classes (80 for COCO).
    cfg.MODEL.CORNERNET.NUM_CLASSES = 80
    # Channels of the associative embedding per corner (1 in the paper).
    cfg.MODEL.CORNERNET.CORNER_EMB_CHANNELS = 1
    # Weight of the Gaussian focal heatmap loss.
    cfg.MODEL.CORNERNET.HEATMAP_WEIGHT = 1.0
    # Focal exponent on (1 - p) at positives / p at negatives (alpha in the paper).
    cfg.MODEL.CORNERNET.FOCAL_ALPHA = 2.0
    # Exponent of the (1 - gaussian) penalty reduction at negatives (beta in the paper).
    cfg.MODEL.CORNERNET.FOCAL_BETA = 4.0
    # Weight of the embedding "pull" loss (groups the two corners of one object).
    cfg.MODEL.CORNERNET.PULL_WEIGHT = 0.1
    # Weight of the embedding "push" loss (separates corners of different objects).
    cfg.MODEL.CORNERNET.PUSH_WEIGHT = 0.1
    # Weight of the sub-pixel corner offset (smooth L1) loss.
    cfg.MODEL.CORNERNET.OFFSET_WEIGHT = 1.0
    # Min IoU a box made from corners inside the Gaussian radius keeps with the ground truth.
    cfg.MODEL.CORNERNET.GAUSSIAN_MIN_OVERLAP = 0.3
    # Top-k corners per heatmap kept when decoding (k^2 candidate pairs per image).
    cfg.MODEL.CORNERNET.TOPK = 100
    # Max-pooling kernel used as heatmap NMS before picking the top-k corners.
    cfg.MODEL.CORNERNET.LOCAL_MAXIMUM_KERNEL = 3
    # Pairs whose embeddings differ by more than this L1 distance are rejected.
    cfg.MODEL.CORNERNET.DISTANCE_THRESHOLD = 0.5
    # Decoded pairs with a score at or below this are dropped before soft-NMS.
    cfg.MODEL.CORNERNET.SCORE_THRESH_TEST = 0.0
    # Detections kept per image after soft-NMS.
    cfg.MODEL.CORNERNET.MAX_DETECTIONS = 100

    cfg.MODEL.CORNERNET.SOFT_NMS = CN()
    # Whether to run class-wise soft-NMS at test time (the paper does).
    cfg.MODEL.CORNERNET.SOFT_NMS.ENABLED = True
    # Score decay: "gaussian", "linear" or "hard" (plain NMS).
    cfg.MODEL.CORNERNET.SOFT_NMS.METHOD = "gaussian"
    # Gaussian decay exp(-iou^2 / sigma).
    cfg.MODEL.CORNERNET.SOFT_NMS.SIGMA = 0.5
    # IoU above which "linear" / "hard" decay applies (unused by "gaussian").
    cfg.MODEL.CORNERNET.SOFT_NMS.IOU_THRESHOLD = 0.5
    # Boxes whose decayed score falls below this are discarded.
    cfg.MODEL.CORNERNET.SOFT_NMS.SCORE_THRESHOLD = 0.001
