# CornerNet, Hourglass-104, COCO: the paper's recipe (mmdet's packaged CornerNet config,
# 8 GPUs x 6 images, 511x511 random centre crops, Adam lr 5e-4, 210 epochs, step at 180,
# multi-scale-free single test with centre-crop padding) with the core network and losses.
# Paper: https://arxiv.org/abs/1808.01244
#
# Only the component types change; the backbone and head keep the base config's arguments
# (PluginsHourglassNet / PluginsCornerHead accept mmdet's HourglassNet / CornerHead keywords).
_base_ = [
    "mmdet::cornernet/cornernet_hourglass104_8xb6-210e-mstest_coco.py",
    "./_base_/plugins_runtime.py",  # the plugins' registrations and training hooks
]

model = dict(
    backbone=dict(type="PluginsHourglassNet"),
    bbox_head=dict(type="PluginsCornerHead"),
    test_cfg=dict(
        # mmdet's CornerHead ignores score_thr; 0.0 keeps every valid pair, as it does.
        score_thr=0.0,
        nms=dict(
            _delete_=True,
            type="plugins_soft_nms",
            method="gaussian",
            sigma=0.5,
            iou_threshold=0.5,
            min_score=0.001,
        ),
    ),
)

# mmdet's CornerNet test pipeline (no resize: a centre pad to the network's stride) with
# PluginsCheckImage first: grayscale / RGBA arrays become 3 channels
test_pipeline = [
    dict(type="LoadImageFromFile", to_float32=True, backend_args=None),
    dict(type="PluginsCheckImage"),
    dict(
        type="RandomCenterCropPad",
        crop_size=None,
        ratios=None,
        border=None,
        test_mode=True,
        test_pad_mode=["logical_or", 127],
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        to_rgb=True,
    ),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "border"),
    ),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
