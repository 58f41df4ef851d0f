# EfficientDet-D7 on COCO 2017 (paper recipe, common/efficientdet.py); input 1536x1536.
# LazyConfig twin of configs/efficientdet_d7.yaml:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d7.py --num-gpus 8
from .common.efficientdet import efficientdet_recipe

model, dataloader, optimizer, lr_multiplier, train = efficientdet_recipe(
    "efficientdet_d7", epochs=600
)
