# EfficientDet training recipe of the paper (https://arxiv.org/abs/1911.09070, Sec. 5.1), on
# COCO, written for D0; the efficientdet_d*.py leaves re-state what depends on the variant
# (variant name, image size, pipelines, batch size): mmengine evaluates this file on its own, so
# a leaf that only re-assigned `variant` or `image_size` would keep D0's model and pipelines.
#
#   SGD momentum 0.9, weight decay 4e-5, lr 0.16 for a total batch of 128 (scale it
#   linearly: --auto-scale-lr), 1 epoch of linear warm-up then cosine decay, 300 epochs;
#   scale jitter [0.1, 2.0] + crop to the image size; focal loss gamma 1.5 alpha 0.25;
#   Huber box loss delta 0.1 weight 50; EMA decay 0.9998; Gaussian soft-NMS at test time.
#   Mixed precision: python tools/mm_train.py CONFIG --amp (mmengine AmpOptimWrapper).
_base_ = [
    "mmdet::_base_/datasets/coco_detection.py",
    "mmdet::_base_/schedules/schedule_1x.py",
    "mmdet::_base_/default_runtime.py",
    "./efficientdet_model.py",  # the detector; the variant and the COCO values are set below
    "./plugins_runtime.py",
]

variant = "efficientdet_d0"  # key of plugins.core.variants.EFFICIENTDET_VARIANTS
image_size = 512  # EFFICIENTDET_VARIANTS[variant].image_size
pad_divisor = 128  # 2 ** max_level: the anchors then equal the core's exactly

model = dict(
    data_preprocessor=dict(
        pad_size_divisor=pad_divisor,
        batch_augments=[dict(type="BatchFixedSizePad", size=(image_size, image_size))],
    ),
    backbone=dict(variant=variant),
    neck=dict(variant=variant),
    bbox_head=dict(
        variant=variant,
        num_classes=80,
        anchor_generator=dict(variant=variant),
        loss_cls=dict(loss_weight=1.0),  # and 50.0 for the box loss (efficientdet_model.py)
    ),
    test_cfg=dict(nms_pre=5000, score_thr=0.001, nms=dict(min_score=0.001)),
)

backend_args = None
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="RandomResize",
        scale=(image_size, image_size),
        ratio_range=(0.1, 2.0),
        keep_ratio=True,
    ),
    dict(type="RandomCrop", crop_size=(image_size, image_size), allow_negative_crop=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="PluginsCheckImage", scale=(image_size, image_size)),  # grayscale, shape checks
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]
train_dataloader = dict(
    batch_size=16,  # x 8 GPUs = the paper's 128
    num_workers=8,
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 300
iters_per_epoch = 925  # COCO train2017 at a total batch of 128: one epoch of warm-up
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=10)
param_scheduler = [
    dict(
        type="LinearLR", start_factor=0.05, by_epoch=False, begin=0, end=iters_per_epoch
    ),  # 0.008 -> 0.16, as the TF recipe's lr_warmup_init
    dict(
        type="CosineAnnealingLR",
        eta_min=0.0,
        begin=1,
        end=max_epochs,
        T_max=max_epochs - 1,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.16, momentum=0.9, weight_decay=4e-5),
    paramwise_cfg=dict(norm_decay_mult=0.0, bypass_duplicate=True),
    clip_grad=dict(max_norm=10.0, norm_type=2),
)
auto_scale_lr = dict(enable=False, base_batch_size=128)

# EMA of the weights with decay 0.9998 (mmengine's momentum = 1 - decay), then the plugins'
# hooks (plugins_runtime.py: divergence guard, exact resume, publish of the EMA weights)
custom_hooks = [
    dict(
        type="EMAHook",
        ema_type="ExponentialMovingAverage",
        momentum=0.0002,
        update_buffers=True,
        priority=49,
    ),
    *_base_.custom_hooks,
]
default_hooks = dict(checkpoint=dict(type="CheckpointHook", interval=10, max_keep_ckpts=3))
