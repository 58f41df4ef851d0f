# The CPU demo recipe of EfficientDet (../demo/efficientdet_shapes.py: the efficientdet_demo
# variant at 256 px, AdamW, 1400 iterations of batch 8, EMA) on your own COCO-format dataset:
# the same recipe as Detectron2's configs/demo/efficientdet_shapes.yaml with --coco-dataset,
# so their APs on your data compare.
# Use it as it is or copy it:
#   1. edit the "your dataset" block below (keep the copy in this folder, or make `_base_` an
#      absolute path);
#   2. OMP_NUM_THREADS=1 python tools/mm_train.py configs/mmdet/own_data/efficientdet_demo_coco.py
#   3. python tools/mm_test.py configs/mmdet/own_data/efficientdet_demo_coco.py \
#          work_dirs/efficientdet_demo_coco/iter_1400.pth
# The schedule counts iterations, as Detectron2's SOLVER.MAX_ITER does: 1400 whatever the size
# of your dataset (the Shapes demo's 35 epochs of 40 iterations); change it with
# --cfg-options train_cfg.max_iters=N param_scheduler.1.end=N param_scheduler.1.T_max=N
# default_hooks.checkpoint.interval=N train_cfg.val_interval=N.
#
# Everything that depends on the dataset is derived from the block below, in this file (see
# efficientdet_d0_coco.py for why). The Shapes datasets of the base are replaced
# (`_delete_=True`: PluginsShapesDataset takes arguments CocoDataset does not). Images without
# boxes are kept, as in the demos of both frameworks.
_base_ = "../demo/efficientdet_shapes.py"

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
    sampler=dict(type="InfiniteSampler", shuffle=True),  # iterations, not epochs: see below
    dataset=dict(
        _delete_=True,
        type="PluginsCocoDataset",
        data_root=data_root,
        ann_file=train_ann,
        data_prefix=dict(img=train_images),
        metainfo=metainfo,
        filter_cfg=dict(filter_empty_gt=False),
        pipeline={{_base_.train_pipeline}},
    ),
)
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type="PluginsCocoDataset",
        data_root=data_root,
        ann_file=val_ann,
        data_prefix=dict(img=val_images),
        metainfo=metainfo,
        test_mode=True,
        pipeline={{_base_.test_pipeline}},
    )
)
test_dataloader = val_dataloader
val_evaluator = dict(
    _delete_=True, type="PluginsCocoMetric", ann_file=data_root + val_ann, metric="bbox"
)
test_evaluator = val_evaluator

# 1400 iterations of batch 8 (Detectron2: SOLVER.MAX_ITER 1400, SOLVER.IMS_PER_BATCH 8), linear
# warm-up over 50 iterations times a cosine decay over all of them (WarmupCosineLR)
max_iters = 1400
train_cfg = dict(
    _delete_=True, type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters
)
param_scheduler = [
    dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type="CosineAnnealingLR",
        eta_min=0.0,
        begin=0,
        end=max_iters,
        T_max=max_iters,
        by_epoch=False,
    ),
]
default_hooks = dict(checkpoint=dict(interval=max_iters, by_epoch=False))
log_processor = dict(by_epoch=False)
