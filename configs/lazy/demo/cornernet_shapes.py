# CPU demo: CornerNet with a tiny two-stack hourglass on the embedded Shapes dataset, the
# LazyConfig twin of configs/demo/cornernet_shapes.yaml (see its header for the results):
#   OMP_NUM_THREADS=1 python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/cornernet_shapes.py
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..common.cornernet import model, optimizer, train
from ..common.data import detection_loaders, scale_jitter

model.backbone.body.downsample_times = 3
model.backbone.body.stage_channels = [16, 24, 32, 48]
model.backbone.body.stage_blocks = [1, 1, 1, 1]
model.backbone.body.feat_channel = 24
model.head.net.pool_channels = 24
model.head.net.hidden_channels = 24
model.num_classes = 6

# Shapes images are 256 or 320 px: trained and tested at 128 px (longer edge)
dataloader = detection_loaders(
    scale_jitter(128, 0.75, 1.25),
    test_min_size=128,
    test_max_size=128,
    image_format="RGB",
    train="shapes_train",
    test="shapes_val",
    filter_empty=False,  # keep the 4 images without objects, as the YAML twin
    batch_size=8,
    num_workers=1,
)

optimizer.lr = 0.002
optimizer.clip_gradients = dict(enabled=True, clip_type="norm", clip_value=35.0, norm_type=2.0)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[800], num_updates=960),
    warmup_length=40 / 960,
    warmup_factor=0.1,
    warmup_method="linear",
)

train.max_iter = 960
train.checkpointer.period = 100000
train.device = "cpu"
train.seed = 42
train.output_dir = "./output/lazy_demo_cornernet_shapes"
