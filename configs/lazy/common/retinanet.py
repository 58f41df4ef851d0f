# RetinaNet R50-FPN through RetinaNetPlus (plugins.d2.retinanet): the LazyConfig twin of
# configs/Base-RetinaNet-Plugins.yaml + retinanet_R_50_FPN_1x.yaml (Detectron2's RetinaNet
# with the loss variants and Soft-NMS; with these values it computes what RetinaNet computes).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

from plugins.d2.retinanet import RetinaNetPlus

from .data import detection_loaders, shortest_edge
from .optim import optimizer_config
from .schedule import warmup_multistep
from .train import train

model = L(RetinaNetPlus)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        norm="",
        top_block=L(LastLevelP6P7)(in_channels=2048, out_channels="${..out_channels}"),
        fuse_type="sum",
    ),
    head=L(RetinaNetHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        norm="",
        prior_prob=0.01,
        num_anchors=9,
    ),
    anchor_generator=L(DefaultAnchorGenerator)(
        sizes=[[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]],
        aspect_ratios=[0.5, 1.0, 2.0],
        strides=[8, 16, 32, 64, 128],
        offset=0.0,
    ),
    box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
    anchor_matcher=L(Matcher)(
        thresholds=[0.4, 0.5], labels=[0, -1, 1], allow_low_quality_matches=True
    ),
    num_classes=80,
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    focal_loss_alpha=0.25,
    focal_loss_gamma=2.0,
    smooth_l1_beta=0.0,
    box_reg_loss_type="smooth_l1",
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.5,
    max_detections_per_image=100,
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    vis_period=0,
    input_format="BGR",
    # plugins: classification / box loss variants and Soft-NMS (MODEL.RETINANET.*, MODEL.NMS.*)
    cls_loss_type="sigmoid_focal",
    huber_delta=0.1,
    box_loss_weight=1.0,
    nms_type="hard",
    nms_iou_threshold=0.5,
    soft_nms_sigma=0.5,
    soft_nms_score_threshold=0.001,
)

dataloader = detection_loaders(
    shortest_edge((640, 672, 704, 736, 768, 800), 1333),
    test_min_size=800,
    test_max_size=1333,
    image_format="BGR",
    batch_size=16,
    num_workers=4,
)

optimizer = optimizer_config("SGD", 0.01, 1e-4, momentum=0.9, nesterov=False)

# 1x: 90k iterations, lr x0.1 at 60k and 80k, 1000 iterations of linear warm-up from 0.001 x lr
lr_multiplier = warmup_multistep(90000, (60000, 80000), 1000, 0.001)

train.max_iter = 90000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
