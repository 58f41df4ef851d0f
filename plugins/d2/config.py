"""Config keys of the Detectron2 adapters.

Call :func:`add_plugins_config` on a fresh ``get_cfg()`` before ``merge_from_file`` (as Detectron2's
projects do with their own ``add_*_config``); every key below then exists, with its default, and a
YAML file or a ``KEY VALUE`` override that names an unknown key fails with Detectron2's usual
``KeyError: 'Non-existent config key: ...'``.

New nodes:

- ``MODEL.EFFICIENTDET``: variant, classes, label assignment, losses and test-time candidates of
  the :class:`~plugins.d2.efficientdet.EfficientDet` meta-architecture.
- ``MODEL.NMS``: test-time NMS of ``EfficientDet`` and ``RetinaNetPlus`` (hard or Soft-NMS), and
  the Soft-NMS switch of Detectron2's own detectors (:mod:`plugins.d2.soft_nms`).
- ``MODEL.EMA``: exponential moving average of the weights (:mod:`plugins.d2.ema`).
- ``MODEL.RETINANET`` gains ``CLS_LOSS_TYPE``, ``HUBER_DELTA`` and ``BOX_LOSS_WEIGHT`` (read by
  :class:`~plugins.d2.retinanet.RetinaNetPlus`).
- ``INPUT.SCALE_JITTER``: EfficientDet's training augmentation (random rescale + fixed-size crop).
- ``SOLVER.OPTIMIZER``: ``"SGD"`` (Detectron2's default) or ``"AdamW"``.
- ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` gains ``"full_model"``: the norm of all gradients clipped
  together, as the EfficientDet paper and MMDetection's ``clip_grad`` do (:mod:`plugins.d2.optim`;
  Detectron2's ``"value"`` / ``"norm"`` clip each parameter on its own).
- ``SOLVER.DIVERGENCE_GUARD``: stop a diverging run, keep bad weights out of checkpoints
  (:mod:`plugins.d2.guard`).
- ``DATASETS.COCO_JSON``: your own COCO-format datasets, registered by name
  (:func:`plugins.d2.datasets.register_config_datasets`) for ``DATASETS.TRAIN`` / ``TEST``.
- the CornerNet keys of :func:`plugins.d2.cornernet.add_cornernet_config`.
- ``PUBLISH``: the model-zoo file written at the end of training
  (:func:`plugins.d2.publish.add_publish_config`).

Existing Detectron2 keys the recipes rely on: ``SOLVER.AMP.ENABLED`` (mixed precision,
``AMPTrainer``; needs CUDA), ``SOLVER.LR_SCHEDULER_NAME: WarmupCosineLR``,
``SOLVER.CLIP_GRADIENTS``, ``TEST.DETECTIONS_PER_IMAGE``.
"""

from __future__ import annotations

from detectron2.config import CfgNode as CN

from .cornernet import add_cornernet_config
from .publish import add_publish_config

__all__ = ["add_plugins_config", "NMS_TYPES", "CLS_LOSS_TYPES", "BOX_LOSS_TYPES"]

#: Values of ``MODEL.NMS.TYPE``.
NMS_TYPES = ("hard", "linear", "gaussian")
#: Values of ``MODEL.EFFICIENTDET.CLS_LOSS_TYPE`` / ``MODEL.RETINANET.CLS_LOSS_TYPE``.
CLS_LOSS_TYPES = ("sigmoid_focal", "alpha_balanced_bce")
#: Values of ``MODEL.EFFICIENTDET.BOX_LOSS_TYPE``.
BOX_LOSS_TYPES = ("huber", "smooth_l1")


def add_plugins_config(cfg: CN) -> None:
    """Add the plugins' config nodes to a Detectron2 config, in place.

    Calling it twice is harmless (existing nodes keep their values).

    Args:
        cfg: a Detectron2 config, normally ``detectron2.config.get_cfg()``.
    """
    _add_efficientdet_config(cfg)
    _add_nms_config(cfg)
    _add_ema_config(cfg)
    _add_retinanet_extras(cfg)
    _add_input_config(cfg)
    _add_solver_config(cfg)
    _add_divergence_guard_config(cfg)
    _add_datasets_config(cfg)
    add_cornernet_config(cfg)
    add_publish_config(cfg)


