# EfficientDet on the embedded Shapes dataset (generated on first use), sized to train on a
# CPU from scratch (no pretrained weights are downloadable here):
#   OMP_NUM_THREADS=1 python tools/mm_train.py configs/mmdet/demo/efficientdet_shapes.py
# (one thread per process: on a CPU shared with other jobs, oversubscribed OpenMP threads made
# an iteration 10-20x slower in our measurements).
#
# The same recipe as the Detectron2 demo (configs/demo/efficientdet_shapes.yaml): the
# efficientdet_demo variant (EfficientNet width 0.5, depth 0.35, BiFPN 64 x 2, head 2, no
# stochastic depth), 256 px, anchor_scale 3 (24 px anchors on P3 for the 9-166 px shapes),
# milder scale jitter [0.8, 1.2], AdamW lr 5e-3 with 50 warm-up iterations times a cosine decay
# over all 1400 iterations (35 epochs of 40 full batches: all 320 images, the 4 without objects
# included, as the Detectron2 demo with FILTER_EMPTY_ANNOTATIONS False), EMA decay 0.995. Losses,
# box coding, anchor layout and soft-NMS are the paper's.
# Measured 2026-11-30 (this file, 2 cores shared with other jobs, load 3-8, nice 10): 30:14
# wall, 928 s user + 89 s system CPU; shapes_val bbox_mAP 0.491, mAP_50 0.705, mAP_75 0.603.
# The Detectron2 demo, same schedule and images: AP 49.2 / AP50 70.3 / AP75 60.0 since it clips
# the norm of all gradients together as clip_grad does here (CLIP_TYPE "full_model"); with
# Detectron2's per-parameter clip it had reached 36.3 / 56.2 (those weights scored 0.365 / 0.563
# here too: the gap was training, not evaluation). With its scale jitter in the paper's order
# (flip first, independent crop offsets, as here) it measured 46.5 (seed 42) and 43.3 (seed 7):
# single runs, see its header. (Earlier recipe, 25 epochs = 1000
# iterations, 2026-11-23: 9:00 wall, 453 s CPU, mAP 0.326 / mAP_50 0.506.)
_base_ = ["../_base_/efficientdet_model.py", "../_base_/shapes_demo.py"]

variant = dict(
    base="efficientdet_demo",  # plugins/core/variants.py
    anchor_scale=3.0,  # 24 px anchors on P3 for the small shapes
)
image_size = 256
num_classes = 6  # plugins.data.shapes.SHAPES_CLASSES

model = dict(
    data_preprocessor=dict(
        pad_size_divisor=128,
        batch_augments=[dict(type="BatchFixedSizePad", size=(image_size, image_size))],
    ),
    backbone=dict(variant=variant),
    neck=dict(variant=variant),
    bbox_head=dict(
        variant=variant, num_classes=num_classes, anchor_generator=dict(variant=variant)
    ),
    test_cfg=dict(nms_pre=1000, score_thr=0.01, nms=dict(min_score=0.01)),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="RandomResize",
        scale=(image_size, image_size),
        ratio_range=(0.8, 1.2),
        keep_ratio=True,
    ),
    dict(type="RandomCrop", crop_size=(image_size, image_size), allow_negative_crop=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="PluginsCheckImage", scale=(image_size, image_size)),  # grayscale, shape checks
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# 320 images (the 4 without objects kept, as the Detectron2 demo's FILTER_EMPTY_ANNOTATIONS False)
# in 40 full batches per epoch: 35 epochs are the Detectron2 demo's 1400 iterations
max_epochs = 35
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=50),
    # times a cosine over all iterations from the first (Detectron2's WarmupCosineLR)
    dict(
        type="CosineAnnealingLR",
        eta_min=0.0,
        begin=0,
        end=max_epochs,
        T_max=max_epochs,
        by_epoch=True,
        convert_to_iter_based=True,
    ),
]
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=0.005, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0, bypass_duplicate=True),
    clip_grad=dict(max_norm=10.0, norm_type=2),
)
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(checkpoint=dict(interval=max_epochs))
# EMA as the recipe, but decay 0.995 instead of 0.9998: the demo runs only 1400 iterations.
# Then the plugins' hooks (../_base_/plugins_runtime.py).
custom_hooks = [
    dict(
        type="EMAHook",
        ema_type="ExponentialMovingAverage",
        momentum=0.005,
        update_buffers=True,
        priority=49,
    ),
    *_base_.custom_hooks,
]
