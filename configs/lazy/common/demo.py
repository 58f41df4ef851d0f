# What the CPU demos on the embedded Shapes dataset share (configs/demo/*.yaml): shapes_train /
# shapes_val with the 4 images without objects kept, batch 8, AdamW, seed 42, no intermediate
# checkpoints, CPU.
from .data import detection_loaders
from .optim import optimizer_config


def shapes_loaders(train_augmentations, test_min_size, test_max_size, image_format, workers):
    """dataloader.train / .test / .evaluator on Shapes (6 classes), batch 8."""
    return detection_loaders(
        train_augmentations,
        test_min_size,
        test_max_size,
        image_format=image_format,
        train="shapes_train",
        test="shapes_val",
        batch_size=8,
        num_workers=workers,
        filter_empty=False,  # keep the 4 images without objects, as the MMDetection demos do
    )


def adamw(lr, weight_decay, clip_norm=None, clip_type="full_model"):
    """AdamW clipped as the MMDetection demos' `clip_grad` (all gradients together)."""
    return optimizer_config("AdamW", lr, weight_decay, clip_norm, clip_type)


def cpu_demo(train, max_iter, name):
    """Run on the CPU for `max_iter` iterations into ./output/lazy_demo_<name>."""
    train.max_iter = max_iter
    train.checkpointer.period = 100000
    train.device = "cpu"
    train.seed = 42
    train.output_dir = f"./output/lazy_demo_{name}"