def _add_efficientdet_config(cfg: CN) -> None:
    if "EFFICIENTDET" in cfg.MODEL:
        return
    cfg.MODEL.EFFICIENTDET = node = CN()
    # Variant name from plugins.core.variants.EFFICIENTDET_VARIANTS: "efficientdet_d0" ...
    # "efficientdet_d7x", or the tiny "efficientdet_test" (used by tests and demos).
    node.VARIANT = "efficientdet_d0"
    # Overrides of the variant's table entry (0 keeps the table value), for small demos and
    # experiments: BiFPN width, BiFPN layers, head conv repeats, anchor size in strides.
    node.FPN_CHANNELS = 0
    node.FPN_REPEATS = 0
    node.HEAD_REPEATS = 0
    node.ANCHOR_SCALE = 0.0
    # Number of object classes (no background class). COCO: 80.
    node.NUM_CLASSES = 80
    # Backbone outputs fed to the heads, finest first (one per pyramid level of the variant);
    # empty = all backbone outputs (p3..p7, p3..p8 for D7x).
    node.IN_FEATURES = []
    # IoU thresholds / labels of detectron2's Matcher for anchor assignment. EfficientDet:
    # IoU >= 0.5 positive, < 0.5 negative, no ignore band; every ground truth also keeps its
    # best-matching anchor (allow_low_quality_matches).
    node.IOU_THRESHOLDS = [0.5]
    node.IOU_LABELS = [0, 1]
    # Classification loss: "sigmoid_focal" (focal loss) or "alpha_balanced_bce" (focal with
    # gamma = 0, i.e. alpha-balanced binary cross-entropy).
    node.CLS_LOSS_TYPE = "sigmoid_focal"
    # Focal loss alpha (weight of positives; < 0 disables balancing) and gamma (EfficientDet 1.5).
    node.FOCAL_LOSS_ALPHA = 0.25
    node.FOCAL_LOSS_GAMMA = 1.5
    # Box loss on the (ty, tx, th, tw) codes: "huber" (EfficientDet) or "smooth_l1".
    node.BOX_LOSS_TYPE = "huber"
    # Huber delta (EfficientDet: 0.1).
    node.HUBER_DELTA = 0.1
    # Smooth-L1 beta (used when BOX_LOSS_TYPE is "smooth_l1").
    node.SMOOTH_L1_BETA = 0.1
    # Weight of the box loss (EfficientDet: 50). The box loss is divided by 4 x (num positives
    # + 1) and the class loss by (num positives + 1), num positives counted over the batch.
    node.BOX_LOSS_WEIGHT = 50.0
    # Test: keep candidates with score > SCORE_THRESH_TEST, at most TOPK_CANDIDATES_TEST per
    # level, before NMS (MODEL.NMS).
    node.SCORE_THRESH_TEST = 0.05
    node.TOPK_CANDIDATES_TEST = 1000


def _add_nms_config(cfg: CN) -> None:
    if "NMS" in cfg.MODEL:
        return
    cfg.MODEL.NMS = node = CN()
    # Test-time NMS of EfficientDet and RetinaNetPlus: "hard" (torchvision batched NMS),
    # "linear" or "gaussian" (Soft-NMS, plugins.core.soft_nms.batched_soft_nms; per class).
    # "linear" / "gaussian" also switch Detectron2's own R-CNN ROI heads (Faster / Mask /
    # Cascade R-CNN) and RetinaNet to Soft-NMS (plugins.d2.soft_nms).
    node.TYPE = "hard"
    # Detectron2's RPN: Soft-NMS on its test-time proposals too (TYPE "linear" / "gaussian").
    node.APPLY_TO_RPN = False
    # IoU threshold of hard NMS and of linear Soft-NMS (RetinaNetPlus with TYPE "hard" keeps
    # using MODEL.RETINANET.NMS_THRESH_TEST).
    node.IOU_THRESHOLD = 0.5
    # Gaussian Soft-NMS sigma: scores decay by exp(-IoU^2 / sigma).
    node.SIGMA = 0.5
    # Soft-NMS drops boxes whose decayed score falls below this.
    node.SCORE_THRESHOLD = 0.001
    # Detections kept per image after NMS; -1 uses TEST.DETECTIONS_PER_IMAGE.
    node.MAX_DETECTIONS = -1


