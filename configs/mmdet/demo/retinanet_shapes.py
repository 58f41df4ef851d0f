# RetinaNet (ResNet-18 FPN, from scratch) on the embedded Shapes dataset with the plugins'
# focal loss and Gaussian soft-NMS, small enough for a CPU:
#   OMP_NUM_THREADS=1 python tools/mm_train.py configs/mmdet/demo/retinanet_shapes.py
# Measured 2026-11-23 on the shared 2-core machine, idle: bbox_mAP 0.072 / mAP_50 0.153 in
# 6:29 wall (320 iterations, 1.13 s each; the Detectron2 demo on the same 320 iterations and
# images, 2026-11-30: AP 8.8 / AP50 16.7). The previous recipe here (SGD lr 0.02, 12 epochs,
# scale jitter 0.5-1.5 + 256 px crops, inputs padded to 128) reached mAP_50 0.068 in 8 minutes.
_base_ = [
    "mmdet::_base_/models/retinanet_r50_fpn.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["plugins.mm"], allow_failed_imports=False)

image_size = 256
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None,  # no pretrained weights can be downloaded here
    ),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(
        type="PluginsRetinaHead",
        num_classes=6,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        anchor_generator=dict(octave_base_scale=2),  # shapes are 10-150 px
        loss_cls=dict(
            _delete_=True,
            type="PluginsFocalLoss",
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0,
        ),
    ),
    test_cfg=dict(
        score_thr=0.01,
        nms=dict(
            _delete_=True,
            type="plugins_soft_nms",
            method="gaussian",
            sigma=0.5,
            iou_threshold=0.3,
            min_score=0.01,
        ),
    ),
)

# Mild multi-scale training (shorter edge 224 / 256 / 288, longer edge <= 320), as the
# Detectron2 demo (configs/demo/retinanet_shapes.yaml).
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="RandomChoiceResize",
        scales=[(320, 224), (320, 256), (320, 288)],
        keep_ratio=True,
    ),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="PluginsCheckImage", scale=(320, image_size)),  # grayscale, shape checks
    dict(type="Resize", scale=(320, image_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(
        type="PluginsShapesDataset",
        split="train",
        filter_cfg=dict(filter_empty_gt=False),
        pipeline=train_pipeline,
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="PluginsShapesDataset",
        split="val",
        test_mode=True,
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="PluginsShapesMetric", split="val", metric="bbox")
test_evaluator = val_evaluator

# The Detectron2 demo's schedule: AdamW lr 1e-3 (no decay on norms), 50 warm-up iterations
# from 1 %, cosine to 0; 8 epochs of 40 iterations (320, as the Detectron2 demo's MAX_ITER;
# both keep the 4 images without objects).
max_epochs = 8
iters = max_epochs * 40  # 320 training images, batch 8
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type="CosineAnnealingLR", by_epoch=False, begin=50, end=iters, T_max=iters - 50),
]
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0.0),
    clip_grad=dict(max_norm=10.0, norm_type=2),
)
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=10),
    checkpoint=dict(type="CheckpointHook", interval=max_epochs, max_keep_ckpts=1),
    visualization=dict(type="DetVisualizationHook", draw=False),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="gloo"),
)
auto_scale_lr = dict(enable=False, base_batch_size=8)
log_processor = dict(window_size=10)
randomness = dict(seed=0)

# the model-zoo file <work_dir>/<config name>-<sha256[:8]>.pth after training (plugins.mm.publish)
custom_hooks = [
    # stop on a diverging loss, never write / rotate in a checkpoint with bad weights, and
    # resume bit-exactly after a kill (plugins.mm.hooks)
    dict(type="PluginsDivergenceGuardHook"),
    dict(type="PluginsExactResumeHook"),
    dict(type="PluginsPublishHook"),
]
