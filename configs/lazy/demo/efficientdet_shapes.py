# CPU demo: EfficientDet on the embedded Shapes dataset (6 classes, generated on first use), the
# LazyConfig twin of configs/demo/efficientdet_shapes.yaml (see its header for the recipe and
# measured results):
#   OMP_NUM_THREADS=1 python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/efficientdet_shapes.py
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from ..common.data import detection_loaders, scale_jitter
from ..common.efficientdet import model, optimizer, train

# half-width, shallow EfficientNet, BiFPN 64 x 2, 2 head repeats, 256 px (plugins/core/variants.py);
# anchors of 3 strides (24 px on P3)
model.network.variant.name = "efficientdet_demo"
model.network.variant.anchor_scale = 3.0
model.network.num_classes = 6
model.test_score_thresh = 0.05

dataloader = detection_loaders(
    scale_jitter(256, 0.8, 1.2),
    test_min_size=256,
    test_max_size=256,
    image_format="RGB",
    train="shapes_train",
    test="shapes_val",
    filter_empty=False,  # keep the 4 images without objects, as the YAML twin
    batch_size=8,
    num_workers=0,
)

optimizer.optimizer = "AdamW"
optimizer.lr = 0.005
optimizer.weight_decay = 0.0001
del optimizer.momentum
del optimizer.nesterov

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / 1400,
    warmup_factor=0.01,
    warmup_method="linear",
)

train.max_iter = 1400
train.checkpointer.period = 100000
train.ema.decay = 0.995
train.device = "cpu"
train.seed = 42
train.output_dir = "./output/lazy_demo_efficientdet_shapes"
