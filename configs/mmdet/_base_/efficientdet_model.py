# The EfficientDet detector (https://arxiv.org/abs/1911.09070) of the plugins, shared by the
# paper's recipe (efficientdet.py) and the Shapes demo (../demo/efficientdet_shapes.py). What
# depends on the variant or the data is set by them: the variant (backbone, neck, bbox_head and
# its anchor_generator), the padding and fixed input size (data_preprocessor.pad_size_divisor,
# batch_augments), num_classes, and the test thresholds (test_cfg.nms_pre, score_thr,
# nms.min_score).
model = dict(
    type="PluginsEfficientDet",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],  # ImageNet statistics on RGB in [0, 255]
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
    ),
    backbone=dict(type="PluginsEfficientNet"),
    neck=dict(type="PluginsBiFPN"),
    bbox_head=dict(
        type="PluginsEfficientDetHead",
        anchor_generator=dict(type="PluginsEfficientDetAnchorGenerator"),
        bbox_coder=dict(type="PluginsEfficientDetBoxCoder"),
        loss_cls=dict(type="PluginsFocalLoss", use_sigmoid=True, gamma=1.5, alpha=0.25),
        loss_bbox=dict(type="PluginsHuberLoss", delta=0.1, loss_weight=50.0),
    ),
    train_cfg=dict(
        # effdet's ArgMaxMatcher(0.5, 0.5, force_match_for_each_row=True)
        assigner=dict(
            type="MaxIoUAssigner",
            pos_iou_thr=0.5,
            neg_iou_thr=0.5,
            min_pos_iou=0.0,
            ignore_iof_thr=-1,
        ),
        sampler=dict(type="PseudoSampler"),
        allowed_border=-1,
        pos_weight=-1,
        debug=False,
    ),
    test_cfg=dict(
        min_bbox_size=0,
        nms=dict(type="plugins_soft_nms", method="gaussian", sigma=0.5, iou_threshold=0.3),
        max_per_img=100,
    ),
)
