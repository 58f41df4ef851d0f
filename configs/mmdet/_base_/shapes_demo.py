# What the CPU demos on the embedded Shapes dataset (../demo/*_shapes.py) share: the data
# (plugins.data.shapes, generated on first use), its COCO-style evaluation, the validation and
# test loops and a CPU runtime. Each demo adds its model, pipelines, optimizer and schedule.
# mmengine evaluates this file on its own, so a demo re-states what depends on its variables:
#   train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
#   val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
#   test_dataloader = val_dataloader
#   train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
#   default_hooks = dict(checkpoint=dict(interval=max_epochs))  # one checkpoint, at the end
_base_ = ["mmdet::_base_/default_runtime.py", "./plugins_runtime.py"]

train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=True),
    dataset=dict(
        type="PluginsShapesDataset",
        split="train",
        # all 320 images, the 4 without objects included: 40 full batches per epoch, as the
        # Detectron2 demos with DATALOADER.FILTER_EMPTY_ANNOTATIONS False
        filter_cfg=dict(filter_empty_gt=False),
    ),
)
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="PluginsShapesDataset", split="val", test_mode=True),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="PluginsShapesMetric", split="val", metric="bbox")
test_evaluator = val_evaluator

val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=10),
    checkpoint=dict(type="CheckpointHook", max_keep_ckpts=1),
    visualization=dict(type="DetVisualizationHook", draw=False),
)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="gloo"),
)
log_processor = dict(window_size=10)
randomness = dict(seed=0)
