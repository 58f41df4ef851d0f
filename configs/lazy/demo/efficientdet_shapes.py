# CPU demo: EfficientDet on the embedded Shapes dataset (6 classes, generated on first use), the
# LazyConfig twin of configs/demo/efficientdet_shapes.yaml (see its header for the recipe and
# measured results):
#   OMP_NUM_THREADS=1 python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/efficientdet_shapes.py
from ..common.data import scale_jitter
from ..common.demo import adamw, cpu_demo, shapes_loaders
from ..common.efficientdet import efficientdet_model_config
from ..common.schedule import warmup_cosine
from ..common.train import train

# half-width, shallow EfficientNet, BiFPN 64 x 2, 2 head repeats, 256 px (plugins/core/variants.py);
# anchors of 3 strides (24 px on P3)
model = efficientdet_model_config("efficientdet_demo", num_classes=6)
model.network.variant.anchor_scale = 3.0
model.test_score_thresh = 0.05

dataloader = shapes_loaders(scale_jitter(256, 0.8, 1.2), 256, 256, "RGB", workers=0)
optimizer = adamw(0.005, 0.0001, clip_norm=10.0)  # joint clip, as the YAML and the mm demo
lr_multiplier = warmup_cosine(1400, 50, 0.01)
cpu_demo(train, 1400, "efficientdet_shapes")
train.ema.enabled = True
train.ema.decay = 0.995
