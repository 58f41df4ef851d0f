# The recipe of the two ResNet-18 FPN demos on Shapes (../demo/retinanet_shapes.py,
# ../demo/faster_rcnn_shapes.py), the same as their Detectron2 demos'
# (configs/demo/retinanet_shapes.yaml, configs/demo/faster_rcnn_shapes.yaml): mild multi-scale
# training, AdamW, 320 iterations of 8 images. Each demo adds its model: mmdet's packaged one
# with a ResNet-18 FPN trained from scratch.
_base_ = "./shapes_demo.py"

image_size = 256

# Mild multi-scale training (shorter edge 224 / 256 / 288, longer edge <= 320), as the
# Detectron2 demos.
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
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# The Detectron2 demos' schedule: AdamW lr 1e-3 (no decay on norms), 50 warm-up iterations
# from 1 %, cosine to 0; 8 epochs of 40 iterations (320, as the Detectron2 demos' MAX_ITER;
# both keep the 4 images without objects).
max_epochs = 8
iters = max_epochs * 40  # 320 training images, batch 8
train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=max_epochs, val_interval=max_epochs)
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
auto_scale_lr = dict(enable=False, base_batch_size=8)
default_hooks = dict(checkpoint=dict(interval=max_epochs))
