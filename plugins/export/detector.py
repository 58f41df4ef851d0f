"""A detector at a fixed input size with its whole inference path, as one exportable module.

:class:`ExportableDetector` runs, inside one ``nn.Module`` and with static shapes only:

1. preprocessing: ``uint8`` (or float) RGB ``(B, 3, H, W)`` in, float, channel order of the
   network, ``(x - mean) / std``;
2. the network (any module giving the raw per-level outputs);
3. candidate decoding: :class:`AnchorDecoder` (RetinaNet / EfficientDet: per-level top-k of
   the class probabilities, box decoding against anchors baked in as a constant) or
   :class:`CornerDecoder` (CornerNet: heatmap local maxima, top-k corners, pairing,
   :func:`plugins.core.cornernet.decode_corners`);
4. :class:`Selection`: the frameworks' post-processing steps (clipping, size filters,
   per-class hard NMS by :func:`plugins.export.nms.class_nms`, top ``max_detections``),
   padded to a fixed size.

Outputs: ``boxes (B, K, 4)`` xyxy in input pixels, ``scores (B, K)``, ``labels (B, K)`` int64
(``-1`` in padding), ``num_detections (B,)`` int64; rows ``[:num_detections]`` hold the
detections, best first. ``torch.onnx.export(..., dynamo=True)`` turns this module into an ONNX
graph (see :mod:`plugins.export.onnx`); run eagerly it gives the same detections.

Post-processing follows the frameworks step by step so that the exported graph reproduces
their ``predict`` (checked by ``tests/e2e/test_export_onnx.py``): candidates above the score
threshold, top-k per level (the same set as "threshold, then top-k"), decoding, then per-class
NMS with boxes shifted by ``class * (max coordinate + 1)`` when the framework does so
(torchvision's ``batched_nms`` up to 1000 boxes on CPU, mmcv's ``batched_nms`` below its
``split_thr``): the shift changes IoUs by float rounding, so it is reproduced bit for bit.

Soft-NMS is not an ONNX operator. A model configured with soft-NMS is exported with hard NMS
(its IoU threshold is a parameter of :class:`Selection`); the detections then differ from the
framework's soft-NMS output (same boxes ranked first, lower-ranked overlapping boxes removed
instead of down-weighted).

This module is framework-free (torch + torchvision); the Detectron2 and MMDetection adapters
(:mod:`plugins.d2.export`, :mod:`plugins.mm.export`) only fill in its parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from plugins.core._validate import check_choice, check_positive
from plugins.core.box_coder import decode_boxes
from plugins.core.cornernet import decode_corners
from plugins.export.nms import PADDING_SCORE, class_nms

__all__ = [
    "AnchorDecoder",
    "CornerDecoder",
    "ExportableDetector",
    "Selection",
    "check_input_size",
    "corner_head_last_level",
    "efficientdet_box_decoder",
]

BoxDecoder = Callable[[Tensor, Tensor], Tensor]
"""``decode(codes (B, N, 4), anchors (B, N, 4)) -> boxes (B, N, 4)``."""


def efficientdet_box_decoder(
    max_log_ratio: float | None = None, clip_to: Sequence[int] | None = None
) -> BoxDecoder:
    """The core ``(ty, tx, th, tw)`` decoder (:func:`plugins.core.box_coder.decode_boxes`).

    Args:
        max_log_ratio: clamp ``th, tw`` from above first (MMDetection's EfficientDet coder:
            ``log(1000 / 16)``); ``None``: no clamp (Detectron2's EfficientDet). Default ``None``.
        clip_to: ``(H, W)`` to clip the boxes to (MMDetection clips when decoding); ``None``:
            no clipping. Default ``None``.
    """

    def decode(codes: Tensor, anchors: Tensor) -> Tensor:
        if max_log_ratio is not None:
            codes = torch.cat((codes[..., :2], codes[..., 2:].clamp(max=max_log_ratio)), dim=-1)
        boxes = decode_boxes(codes, anchors)
        return boxes if clip_to is None else clip_boxes(boxes, clip_to)

    return decode


def check_input_size(size: Sequence[int], divisor: int, where: str) -> tuple[int, int]:
    """``(H, W)`` as ints, or ``ValueError`` unless both are positive multiples of ``divisor``.

    Args:
        size: the requested input size.
        divisor: the padding multiple the model applies to its inputs.
        where: the framework setting that sets ``divisor`` (for the message).
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0 or h % divisor or w % divisor:
        raise ValueError(
            f"size: {h}x{w} is not a positive multiple of {divisor}, the padding this model "
            f"applies to its inputs ({where})"
        )
    return h, w


def clip_boxes(boxes: Tensor, size: Sequence[float]) -> Tensor:
    """Clamp ``(..., 4)`` xyxy boxes to ``[0, W] x [0, H]`` (``size = (H, W)``)."""
    h, w = float(size[0]), float(size[1])
    return torch.stack(
        (
            boxes[..., 0].clamp(0.0, w),
            boxes[..., 1].clamp(0.0, h),
            boxes[..., 2].clamp(0.0, w),
            boxes[..., 3].clamp(0.0, h),
        ),
        dim=-1,
    )


class AnchorDecoder(nn.Module):
    """Candidates of an anchor-based dense head (RetinaNet, EfficientDet).

    Per level: sigmoid of the class logits, the ``topk`` best (anchor, class) pairs, their box
    codes decoded against the anchors. A candidate is valid when its score is
    ``> score_threshold`` (so the valid set equals the frameworks' "threshold, then top-k").

    Args:
        anchors: ``(R, 4)`` xyxy anchors of the fixed input, ordered level, y, x, anchor (the
            layout of the head channels ``a * K + k``); stored as a buffer (a graph constant).
        level_sizes: ``H_l * W_l`` per level.
        num_anchors: anchors per location ``A``.
        num_classes: classes ``K``.
        topk: candidates kept per level (Detectron2 ``TOPK_CANDIDATES_TEST``, mmdet
            ``nms_pre``).
        score_threshold: candidates must score above this.
        decode: box decoder, ``(codes, anchors) -> boxes``, all ``(B, N, 4)``.
    """

    def __init__(
        self,
        anchors: Tensor,
        level_sizes: Sequence[int],
        num_anchors: int,
        num_classes: int,
        topk: int,
        score_threshold: float,
        decode: BoxDecoder,
    ) -> None:
        super().__init__()
        check_positive("topk", topk)
        check_positive("num_classes", num_classes)
        counts = [int(s) * int(num_anchors) for s in level_sizes]
        if sum(counts) != anchors.shape[0]:
            raise ValueError(
                f"anchors: expected {sum(counts)} anchors for levels {list(level_sizes)} x "
                f"{num_anchors}, got {anchors.shape[0]}"
            )
        self.register_buffer("anchors", anchors.detach().float().clone(), persistent=False)
        self.counts = counts
        self.num_classes = int(num_classes)
        self.topk = int(topk)
        self.score_threshold = float(score_threshold)
        self.decode = decode

    def forward(self, outputs: tuple[Sequence[Tensor], Sequence[Tensor]]):
        """``(cls_outputs, box_outputs)`` per level ``(B, A*K, H, W)`` / ``(B, A*4, H, W)``
        -> ``boxes (B, N, 4)``, ``scores (B, N)``, ``labels (B, N)``, ``valid (B, N)``."""
        cls_outputs, box_outputs = outputs
        if len(cls_outputs) != len(self.counts) or len(box_outputs) != len(self.counts):
            raise ValueError(
                f"outputs: expected {len(self.counts)} levels, got {len(cls_outputs)} class "
                f"and {len(box_outputs)} box maps"
            )
        scores, labels, codes, anchors = [], [], [], []
        for cls, box, level_anchors in zip(
            cls_outputs, box_outputs, self.anchors.split(self.counts)
        ):
            batch = cls.shape[0]
            probs = cls.permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
            top, index = probs.topk(min(self.topk, probs.shape[1]), dim=1)
            where = torch.div(index, self.num_classes, rounding_mode="floor")
            box = box.permute(0, 2, 3, 1).reshape(batch, -1, 4)
            scores.append(top)
            labels.append(index % self.num_classes)
            codes.append(box.gather(1, where.unsqueeze(-1).expand(-1, -1, 4)))
            anchors.append(level_anchors[where])
        scores_t = torch.cat(scores, 1)
        boxes = self.decode(torch.cat(codes, 1), torch.cat(anchors, 1))
        return boxes, scores_t, torch.cat(labels, 1), scores_t > self.score_threshold


def corner_head_last_level(head: nn.Module, feat: Tensor) -> dict[str, list[Tensor | None]]:
    """The outputs of a core :class:`~plugins.core.cornernet.CornerNetHead` that inference
    uses: its last level on the last stack's feature, as one-entry lists (the other levels
    exist for intermediate supervision; leaving them out of the graph changes no value)."""
    return {key: [value] for key, value in head.levels[-1](feat).items()}


class CornerDecoder(nn.Module):
    """Candidates of CornerNet: :func:`plugins.core.cornernet.decode_corners` on the last stack.

    Args:
        input_size: ``(H, W)`` of the network input.
        k: corners per heatmap. Default 100.
        kernel: local-maximum window. Default 3.
        distance_threshold: largest embedding distance of a pair. Default 0.5.
        num_dets: candidate pairs kept. Default 1000.
        score_threshold: pairs must score above this (rejected pairs score -1). Default 0.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        k: int = 100,
        kernel: int = 3,
        distance_threshold: float = 0.5,
        num_dets: int = 1000,
        score_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        if score_threshold < 0:
            raise ValueError(f"score_threshold: expected >= 0, got {score_threshold!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.k = int(k)
        self.kernel = int(kernel)
        self.distance_threshold = float(distance_threshold)
        self.num_dets = int(num_dets)
        self.score_threshold = float(score_threshold)

    def forward(self, outputs: dict[str, Sequence[Tensor]]):
        """Head outputs (dict of per-stack lists) -> ``boxes, scores, labels, valid``."""
        boxes, scores, labels = decode_corners(
            outputs["tl_heat"][-1],
            outputs["br_heat"][-1],
            outputs["tl_emb"][-1],
            outputs["br_emb"][-1],
            outputs["tl_off"][-1],
            outputs["br_off"][-1],
            img_shape=self.input_size,
            k=self.k,
            kernel=self.kernel,
            distance_threshold=self.distance_threshold,
            num_dets=self.num_dets,
            heat_logits=True,
        )
        return boxes, scores, labels, scores > self.score_threshold


@dataclass(frozen=True)
class Selection:
    """Post-processing after decoding, in the frameworks' order.

    Attributes:
        num_classes: number of classes.
        max_detections: detections returned per image (``K``, padded).
        nms_iou_threshold: per-class hard NMS threshold; ``None``: no NMS.
        clip_before_nms: ``(H, W)`` to clip to before NMS (Detectron2's EfficientDet,
            MMDetection's CornerNet), or ``None``.
        min_box_size: keep boxes with width and height ``> min_box_size`` before NMS
            (mmdet's ``min_bbox_size``; MMDetection's CornerNet drops empty boxes: 0), or
            ``None``.
        nms_min_score: keep candidates scoring ``>=`` this before NMS (the core's
            ``batched_soft_nms(method="hard")``), or ``None``.
        shift_limit: NMS shifts the boxes by ``class * (max + 1)`` when an image has at most
            this many candidates (torchvision: 1000 on CPU; mmcv: ``split_thr - 1``); 0 never.
        clip_after: ``(H, W)`` to clip the final boxes to, dropping those left empty
            (Detectron2's ``detector_postprocess``), or ``None``.
    """

    num_classes: int
    max_detections: int = 100
    nms_iou_threshold: float | None = 0.5
    clip_before_nms: tuple[int, int] | None = None
    min_box_size: float | None = None
    nms_min_score: float | None = None
    shift_limit: int = 0
    clip_after: tuple[int, int] | None = None


class _Select(nn.Module):
    def __init__(self, selection: Selection) -> None:
        super().__init__()
        check_positive("max_detections", selection.max_detections)
        if selection.nms_iou_threshold is not None and not 0 <= selection.nms_iou_threshold <= 1:
            raise ValueError(
                f"nms_iou_threshold: expected a value in [0, 1], got {selection.nms_iou_threshold}"
            )
        self.s = selection

    @staticmethod
    def _nonempty(boxes: Tensor, size: float) -> Tensor:
        return ((boxes[..., 2] - boxes[..., 0]) > size) & ((boxes[..., 3] - boxes[..., 1]) > size)

    def _shift(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        real = scores >= 0
        count = real.sum(1)
        masked = torch.where(real.unsqueeze(-1), boxes, torch.full_like(boxes, float("-inf")))
        top = masked.amax(dim=(1, 2)).reshape(-1, 1, 1)
        offsets = labels.unsqueeze(-1).to(boxes.dtype) * (top + 1.0)
        use = ((count > 0) & (count <= self.s.shift_limit)).reshape(-1, 1, 1)
        return boxes + torch.where(use, offsets, torch.zeros_like(offsets))

    def forward(self, boxes: Tensor, scores: Tensor, labels: Tensor, valid: Tensor):
        s = self.s
        if s.clip_before_nms is not None:
            boxes = clip_boxes(boxes, s.clip_before_nms)
        if s.min_box_size is not None:
            valid = valid & self._nonempty(boxes, s.min_box_size)
        if s.nms_min_score is not None:
            valid = valid & (scores >= s.nms_min_score)
        scores = torch.where(valid, scores, torch.full_like(scores, PADDING_SCORE))
        if s.nms_iou_threshold is not None:
            nms_boxes = self._shift(boxes, scores, labels) if s.shift_limit > 0 else boxes
            keep = class_nms(
                nms_boxes,
                scores,
                labels,
                s.num_classes,
                float(s.nms_iou_threshold),
                int(s.max_detections),
            )
            scores = torch.where(keep, scores, torch.full_like(scores, PADDING_SCORE))
        k = min(s.max_detections, scores.shape[1])
        top, index = scores.topk(k, dim=1)
        boxes = boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
        labels = labels.gather(1, index)
        ok = top >= 0
        if s.clip_after is not None:
            boxes = clip_boxes(boxes, s.clip_after)
            ok = ok & self._nonempty(boxes, 0.0)
            # move the dropped rows to the end, keeping the score order
            top, index = torch.where(ok, top, torch.full_like(top, PADDING_SCORE)).topk(k, dim=1)
            boxes = boxes.gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
            labels = labels.gather(1, index)
            ok = top >= 0
        return (
            torch.where(ok.unsqueeze(-1), boxes, torch.zeros_like(boxes)),
            torch.where(ok, top, torch.zeros_like(top)),
            torch.where(ok, labels, torch.full_like(labels, -1)),
            ok.sum(1),
        )


class ExportableDetector(nn.Module):
    """Preprocessing + network + decoding + selection at a fixed input size.

    Args:
        network: ``normalised images (B, 3, H, W) -> raw outputs`` in the form ``decoder``
            takes.
        decoder: :class:`AnchorDecoder` or :class:`CornerDecoder`.
        selection: :class:`Selection`.
        input_size: ``(H, W)``; the graph takes exactly this size.
        pixel_mean: per-channel mean in the network's channel order (0-255 scale).
        pixel_std: per-channel std, same order.
        network_channels: ``"RGB"`` or ``"BGR"``: what the network was trained on. The input is
            always RGB; it is flipped inside for ``"BGR"``.
        input_dtype: ``"uint8"`` or ``"float32"`` (0-255 values either way). Default ``"uint8"``.
    """

    def __init__(
        self,
        network: nn.Module,
        decoder: nn.Module,
        selection: Selection,
        input_size: Sequence[int],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        network_channels: str = "RGB",
        input_dtype: str = "uint8",
    ) -> None:
        super().__init__()
        check_choice("network_channels", network_channels, ("RGB", "BGR"))
        check_choice("input_dtype", input_dtype, ("uint8", "float32"))
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"pixel_mean, pixel_std: expected 3 values each, got {list(pixel_mean)}, "
                f"{list(pixel_std)}"
            )
        self.network = network.eval()
        self.decoder = decoder
        self.select = _Select(selection)
        self.selection = selection
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.network_channels = network_channels
        self.input_dtype = input_dtype
        shape = (1, 3, 1, 1)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).float().reshape(shape))
        self.register_buffer("pixel_std", torch.tensor(pixel_std).float().reshape(shape))

    def example_input(self, batch: int = 1, seed: int = 0) -> Tensor:
        """A random input of the graph's shape and dtype."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (batch, 3, *self.input_size), generator=gen)
        return x.to(torch.uint8 if self.input_dtype == "uint8" else torch.float32)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Detect.

        Args:
            images: ``(B, 3, H, W)`` RGB, ``uint8`` (or ``float32`` in 0-255), ``(H, W)`` =
                ``input_size``.

        Returns:
            ``boxes (B, K, 4)``, ``scores (B, K)``, ``labels (B, K)`` int64, ``num_detections
            (B,)`` int64; padding rows have zero boxes and scores and label -1.
        """
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.input_size:
            raise ValueError(
                f"images: expected shape (B, 3, {self.input_size[0]}, {self.input_size[1]}), "
                f"got {tuple(images.shape)}"
            )
        x = images.float()
        if self.network_channels == "BGR":
            x = x.flip(1)
        x = (x - self.pixel_mean) / self.pixel_std
        boxes, scores, labels, valid = self.decoder(self.network(x))
        return self.select(boxes, scores, labels, valid)
