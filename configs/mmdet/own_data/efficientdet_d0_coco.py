# EfficientDet-D0 with the paper's recipe (../efficientdet_d0.py: 512 px, batch 16 x 8 GPUs,
# 300 epochs, EMA, soft-NMS) on your own COCO-format dataset. Use it as it is or copy it:
#   1. edit the "your dataset" block below (keep the copy in this folder, or make `_base_` an
#      absolute path);
#   2. python tools/mm_train.py configs/mmdet/own_data/efficientdet_d0_coco.py
#   3. python tools/mm_test.py configs/mmdet/own_data/efficientdet_d0_coco.py \
#          work_dirs/efficientdet_d0_coco/epoch_300.pth
# mmdet's own tools/train.py and tools/test.py run it too. For a CPU-sized recipe see
# efficientdet_demo_coco.py.
#
# Everything that depends on the dataset is derived from the block below, in this file:
# mmengine evaluates a base config's variables when it parses the base, so a child (or a
# --cfg-options) that only re-assigns a top-level `num_classes` or `data_root` leaves the
# inherited head and datasets unchanged. tools/mm_train.py checks before training that
# `classes` are category names of the json and that the head predicts len(classes) classes.
# Images without boxes are dropped from training (filter_empty_gt, mmdet's COCO default, as
# Detectron2's DATALOADER.FILTER_EMPTY_ANNOTATIONS of configs/efficientdet_d0.yaml).
_base_ = "../efficientdet_d0.py"

# ---- your dataset ------------------------------------------------------------------------
data_root = "data/my_dataset/"  # the folder holding the files below, ending in /
train_ann, train_images = "annotations/train.json", "train/"
val_ann, val_images = "annotations/val.json", "val/"
classes = ("circle", "square", "triangle")  # the json's category names, in the order of their ids
# --------------------------------------------------------------------------------------------

# PluginsCocoDataset / PluginsCocoMetric: mmdet's CocoDataset / CocoMetric that check the json and
# the images on load and drop broken boxes (NaN, empty, outside the image), under mmdet's own
# tools/train.py too (plugins/mm/data_check.py)
metainfo = dict(classes=classes)
model = dict(bbox_head=dict(num_classes=len(classes)))
train_dataloader = dict(
    dataset=dict(
        type="PluginsCocoDataset",
        data_root=data_root,
        ann_file=train_ann,
        data_prefix=dict(img=train_images),
        metainfo=metainfo,
    )
)
val_dataloader = dict(
    dataset=dict(
        type="PluginsCocoDataset",
        data_root=data_root,
        ann_file=val_ann,
        data_prefix=dict(img=val_images),
        metainfo=metainfo,
    )
)
test_dataloader = val_dataloader
val_evaluator = dict(type="PluginsCocoMetric", ann_file=data_root + val_ann, metric="bbox")
test_evaluator = val_evaluator
