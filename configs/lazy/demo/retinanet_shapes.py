# CPU demo: RetinaNetPlus (R-18, 64-channel FPN, from scratch) on the embedded Shapes dataset,
# the LazyConfig twin of configs/demo/retinanet_shapes.yaml (see its header for the results):
#   OMP_NUM_THREADS=1 python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/retinanet_shapes.py
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler

from ..common.data import detection_loaders, shortest_edge
from ..common.retinanet import model, optimizer, train

resnet = model.backbone.bottom_up
resnet.freeze_at = 0  # train the stem too (from scratch)
resnet.stem.norm = "BN"
resnet.stages.depth = 18
resnet.stages.norm = "BN"
del resnet.stages.stride_in_1x1  # not an argument of the basic blocks of R-18/34
model.backbone.out_channels = 64
model.backbone.top_block.in_channels = 512
model.head.input_shape = [ShapeSpec(channels=64)] * 5
model.head.conv_dims = [64, 64]
# anchors of 16-256 px (x 2^(k/3)) on P3-P7 for 256 px images
model.anchor_generator.sizes = [
    [16, 20.16, 25.4], [32, 40.32, 50.8], [64, 80.63, 101.59], [128, 161.27, 203.19],
    [256, 322.54, 406.37],
]  # fmt: skip
model.num_classes = 6
model.pixel_std = [57.375, 57.120, 58.395]  # BGR ImageNet std (BN trained from scratch)
model.nms_type = "gaussian"

dataloader = detection_loaders(
    shortest_edge((224, 256, 288), 320),
    test_min_size=256,
    test_max_size=320,
    image_format="BGR",
    train="shapes_train",
    test="shapes_val",
    filter_empty=False,  # keep the 4 images without objects, as the YAML twin
    batch_size=8,
    num_workers=0,
)

optimizer.optimizer = "AdamW"
optimizer.lr = 0.001
optimizer.weight_decay = 0.0001
del optimizer.momentum
del optimizer.nesterov

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=50 / 320,
    warmup_factor=0.01,
    warmup_method="linear",
)

train.max_iter = 320
train.init_checkpoint = ""
train.checkpointer.period = 100000
train.device = "cpu"
train.seed = 42
train.output_dir = "./output/lazy_demo_retinanet_shapes"
