# EfficientDet-D5 on COCO, the paper's recipe (see _base_/efficientdet.py):
# 1280x1280 inputs, P3-P7, total batch 128 = 16 GPUs x 8.
#   python tools/mm_train.py configs/mmdet/efficientdet_d5.py [--amp] [--auto-scale-lr]
_base_ = "./_base_/efficientdet.py"

variant = "efficientdet_d5"
image_size = 1280

model = dict(
    data_preprocessor=dict(
        batch_augments=[dict(type="BatchFixedSizePad", size=(image_size, image_size))],
    ),
    backbone=dict(variant=variant),
    neck=dict(variant=variant),
    bbox_head=dict(variant=variant, anchor_generator=dict(variant=variant)),
)

train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
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
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="PluginsCheckImage", scale=(image_size, image_size)),  # grayscale, shape checks
    dict(type="Resize", scale=(image_size, image_size), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]
train_dataloader = dict(batch_size=8, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
