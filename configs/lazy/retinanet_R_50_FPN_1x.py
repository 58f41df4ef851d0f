# RetinaNet R50-FPN 1x through RetinaNetPlus: LazyConfig twin of configs/retinanet_R_50_FPN_1x.yaml
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/retinanet_R_50_FPN_1x.py --num-gpus 8
from .common.retinanet import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (the config is what this file exports)
