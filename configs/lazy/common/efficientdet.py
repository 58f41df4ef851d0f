# EfficientDet recipe of the paper (https://arxiv.org/abs/1911.09070, section 5.1) on COCO 2017,
# the LazyConfig twin of configs/Base-EfficientDet.yaml: SGD momentum 0.9, weight decay 4e-5
# (not on BatchNorm), lr 0.16 at batch 128 with one epoch of linear warm-up then cosine decay,
# 300 epochs, EMA 0.9998, focal loss (alpha 0.25, gamma 1.5), Huber box loss (delta 0.1,
# weight 50), scale jitter [0.1, 2.0] with a square crop, horizontal flips, Gaussian Soft-NMS.
import copy

from detectron2.config import LazyCall as L
from detectron2.modeling.matcher import Matcher

from plugins.core.efficientdet import EfficientDet
from plugins.core.variants import get_variant
from plugins.d2.lazy import efficientdet_model, efficientdet_variant

from .data import detection_loaders, scale_jitter
from .optim import optimizer_config
from .schedule import warmup_cosine
from .train import train as _train

ITERS_PER_EPOCH = 924  # 118,287 COCO images at batch 128


def efficientdet_model_config(variant, num_classes=80):
    """The EfficientDet meta-architecture around the core network of `variant`."""
    return L(efficientdet_model)(
        # the core network: EfficientNet backbone + BiFPN + class/box nets of the variant
        network=L(EfficientDet)(
            variant=L(efficientdet_variant)(name=variant),
            num_classes=num_classes,
        ),
        # IoU >= 0.5 foreground, < 0.5 background; each ground truth keeps its best anchor
        anchor_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=True),
        head_in_features=None,  # all backbone levels, p3..p7 (p3..p8 for D7x)
        cls_loss_type="sigmoid_focal",
        focal_loss_alpha=0.25,
        focal_loss_gamma=1.5,
        box_loss_type="huber",
        huber_delta=0.1,
        smooth_l1_beta=0.1,
        box_loss_weight=50.0,
        test_score_thresh=0.001,
        test_topk_candidates=1000,
        nms_type="gaussian",
        nms_iou_threshold=0.5,
        soft_nms_sigma=0.5,
        soft_nms_score_threshold=0.001,
        max_detections_per_image=100,
        # ImageNet mean/std of the EfficientNet backbones, RGB, 0-255 scale
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
        vis_period=0,
        input_format="RGB",
    )


def efficientdet_recipe(variant="efficientdet_d0", epochs=300):
    """(model, dataloader, optimizer, lr_multiplier, train) of `variant` on COCO 2017.

    The input size is the variant's (plugins/core/variants.py); 600 epochs for D7 / D7x.
    """
    size = get_variant(variant).image_size
    dataloader = detection_loaders(
        scale_jitter(size, 0.1, 2.0),
        test_min_size=size,
        test_max_size=size,
        image_format="RGB",
        batch_size=128,
        num_workers=4,
    )
    train = copy.deepcopy(_train)
    train.max_iter = max_iter = epochs * ITERS_PER_EPOCH
    train.checkpointer.period = 10 * ITERS_PER_EPOCH
    train.ema.enabled = True
    train.ema.decay = 0.9998
    # the paper clips the norm of all gradients together at 10 (Detectron2's own clip types
    # work per parameter; "full_model" is plugins.d2.optim's joint clip)
    sgd = optimizer_config(
        "SGD", 0.16, 4e-5, clip_norm=10.0, clip_type="full_model", momentum=0.9, nesterov=False
    )
    # one epoch of linear warm-up from 0.005 x lr, then cosine decay to 0
    schedule = warmup_cosine(max_iter, ITERS_PER_EPOCH, 0.005)
    return efficientdet_model_config(variant), dataloader, sgd, schedule, train