def _add_ema_config(cfg: CN) -> None:
    if "EMA" in cfg.MODEL:
        return
    cfg.MODEL.EMA = node = CN()
    # Keep an exponential moving average of the weights (and BN statistics), save it in the
    # checkpoints and evaluate with it.
    node.ENABLED = False
    # Decay per iteration (EfficientDet: 0.9998).
    node.DECAY = 0.9998
    # TensorFlow's num_updates warm-up: the decay used at update n is
    # min(DECAY, (1 + n) / (10 + n)), so short runs are not dominated by the initial weights.
    node.WARMUP = True


def _add_retinanet_extras(cfg: CN) -> None:
    node = cfg.MODEL.RETINANET
    if "CLS_LOSS_TYPE" in node:
        return
    # RetinaNetPlus: classification loss, "sigmoid_focal" (RetinaNet) or "alpha_balanced_bce".
    node.CLS_LOSS_TYPE = "sigmoid_focal"
    # RetinaNetPlus: Huber delta when BBOX_REG_LOSS_TYPE is "huber" (on Box2BoxTransform deltas).
    node.HUBER_DELTA = 0.1
    # RetinaNetPlus: weight of the box-regression loss.
    node.BOX_LOSS_WEIGHT = 1.0


def _add_input_config(cfg: CN) -> None:
    if "SCALE_JITTER" in cfg.INPUT:
        return
    cfg.INPUT.SCALE_JITTER = node = CN()
    # EfficientDet training augmentation: flip (INPUT.RANDOM_FLIP), resize the image by a random
    # factor in [MIN_SCALE, MAX_SCALE] of the SIZE x SIZE target (keeping the aspect ratio), then
    # a random crop (independent offsets) or padding at the right and bottom to SIZE x SIZE
    # (plugins.d2.augment). Replaces INPUT.MIN_SIZE_TRAIN.
    node.ENABLED = False
    node.MIN_SCALE = 0.1
    node.MAX_SCALE = 2.0
    # Output size in pixels; 0 uses the image size of MODEL.EFFICIENTDET.VARIANT.
    node.SIZE = 0


def _add_solver_config(cfg: CN) -> None:
    if "OPTIMIZER" in cfg.SOLVER:
        return
    # "SGD" (detectron2's build_optimizer: momentum, Nesterov, weight decay) or "AdamW"
    # (BASE_LR, WEIGHT_DECAY; same per-parameter-group rules).
    cfg.SOLVER.OPTIMIZER = "SGD"


def _add_divergence_guard_config(cfg: CN) -> None:
    if "DIVERGENCE_GUARD" in cfg.SOLVER:
        return
    cfg.SOLVER.DIVERGENCE_GUARD = node = CN()
    # Stop training with one error line (iteration, loss, lr) and a non-zero exit when the loss
    # diverges; never write a checkpoint with non-finite or exploded weights (plugins.d2.guard).
    node.ENABLED = True
    # A finite total loss above FACTOR x the median of the last WINDOW losses is a divergence
    # (0 turns this rule off; a NaN / inf loss always stops the run).
    node.FACTOR = 1000.0
    # Number of iterations whose losses are only recorded before the FACTOR rule applies.
    node.WARMUP = 20
    # Number of recent finite losses whose median is the reference.
    node.WINDOW = 100
    # A checkpoint whose weights (model or EMA) hold a value with |x| > MAX_WEIGHT is refused
    # (0: only non-finite values are refused).
    node.MAX_WEIGHT = 1e8


def _add_datasets_config(cfg: CN) -> None:
    if "COCO_JSON" in cfg.DATASETS:
        return
    # Your own COCO-format datasets: a list of (name, json_file, image_root) triples, each
    # registered as a Detectron2 dataset `name` (register_coco_instances) before DATASETS.TRAIN
    # and DATASETS.TEST are looked up, e.g. in YAML
    #   COCO_JSON: [["my_train", "data/my/train.json", "data/my/train"],
    #               ["my_val", "data/my/val.json", "data/my/val"]]
    # or tools/train_net.py --coco-dataset my_train data/my/train.json data/my/train.
    # Relative paths are resolved against the working directory. The model's NUM_CLASSES must
    # equal the number of categories in the json (checked when training starts).
    cfg.DATASETS.COCO_JSON = []
