# EfficientDet-D2 on COCO 2017 (paper recipe, common/efficientdet.py); input 768x768.
# LazyConfig twin of configs/efficientdet_d2.yaml:
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/efficientdet_d2.py --num-gpus 8
from .common.efficientdet import efficientdet_recipe

model, dataloader, optimizer, lr_multiplier, train = efficientdet_recipe("efficientdet_d2")
