# EfficientDet-D5 on COCO 2017 (paper recipe, common/efficientdet.py); input 1280x1280.
# LazyConfig twin of configs/efficientdet_d5.yaml:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d5.py --num-gpus 8
from .common.efficientdet import (  # noqa: F401  (the config is what this file exports)
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
    use_variant,
)

use_variant("efficientdet_d5", model, dataloader)
