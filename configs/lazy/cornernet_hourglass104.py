# CornerNet Hourglass-104 on COCO 2017: LazyConfig twin of configs/cornernet_hourglass104.yaml
#   python tools/lazyconfig_train_net.py --config-file configs/lazy/cornernet_hourglass104.py --num-gpus 8
from .common.cornernet import dataloader, lr_multiplier, model, optimizer, train  # noqa: F401  (the config is what this file exports)
