# CPU demo: RetinaNetPlus (R-18, 64-channel FPN, from scratch) on the embedded Shapes dataset,
# the LazyConfig twin of configs/demo/retinanet_shapes.yaml (see its header for the results):
#   OMP_NUM_THREADS=1 python tools/lazyconfig_train_net.py --config-file configs/lazy/demo/retinanet_shapes.py
from detectron2.layers import ShapeSpec

from ..common.data import shortest_edge
from ..common.demo import adamw, cpu_demo, shapes_loaders
from ..common.retinanet import model, train
from ..common.schedule import warmup_cosine

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

dataloader = shapes_loaders(shortest_edge((224, 256, 288), 320), 256, 320, "BGR", workers=0)
optimizer = adamw(0.001, 0.0001, clip_norm=10.0)  # joint clip, as the YAML and the mm demo
lr_multiplier = warmup_cosine(320, 50, 0.01)
cpu_demo(train, 320, "retinanet_shapes")
train.init_checkpoint = ""
