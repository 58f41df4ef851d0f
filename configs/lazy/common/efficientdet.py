# EfficientDet recipe of the paper (https://arxiv.org/abs/1911.09070, section 5.1) on COCO 2017,
# the LazyConfig twin of configs/Base-EfficientDet.yaml: SGD momentum 0.9, weight decay 4e-5
# (not on BatchNorm), lr 0.16 at batch 128 with one epoch of linear warm-up then cosine decay,
# 300 epochs, EMA 0.9998, focal loss (alpha 0.25, gamma 1.5), Huber box loss (delta 0.1,
# weight 50), scale jitter [0.1, 2.0] with a square crop, horizontal flips, Gaussian Soft-NMS.
# Written for D0; leaves call use_variant(...) for the other variants.
from detectron2.config import LazyCall as L
from detectron2.modeling.matcher import Matcher
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler

from plugins.core.efficientdet import EfficientDet
from plugins.core.variants import get_variant
from plugins.d2.lazy import efficientdet_model, efficientdet_variant, optimizer_with_clipping

from .data import detection_loaders, scale_jitter
from .train import train

model = L(efficientdet_model)(
    # the core network: EfficientNet backbone + BiFPN + class/box nets of the variant
    network=L(EfficientDet)(
        variant=L(efficientdet_variant)(name="efficientdet_d0"),
        num_classes=80,
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

dataloader = detection_loaders(
    scale_jitter(512, 0.1, 2.0),
    test_min_size=512,
    test_max_size=512,
    image_format="RGB",
    batch_size=128,
    num_workers=4,
)

# 300 epochs of 118,287 images at batch 128 = 924 iterations per epoch
train.max_iter = 277200
train.checkpointer.period = 9240
train.ema.enabled = True
train.ema.decay = 0.9998

optimizer = L(optimizer_with_clipping)(
    optimizer="SGD",
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.16,
    momentum=0.9,
    nesterov=False,
    weight_decay=4e-5,
    # detectron2 clips per parameter; the paper clips the global norm at 10
    clip_gradients=dict(enabled=True, clip_type="norm", clip_value=10.0, norm_type=2.0),
)

# one epoch of linear warm-up from 0.005 x lr, then cosine decay to 0
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=924 / 277200,
    warmup_factor=0.005,
    warmup_method="linear",
)


def use_variant(name, model, dataloader, size=None):
    """Switch the recipe to another variant: network and input size (the variant's default)."""
    size = size or get_variant(name).image_size
    model.network.variant.name = name
    resize, crop = dataloader.train.mapper.augmentations[:2]
    resize.target_height = resize.target_width = size
    crop.crop_size = (size, size)
    test_resize = dataloader.test.mapper.augmentations[0]
    test_resize.short_edge_length = test_resize.max_size = size
