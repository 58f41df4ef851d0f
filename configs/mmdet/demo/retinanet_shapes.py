# RetinaNet (ResNet-18 FPN, from scratch) on the embedded Shapes dataset with the plugins'
# focal loss and Gaussian soft-NMS, small enough for a CPU:
#   python tools/mm_train.py configs/mmdet/demo/retinanet_shapes.py
_base_ = [
    "mmdet::_base_/models/retinanet_r50_fpn.py",
    "mmdet::_base_/default_runtime.py",
]
custom_imports = dict(imports=["plugins.mm"], allow_failed_imports=False)

image_size = 256
model = dict(
    data_preprocessor=dict(pad_size_divisor=128),
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

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="RandomResize",
        scale=(image_size, image_size),
        ratio_range=(0.5, 1.5),
        keep_ratio=True,
    ),
    dict(type="RandomCrop", crop_size=(image_size, image_size), allow_negative_crop=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
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

max_epochs = 12
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
param_scheduler = [
    dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=40),
    dict(type="MultiStepLR", begin=0, end=max_epochs, by_epoch=True, milestones=[9, 11]),
]
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="SGD", lr=0.02, momentum=0.9, weight_decay=1e-4),
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
