# CPU demo: CornerNet with a tiny two-stack hourglass on the embedded Shapes dataset, the
# LazyConfig twin of configs/demo/cornernet_shapes.yaml (see its header for the results):
#   OMP_NUM_THREADS=1 python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/cornernet_shapes.py
from ..common.cornernet import model, train
from ..common.data import scale_jitter
from ..common.demo import adamw, cpu_demo, shapes_loaders
from ..common.schedule import warmup_multistep

hourglass = model.backbone.body
hourglass.downsample_times = 3
hourglass.stage_channels = [16, 24, 32, 48]
hourglass.stage_blocks = [1, 1, 1, 1]
hourglass.feat_channel = 24
model.head.net.pool_channels = 24
model.head.net.hidden_channels = 24
model.num_classes = 6

# Shapes images are 256 or 320 px: trained and tested at 128 px (longer edge)
dataloader = shapes_loaders(scale_jitter(128, 0.75, 1.25), 128, 128, "RGB", workers=1)
optimizer = adamw(0.002, 0.0, clip_norm=35.0)
lr_multiplier = warmup_multistep(960, (800,), 40, 0.1)
cpu_demo(train, 960, "cornernet_shapes")
