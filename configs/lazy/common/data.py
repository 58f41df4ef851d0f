# Data loaders of the recipes, as Detectron2's DatasetMapper / build_detection_*_loader build
# them from the YAML keys (DATASETS.*, INPUT.*, SOLVER.IMS_PER_BATCH, DATALOADER.NUM_WORKERS).
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from omegaconf import OmegaConf

from plugins.d2.augment import RandomFixedSizeCrop
from plugins.d2.lazy import coco_evaluator


def scale_jitter(size, min_scale, max_scale, flip=True):
    """INPUT.SCALE_JITTER: flip, random rescale of the size x size target, crop (independent
    offsets) or pad at the right and bottom (plugins.d2.augment)."""
    augs = [L(T.RandomFlip)(horizontal=True)] if flip else []
    augs += [
        L(T.ResizeScale)(
            min_scale=min_scale, max_scale=max_scale, target_height=size, target_width=size
        ),
        L(RandomFixedSizeCrop)(crop_size=(size, size)),
    ]
    return augs


def shortest_edge(sizes, max_size, flip=True):
    """Detectron2's default training resize (INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN) and flip."""
    augs = [
        L(T.ResizeShortestEdge)(short_edge_length=sizes, max_size=max_size, sample_style="choice")
    ]
    if flip:
        augs.append(L(T.RandomFlip)(horizontal=True))
    return augs


def detection_loaders(
    train_augmentations,
    test_min_size,
    test_max_size,
    image_format="BGR",
    train="coco_2017_train",
    test="coco_2017_val",
    batch_size=16,
    num_workers=4,
    filter_empty=True,
):
    """dataloader.train / .test / .evaluator (COCO AP on the test set); ``filter_empty`` is
    DATALOADER.FILTER_EMPTY_ANNOTATIONS (drop training images without objects)."""
    dataloader = OmegaConf.create()
    dataloader.train = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=train, filter_empty=filter_empty),
        mapper=L(DatasetMapper)(
            is_train=True, augmentations=train_augmentations, image_format=image_format
        ),
        total_batch_size=batch_size,
        num_workers=num_workers,
    )
    dataloader.test = L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names=test, filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=test_min_size, max_size=test_max_size, sample_style="choice"
                )
            ],
            image_format="${...train.mapper.image_format}",
        ),
        num_workers=num_workers,
    )
    dataloader.evaluator = L(coco_evaluator)(dataset_name="${..test.dataset.names}")
    return dataloader
