# EfficientDet-D6 on COCO 2017 (paper recipe, common/efficientdet.py); input 1280x1280.
# LazyConfig twin of configs/efficientdet_d6.yaml:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d6.py --num-gpus 8
from .common.efficientdet import efficientdet_recipe

model, dataloader, optimizer, lr_multiplier, train = efficientdet_recipe("efficientdet_d6")
