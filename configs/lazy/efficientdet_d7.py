# EfficientDet-D7 on COCO 2017 (paper recipe, common/efficientdet.py); input 1536x1536.
# LazyConfig twin of configs/efficientdet_d7.yaml:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d7.py --num-gpus 8
from .common.efficientdet import (  # noqa: F401  (the config is what this file exports)
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
    use_variant,
)

use_variant("efficientdet_d7", model, dataloader)
# 600 epochs for D7 / D7x
train.max_iter = 554400
lr_multiplier.warmup_length = 924 / 554400
