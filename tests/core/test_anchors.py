"""Anchors and box coding vs effdet 0.4.1."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from plugins.core.anchors import generate_anchors
from plugins.core.box_coder import decode_boxes, encode_boxes
from plugins.core.variants import EFFICIENTDET_VARIANTS

effdet_anchors = importlib.import_module("effdet.anchors")

RATIOS = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


def _yxyx_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return boxes[:, [1, 0, 3, 2]]


@pytest.mark.parametrize(
    "image_size, min_level, max_level, anchor_scale",
    [
        ((512, 512), 3, 7, 4.0),  # D0
        ((256, 256), 3, 8, 4.0),  # D7x levels
        ((128, 128), 3, 7, 5.0),  # D7 anchor scale
        ((96, 160), 3, 7, 4.0),  # non-square
        ((100, 150), 3, 7, 4.0),  # not divisible by 2**7: fractional strides
    ],
)
def test_anchors_match_effdet(image_size, min_level, max_level, anchor_scale) -> None:
    ref = effdet_anchors.Anchors(min_level, max_level, 3, list(RATIOS), anchor_scale, image_size)
    ours = generate_anchors(image_size, min_level, max_level, 3, RATIOS, anchor_scale)
    expected = _yxyx_to_xyxy(ref.boxes)
    assert ours.dtype == torch.float32
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_anchor_count_order_and_scalar_ratios() -> None:
    v = EFFICIENTDET_VARIANTS["efficientdet_d0"]
    anchors = generate_anchors(
        (64, 64), v.min_level, v.max_level, v.num_scales, v.aspect_ratios, v.anchor_scale
    )
    n_per_level = [(-(-64 // 2**lv)) ** 2 * 9 for lv in range(3, 8)]
    assert anchors.shape == (sum(n_per_level), 4)
    # first anchor: P3 cell (0, 0), octave 0, ratio (1, 1): side 4 * 8 centred at (4, 4)
    torch.testing.assert_close(anchors[0], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    # second cell along x comes after the 9 anchors of the first
    torch.testing.assert_close(anchors[9], torch.tensor([-4.0, -12.0, 28.0, 20.0]))
    # octave 1 of the first cell: side 32 * 2 ** (1 / 3)
    side = 32 * 2 ** (1 / 3)
    torch.testing.assert_close(anchors[3, 2] - anchors[3, 0], torch.tensor(side))
    # a scalar aspect ratio r means (sqrt(r), 1 / sqrt(r))
    a = generate_anchors(64, 3, 3, 1, [2.0], 4.0)
    w, h = a[0, 2] - a[0, 0], a[0, 3] - a[0, 1]
    torch.testing.assert_close(w / h, torch.tensor(2.0))
    torch.testing.assert_close(w * h, torch.tensor(32.0 * 32.0))


def test_anchor_bad_arguments() -> None:
    with pytest.raises(ValueError, match="image_size"):
        generate_anchors((64, 64, 3))
    with pytest.raises(ValueError, match="image_size"):
        generate_anchors((0, 64))
    with pytest.raises(ValueError, match="max_level"):
        generate_anchors(64, 5, 3)
    with pytest.raises(ValueError, match="anchor_scale"):
        generate_anchors(64, 3, 7, anchor_scale=(4.0, 4.0))
    with pytest.raises(ValueError, match="num_scales"):
        generate_anchors(64, num_scales=0)


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 200
    wh = torch.rand(n, 2, generator=g) * 80 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_decode_matches_effdet() -> None:
    anchors = generate_anchors((128, 128), 3, 7, 3, RATIOS, 4.0)
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(anchors.shape[0], 4, generator=g) * 0.5
    ref = effdet_anchors.decode_box_outputs(codes, anchors[:, [1, 0, 3, 2]], output_xyxy=True)
    torch.testing.assert_close(decode_boxes(codes, anchors), ref, rtol=0, atol=1e-5)
    # batched codes broadcast against the anchors
    batched = decode_boxes(codes.expand(3, -1, -1), anchors)
    assert batched.shape == (3, anchors.shape[0], 4)
    torch.testing.assert_close(batched[2], ref, rtol=0, atol=1e-5)


def test_encode_matches_effdet_and_round_trips() -> None:
    from effdet.object_detection import BoxList, FasterRcnnBoxCoder

    boxes = _random_boxes(50, 1)
    anchors = _random_boxes(50, 2)
    codes = encode_boxes(boxes, anchors)
    ref = FasterRcnnBoxCoder().encode(
        BoxList(boxes[:, [1, 0, 3, 2]].clone()), BoxList(anchors[:, [1, 0, 3, 2]].clone())
    )
    torch.testing.assert_close(codes, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(decode_boxes(codes, anchors), boxes, rtol=0, atol=1e-3)
    # identical box and anchor encode to zeros (up to eps)
    assert encode_boxes(anchors, anchors).abs().max() < 1e-5
    # closed form for one box: centre shifted by half the anchor width, twice as tall
    one = encode_boxes(
        torch.tensor([[5.0, 0.0, 15.0, 20.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    )
    torch.testing.assert_close(
        one, torch.tensor([[0.5, 0.5, math.log(2.0), 0.0]]), rtol=1e-5, atol=1e-5
    )


def test_box_coder_empty_and_bad_input() -> None:
    empty = torch.zeros(0, 4)
    assert encode_boxes(empty, empty).shape == (0, 4)
    assert decode_boxes(empty, empty).shape == (0, 4)
    with pytest.raises(ValueError, match="codes"):
        decode_boxes(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="anchors"):
        decode_boxes(torch.zeros(3, 4), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="boxes"):
        encode_boxes(torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4))
