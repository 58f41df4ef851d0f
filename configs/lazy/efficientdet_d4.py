# EfficientDet-D4 on COCO 2017 (paper recipe, common/efficientdet.py); input 1024x1024.
# LazyConfig twin of configs/efficientdet_d4.yaml:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d4.py --num-gpus 8
from .common.efficientdet import efficientdet_recipe

model, dataloader, optimizer, lr_multiplier, train = efficientdet_recipe("efficientdet_d4")
