# CornerNet (tiny two-stack hourglass, from scratch) on the embedded Shapes dataset, sized to
# train on a CPU in under 10 minutes:
#   OMP_NUM_THREADS=1 python tools/mm_train.py configs/mmdet/demo/cornernet_shapes.py
# (on a busy 2-core machine, torch's default 2 intra-op threads made each step 20x slower
# than one thread: 37 s vs 1.6 s for the same batch, measured 2026-11-23).
#
# Differences from the paper's recipe (../cornernet_hourglass104.py), all for the tiny budget:
# a narrow hourglass (3 downsamplings instead of 5, 16-48 channels instead of 256-512) and
# head (24-wide pooling and prediction branches instead of 128/256), 128 px inputs with mild
# scale jitter and crops instead of 511 px random centre crops, a short schedule with a
# larger learning rate. Corner pooling, targets, the Gaussian focal / pull-push / offset losses,
# intermediate supervision of both stacks, corner decoding and Gaussian soft-NMS are the paper's.
_base_ = "../_base_/shapes_demo.py"

image_size = 128  # Shapes images are 256 px: halved to fit the CPU budget
num_classes = 6  # plugins.data.shapes.SHAPES_CLASSES
feat_channel = 24

model = dict(
    type="CornerNet",  # mmdet's own detector (a SingleStageDetector)
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32,  # 4 (stem) * 2 ** downsample_times
        batch_augments=[dict(type="BatchFixedSizePad", size=(image_size, image_size))],
    ),
    backbone=dict(
        type="PluginsHourglassNet",
        downsample_times=3,
        num_stacks=2,
        stage_channels=(16, 24, 32, 48),
        stage_blocks=(1, 1, 1, 1),
        feat_channel=feat_channel,
    ),
    neck=None,
    bbox_head=dict(
        type="PluginsCornerHead",
        num_classes=num_classes,
        in_channels=feat_channel,
        num_feat_levels=2,
        corner_emb_channels=1,
        pool_channels=24,
        hidden_channels=24,
        loss_heatmap=dict(type="GaussianFocalLoss", alpha=2.0, gamma=4.0, loss_weight=1.0),
        loss_embedding=dict(type="AssociativeEmbeddingLoss", pull_weight=0.1, push_weight=0.1),
        loss_offset=dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0),
    ),
    train_cfg=None,
    test_cfg=dict(
        corner_topk=100,
        local_maximum_kernel=3,
        distance_threshold=0.5,
        num_dets=1000,
        score_thr=0.0,
        max_per_img=100,
        nms=dict(
            type="plugins_soft_nms",
            method="gaussian",
            sigma=0.5,
            iou_threshold=0.5,
            min_score=0.001,
        ),
    ),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="RandomResize",
        scale=(image_size, image_size),
        ratio_range=(0.75, 1.25),
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
train_dataloader = dict(
    batch_sampler=dict(type="AspectRatioBatchSampler"),
    dataset=dict(pipeline=train_pipeline),
)
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

max_epochs = 24
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
# The paper: Adam lr 2.5e-4 (batch 49), linear warm-up, step decay near the end.
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=40),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[20], gamma=0.1),
]
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="Adam", lr=2e-3),
    clip_grad=dict(max_norm=35, norm_type=2),
)
default_hooks = dict(checkpoint=dict(interval=max_epochs))
