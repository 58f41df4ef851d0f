# EfficientDet-D2 on COCO 2017 (paper recipe, common/efficientdet.py); input 768x768.
# LazyConfig twin of configs/efficientdet_d2.yaml:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d2.py --num-gpus 8
from .common.efficientdet import (  # noqa: F401  (the config is what this file exports)
    dataloader,
    lr_multiplier,
    model,
    optimizer,
    train,
    use_variant,
)

use_variant("efficientdet_d2", model, dataloader)
