# EfficientDet-D7X on COCO, the paper's recipe (see _base_/efficientdet.py):
# 1536x1536 inputs, P3-P8, total batch 128 = 32 GPUs x 4.
#   python tools/mm_train.py configs/mmdet/efficientdet_d7x.py [--amp] [--auto-scale-lr]
# D7's inputs, pipelines and 600-epoch schedule (efficientdet_d7.py) with the D7x network.
_base_ = "./efficientdet_d7.py"

variant = "efficientdet_d7x"

model = dict(
    data_preprocessor=dict(pad_size_divisor=256),  # 2 ** max_level: P8
    backbone=dict(variant=variant),
    neck=dict(variant=variant),
    bbox_head=dict(variant=variant, anchor_generator=dict(variant=variant)),
)
