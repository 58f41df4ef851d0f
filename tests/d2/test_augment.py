"""INPUT.SCALE_JITTER: flip first, independent crop offsets, padding at the right and bottom."""

from __future__ import annotations

import plugins.d2  # noqa: F401  (first: detectron2._C stand-in)

# isort: split
import numpy as np
from detectron2.config import get_cfg
from detectron2.data import transforms as T

from plugins.d2 import add_plugins_config
from plugins.d2.augment import RandomFixedSizeCrop, scale_jitter_augmentations
from plugins.d2.engine import build_train_augmentations


def _offsets(aug, image: np.ndarray, draws: int) -> np.ndarray:
    out = []
    for _ in range(draws):
        crop = aug.get_transform(image).transforms[0]
        out.append((crop.x0, crop.y0))
    return np.asarray(out)


def test_crop_offsets_are_independent_and_cover_the_range():
    image = np.zeros((400, 400, 3), np.uint8)
    np.random.seed(0)
    ours = _offsets(RandomFixedSizeCrop((256, 256)), image, 400)
    np.random.seed(0)
    detectron2s = _offsets(T.FixedSizeCrop((256, 256)), image, 400)
    assert (detectron2s[:, 0] == detectron2s[:, 1]).all()  # Detectron2 0.6: on the diagonal
    assert (ours[:, 0] != ours[:, 1]).mean() > 0.9
    assert abs(np.corrcoef(ours[:, 0], ours[:, 1])[0, 1]) < 0.2
    for axis in (0, 1):
        assert ours[:, axis].min() <= 5 and ours[:, axis].max() >= 139  # 0 .. 144
    # quadrant "right and up" (x large, y small) is reached, which the diagonal never is
    assert ((ours[:, 0] > 100) & (ours[:, 1] < 44)).any()


def test_small_image_is_padded_right_and_bottom():
    image = np.full((100, 150, 3), 7, np.uint8)
    out = RandomFixedSizeCrop((256, 256)).get_transform(image).apply_image(image)
    assert out.shape == (256, 256, 3)
    assert (out[:100, :150] == 7).all() and (out[100:] == 128).all() and (out[:, 150:] == 128).all()


def test_flip_comes_first_so_padding_stays_right_and_bottom():
    np.random.seed(1)
    augs = T.AugmentationList(scale_jitter_augmentations(64, 0.5, 0.6))
    flips = 0
    for _ in range(40):
        data = T.AugInput(np.full((100, 100, 3), 7, np.uint8), boxes=np.array([[10.0, 20, 30, 50]]))
        transforms = augs(data).transforms
        assert data.image.shape[:2] == (64, 64)
        # the 32-38 px image at the top left, padding right and bottom (a flip after the
        # padding would move it to the left)
        assert (data.image[0, 0] == 7).all() and (data.image[-1, -1] == 128).all()
        flipped = isinstance(transforms[0], T.HFlipTransform)
        flips += flipped
        resize = next(t for t in transforms if isinstance(t, T.ResizeTransform))
        scale = resize.new_w / resize.w
        x1, x2 = (100 - 30, 100 - 10) if flipped else (10, 30)
        np.testing.assert_allclose(data.boxes[0, [0, 2]], [x1 * scale, x2 * scale], atol=1e-3)
    assert 5 < flips < 35


def test_yaml_scale_jitter_uses_it():
    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.INPUT.SCALE_JITTER.ENABLED = True
    cfg.INPUT.SCALE_JITTER.SIZE = 128
    augs = build_train_augmentations(cfg)
    assert [type(a) for a in augs] == [T.RandomFlip, T.ResizeScale, RandomFixedSizeCrop]
    cfg.INPUT.RANDOM_FLIP = "none"
    assert [type(a) for a in build_train_augmentations(cfg)] == [T.ResizeScale, RandomFixedSizeCrop]
