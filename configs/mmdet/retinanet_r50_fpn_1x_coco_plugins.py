# RetinaNet R50-FPN 1x on COCO (mmdet's config) with the plugins' sigmoid focal loss
# (PluginsFocalLoss: the core focal loss, no CUDA kernel needed) and the core Gaussian
# soft-NMS at test time (PluginsRetinaHead understands nms.type="plugins_soft_nms").
#   python tools/mm_train.py configs/mmdet/retinanet_r50_fpn_1x_coco_plugins.py
_base_ = [
    "mmdet::retinanet/retinanet_r50_fpn_1x_coco.py",
    "./_base_/plugins_runtime.py",  # the plugins' registrations and training hooks
]

model = dict(
    bbox_head=dict(
        type="PluginsRetinaHead",
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
        nms=dict(
            _delete_=True,
            type="plugins_soft_nms",
            method="gaussian",
            sigma=0.5,
            iou_threshold=0.3,
            min_score=0.05,
        ),
    ),
)

# mmdet's COCO test pipeline with PluginsCheckImage first: grayscale / RGBA arrays become 3
# channels, an image the resize would make 0 px high or wide is one clear error
test_pipeline = [
    dict(type="LoadImageFromFile", backend_args=None),
    dict(type="PluginsCheckImage", scale=(1333, 800)),
    dict(type="Resize", scale=(1333, 800), keep_ratio=True),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(
        type="PackDetInputs",
        meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
    ),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
