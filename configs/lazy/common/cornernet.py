# CornerNet, Hourglass-104, on COCO 2017 (https://arxiv.org/abs/1808.01244, section 4.1): the
# LazyConfig twin of configs/cornernet_hourglass104.yaml (see its header for the recipe and
# its deviations from the paper): 511 px crops of images rescaled by [0.6, 1.3], flips, Adam
# lr 2.45e-4 at batch 48 for 510,417 iterations (x0.1 at 459,375), pull / push 0.1, Gaussian
# Soft-NMS at test on the original resolution.
from detectron2.config import LazyCall as L

from plugins.core.cornernet import CornerNetHead
from plugins.core.hourglass import HourglassNet
from plugins.d2.cornernet import CornerNet, CornerNetPredictor, HourglassBackbone

from .data import detection_loaders, scale_jitter
from .optim import optimizer_config
from .schedule import warmup_multistep
from .train import train

model = L(CornerNet)(
    backbone=L(HourglassBackbone)(
        body=L(HourglassNet)(
            downsample_times=5,
            num_stacks=2,
            stage_channels=[256, 256, 384, 384, 384, 512],
            stage_blocks=[2, 2, 2, 2, 2, 4],
            feat_channel=256,
        )
    ),
    head=L(CornerNetPredictor)(
        net=L(CornerNetHead)(
            num_classes="${...num_classes}",
            in_channels="${...backbone.body.feat_channel}",
            num_feat_levels="${...backbone.body.num_stacks}",
            corner_emb_channels=1,
            pool_channels=128,
            hidden_channels=256,
        )
    ),
    num_classes=80,
    # ImageNet mean/std, RGB, 0-255 scale (as mmdet's CornerNet)
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
    heatmap_weight=1.0,
    pull_weight=0.1,
    push_weight=0.1,
    offset_weight=1.0,
    min_overlap=0.3,
    topk=100,
    local_maximum_kernel=3,
    distance_threshold=0.5,
    pre_nms_topk=1000,
    score_thresh=0.0,
    max_detections=100,
    soft_nms_enabled=True,
    soft_nms_method="gaussian",
    soft_nms_sigma=0.5,
    soft_nms_iou_threshold=0.5,
    soft_nms_score_threshold=0.001,
)

# test at the original resolution (0 = no resize); padded to a multiple of 128
dataloader = detection_loaders(
    scale_jitter(511, 0.6, 1.3),
    test_min_size=0,
    test_max_size=10000,
    image_format="RGB",
    batch_size=48,
    num_workers=4,
)

# Adam = AdamW without weight decay
optimizer = optimizer_config("AdamW", 0.000245, 0.0)

lr_multiplier = warmup_multistep(510417, (459375,), 0, 0.001)

train.max_iter = 510417
train.checkpointer.period = 10000
