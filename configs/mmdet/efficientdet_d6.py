# EfficientDet-D6 on COCO, the paper's recipe (see _base_/efficientdet.py):
# 1280x1280 inputs, P3-P7, total batch 128 = 32 GPUs x 4.
#   python tools/mm_train.py configs/mmdet/efficientdet_d6.py [--amp] [--auto-scale-lr]
# D5's inputs, pipelines and schedule (efficientdet_d5.py) with the D6 network, 4 images per GPU.
_base_ = "./efficientdet_d5.py"

variant = "efficientdet_d6"

model = dict(
    backbone=dict(variant=variant),
    neck=dict(variant=variant),
    bbox_head=dict(variant=variant, anchor_generator=dict(variant=variant)),
)
train_dataloader = dict(batch_size=4)
