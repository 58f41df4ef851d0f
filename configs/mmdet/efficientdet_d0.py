# EfficientDet-D0 on COCO, the paper's recipe (see _base_/efficientdet.py):
# 512x512 inputs, P3-P7, total batch 128 = 8 GPUs x 16.
#   python tools/mm_train.py configs/mmdet/efficientdet_d0.py [--amp] [--auto-scale-lr]
# The base is written for D0: variant, image size, pipelines and batch size are its own.
_base_ = "./_base_/efficientdet.py"
