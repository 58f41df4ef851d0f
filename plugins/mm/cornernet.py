"""CornerNet in MMDetection 3.x, built from the core network, targets, losses and decoding.

Paper: `CornerNet: Detecting Objects as Paired Keypoints <https://arxiv.org/abs/1808.01244>`_.

The detector is mmdet's own ``CornerNet`` (a ``SingleStageDetector``); this module registers
the two pieces it is assembled from:

* ``PluginsHourglassNet`` (backbone): :class:`plugins.core.hourglass.HourglassNet` at
  ``backbone.body``;
* ``PluginsCornerHead`` (dense head): :class:`plugins.core.cornernet.CornerNetHead` at
  ``bbox_head.net``. Training turns mmdet's ``InstanceData`` ground truth into
  :func:`~plugins.core.cornernet.cornernet_targets` and
  :func:`~plugins.core.cornernet.cornernet_loss`; inference pairs corners with
  :func:`~plugins.core.cornernet.decode_corners` and runs the core soft-NMS
  (``test_cfg.nms.type="plugins_soft_nms"``, see :mod:`plugins.mm.soft_nms`) or any
  ``mmcv.ops`` NMS type.

So the detector's state dict holds only ``backbone.body.*`` and ``bbox_head.net.*``: the
Detectron2 CornerNet (``backbone.body.*`` / ``head.net.*``) loads it after a prefix swap
(``tools/convert_checkpoint.py``).

Both classes accept the arguments of mmdet's ``HourglassNet`` / ``CornerHead`` (norm and loss
configs included, checked against what the core implements), so an mmdet CornerNet config
switches to them by changing ``type`` only::

    model = dict(
        backbone=dict(type="PluginsHourglassNet"),
        bbox_head=dict(type="PluginsCornerHead"),
        test_cfg=dict(nms=dict(type="plugins_soft_nms", method="gaussian", sigma=0.5)),
    )
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import get_box_tensor
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from plugins.core.cornernet import CornerNetHead, cornernet_loss, cornernet_targets, decode_corners
from plugins.core.hourglass import HourglassNet
from plugins.mm.soft_nms import is_plugins_soft_nms, plugins_batched_soft_nms

__all__ = [
    "CORNERNET_TEST_CFG",
    "PluginsHourglassNet",
    "PluginsCornerHead",
]

CORNERNET_TEST_CFG: dict = dict(
    corner_topk=100,
    local_maximum_kernel=3,
    distance_threshold=0.5,
    num_dets=1000,
    score_thr=0.0,
    max_per_img=100,
    nms=dict(type="plugins_soft_nms", method="gaussian", sigma=0.5, iou_threshold=0.5),
)
"""Default ``test_cfg`` of :class:`PluginsCornerHead` (the paper's inference settings).

``corner_topk`` corners per heatmap, ``local_maximum_kernel`` max-pool window,
``distance_threshold`` on the embedding distance of a pair, ``num_dets`` candidate pairs kept
after decoding, ``score_thr`` (pairs scoring at or below it are dropped before NMS),
``max_per_img`` detections after NMS, ``nms`` (core soft-NMS or an ``mmcv.ops`` NMS type).
"""


def _check_norm_cfg(norm_cfg: Mapping | None) -> None:
    """The core hourglass uses trainable ``nn.BatchNorm2d``; reject other norm configs."""
    if norm_cfg is None:
        return
    ok = norm_cfg.get("type") in ("BN", "BN2d") and norm_cfg.get("requires_grad", True)
    extra = set(norm_cfg) - {"type", "requires_grad"}
    if not ok or extra:
        raise ValueError(
            "norm_cfg: expected dict(type='BN', requires_grad=True) (the core HourglassNet "
            f"uses trainable BatchNorm2d), got {dict(norm_cfg)!r}"
        )


@MODELS.register_module()
class PluginsHourglassNet(BaseModule):
    """Stacked hourglass backbone: :class:`plugins.core.hourglass.HourglassNet` at ``body``.

    Papers: `Stacked Hourglass Networks <https://arxiv.org/abs/1603.06937>`_,
    `CornerNet <https://arxiv.org/abs/1808.01244>`_.

    Args:
        downsample_times: downsamplings inside each hourglass. Default 5.
        num_stacks: stacked hourglasses (2 for Hourglass-104). Default 2.
        stage_channels: channels per hourglass level. Default ``(256, 256, 384, 384, 384, 512)``.
        stage_blocks: residual blocks per level. Default ``(2, 2, 2, 2, 2, 4)``.
        feat_channel: channels of each output feature. Default 256.
        norm_eval: keep BatchNorm statistics frozen in training. Default ``False``.
        channels_last: run in ``torch.channels_last`` memory format inside (faster inference;
            not for CPU training with torch 2.13, see the core ``HourglassNet``; outputs are
            NCHW either way). Default ``False``.
        norm_cfg: accepted for compatibility with mmdet's ``HourglassNet``; only
            ``dict(type="BN", requires_grad=True)`` (or ``None``). Default ``None``.
        init_cfg: mmengine init config; must be ``None`` (the core initialises itself).

    Shapes:
        ``forward((B, 3, H, W))`` -> tuple of ``num_stacks`` tensors
        ``(B, feat_channel, H / 4, W / 4)`` (last = final feature).

    Raises:
        ValueError: unsupported ``norm_cfg`` or ``init_cfg``, or bad hourglass arguments.
    """

    def __init__(
        self,
        downsample_times: int = 5,
        num_stacks: int = 2,
        stage_channels: Sequence[int] = (256, 256, 384, 384, 384, 512),
        stage_blocks: Sequence[int] = (2, 2, 2, 2, 2, 4),
        feat_channel: int = 256,
        norm_eval: bool = False,
        channels_last: bool = False,
        norm_cfg: Mapping | None = None,
        init_cfg: Mapping | None = None,
    ) -> None:
        if init_cfg is not None:
            raise ValueError(f"init_cfg: expected None (core init is used), got {init_cfg!r}")
        _check_norm_cfg(norm_cfg)
        super().__init__(init_cfg=None)
        self.body = HourglassNet(
            downsample_times=downsample_times,
            num_stacks=num_stacks,
            stage_channels=tuple(stage_channels),
            stage_blocks=tuple(stage_blocks),
            feat_channel=feat_channel,
            norm_eval=norm_eval,
            channels_last=channels_last,
        )

    @property
    def num_stacks(self) -> int:
        """Number of output features (one per hourglass)."""
        return self.body.num_stacks

    @property
    def feat_channel(self) -> int:
        """Channels of each output feature."""
        return self.body.feat_channel

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(B, 3, H, W)`` -> tuple of ``num_stacks`` features ``(B, C, H / 4, W / 4)``."""
        return tuple(self.body(x))


def _loss_weights(
    loss_heatmap: Mapping | None, loss_embedding: Mapping | None, loss_offset: Mapping | None
) -> dict[str, float]:
    """Map mmdet's CornerHead loss configs onto the weights of ``cornernet_loss``.

    The core loss is CornerNet's: Gaussian focal (alpha 2, beta 4), associative embedding
    (pull / push) and smooth-L1 (beta 1) offsets. Configs asking for anything else are rejected
    rather than silently ignored. ``None`` switches a term off (weight 0).
    """
    weights = dict(heat_weight=0.0, pull_weight=0.0, push_weight=0.0, off_weight=0.0)

    def check(name: str, cfg: Mapping, kind: str, fixed: dict, allowed: set) -> None:
        if cfg.get("type") != kind:
            raise ValueError(f"{name}: expected type {kind!r}, got {cfg.get('type')!r}")
        unknown = set(cfg) - {"type"} - set(fixed) - allowed
        if unknown:
            raise ValueError(f"{name}: unsupported keys {sorted(unknown)} for {kind}")
        for key, value in fixed.items():
            if key in cfg and float(cfg[key]) != value:
                raise ValueError(
                    f"{name}: {key}={cfg[key]!r} is not supported, the core loss uses {value}"
                )

    if loss_heatmap is not None:
        check(
            "loss_heatmap",
            loss_heatmap,
            "GaussianFocalLoss",
            dict(alpha=2.0, gamma=4.0, pos_weight=1.0, neg_weight=1.0),
            {"loss_weight", "reduction"},
        )
        if loss_heatmap.get("reduction", "mean") != "mean":
            raise ValueError("loss_heatmap: only reduction='mean' is supported")
        weights["heat_weight"] = float(loss_heatmap.get("loss_weight", 1.0))
    if loss_embedding is not None:
        check(
            "loss_embedding",
            loss_embedding,
            "AssociativeEmbeddingLoss",
            {},
            {"pull_weight", "push_weight"},
        )
        weights["pull_weight"] = float(loss_embedding.get("pull_weight", 0.25))
        weights["push_weight"] = float(loss_embedding.get("push_weight", 0.25))
    if loss_offset is not None:
        check(
            "loss_offset",
            loss_offset,
            "SmoothL1Loss",
            dict(beta=1.0),
            {"loss_weight", "reduction"},
        )
        if loss_offset.get("reduction", "mean") != "mean":
            raise ValueError("loss_offset: only reduction='mean' is supported")
        weights["off_weight"] = float(loss_offset.get("loss_weight", 1.0))
    return weights


@MODELS.register_module()
class PluginsCornerHead(BaseDenseHead):
    """CornerNet head: :class:`plugins.core.cornernet.CornerNetHead` at ``net``.

    Paper: `CornerNet <https://arxiv.org/abs/1808.01244>`_; soft-NMS:
    `Bodla et al. 2017 <https://arxiv.org/abs/1704.04503>`_.

    Training: every feature level (hourglass stack) is supervised with the same targets
    (intermediate supervision); losses ``det_loss``, ``pull_loss``, ``push_loss``,
    ``off_loss`` are per-level lists, which mmdet sums. Inference uses the last level.

    Args:
        num_classes: number of object classes.
        in_channels: channels of each input feature.
        num_feat_levels: number of input features (stacks). Default 2.
        corner_emb_channels: embedding size (1 in the paper; inference needs 1). Default 1.
        pool_channels: width of the corner pooling branches. Default 128.
        hidden_channels: width of the prediction branches. Default 256.
        min_overlap: IoU defining the Gaussian radius of the heatmap targets. Default 0.3.
        train_cfg: unused (kept for ``SingleStageDetector``). Default ``None``.
        test_cfg: inference settings, see :data:`CORNERNET_TEST_CFG` (missing keys take those
            defaults). Default ``None``.
        loss_heatmap: ``dict(type="GaussianFocalLoss", alpha=2.0, gamma=4.0, loss_weight=1.0)``
            (only ``loss_weight`` may change). Default as shown.
        loss_embedding: ``dict(type="AssociativeEmbeddingLoss", pull_weight=0.1,
            push_weight=0.1)``. Default as shown (the paper's weights).
        loss_offset: ``dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0)`` (only
            ``loss_weight`` may change). Default as shown.
        channels_last: run in ``torch.channels_last`` memory format inside (faster inference;
            outputs are NCHW either way). Default ``False``.
        init_cfg: must be ``None`` (the core initialises itself like mmdet's ``CornerHead``).

    Raises:
        ValueError: a loss config the core does not implement, or a non-``None`` ``init_cfg``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        num_feat_levels: int = 2,
        corner_emb_channels: int = 1,
        pool_channels: int = 128,
        hidden_channels: int = 256,
        min_overlap: float = 0.3,
        train_cfg: Mapping | None = None,
        test_cfg: Mapping | None = None,
        loss_heatmap: Mapping | None = dict(
            type="GaussianFocalLoss", alpha=2.0, gamma=4.0, loss_weight=1.0
        ),
        loss_embedding: Mapping | None = dict(
            type="AssociativeEmbeddingLoss", pull_weight=0.1, push_weight=0.1
        ),
        loss_offset: Mapping | None = dict(type="SmoothL1Loss", beta=1.0, loss_weight=1.0),
        channels_last: bool = False,
        init_cfg: Mapping | None = None,
    ) -> None:
        if init_cfg is not None:
            raise ValueError(f"init_cfg: expected None (core init is used), got {init_cfg!r}")
        super().__init__(init_cfg=None)
        self.num_classes = int(num_classes)
        self.min_overlap = float(min_overlap)
        self.loss_weights = _loss_weights(loss_heatmap, loss_embedding, loss_offset)
        self.train_cfg = train_cfg
        self.test_cfg = test_cfg
        self.net = CornerNetHead(
            num_classes,
            in_channels,
            num_feat_levels=num_feat_levels,
            corner_emb_channels=corner_emb_channels,
            pool_channels=pool_channels,
            hidden_channels=hidden_channels,
            channels_last=channels_last,
        )

    def init_weights(self) -> None:
        """Keep the core initialisation (mmdet's ``CornerHead`` scheme); nothing to do."""

    # ---------------------------------------------------------------------------------------
    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor | None], ...]:
        """Predict corner maps for every level.

        Args:
            feats: ``num_feat_levels`` features ``(B, in_channels, H, W)``.

        Returns:
            ``(tl_heats, br_heats, tl_embs, br_embs, tl_offs, br_offs)`` (mmdet's
            ``CornerHead`` order), each a list per level: heatmap logits
            ``(B, num_classes, H, W)``, embeddings ``(B, corner_emb_channels, H, W)`` (or
            ``None`` without embeddings), offsets ``(B, 2, H, W)``.
        """
        out = self.net(list(feats))
        return (
            out["tl_heat"],
            out["br_heat"],
            out["tl_emb"],
            out["br_emb"],
            out["tl_off"],
            out["br_off"],
        )

    @staticmethod
    def _as_outputs(
        tl_heats: Sequence[Tensor],
        br_heats: Sequence[Tensor],
        tl_embs: Sequence[Tensor | None],
        br_embs: Sequence[Tensor | None],
        tl_offs: Sequence[Tensor],
        br_offs: Sequence[Tensor],
    ) -> dict[str, list[Tensor | None]]:
        return dict(
            tl_heat=list(tl_heats),
            br_heat=list(br_heats),
            tl_emb=list(tl_embs),
            br_emb=list(br_embs),
            tl_off=list(tl_offs),
            br_off=list(br_offs),
        )

    # ---------------------------------------------------------------------------------------
    def loss_by_feat(
        self,
        tl_heats: list[Tensor],
        br_heats: list[Tensor],
        tl_embs: list[Tensor | None],
        br_embs: list[Tensor | None],
        tl_offs: list[Tensor],
        br_offs: list[Tensor],
        batch_gt_instances: list[InstanceData],
        batch_img_metas: list[dict],
        batch_gt_instances_ignore: list[InstanceData] | None = None,
    ) -> dict[str, list[Tensor]]:
        """CornerNet losses from the head outputs and mmdet's ground truth.

        Args:
            tl_heats, br_heats: per level ``(B, num_classes, H, W)`` heatmap logits.
            tl_embs, br_embs: per level ``(B, corner_emb_channels, H, W)`` (or ``None``).
            tl_offs, br_offs: per level ``(B, 2, H, W)`` offsets.
            batch_gt_instances: per image ``InstanceData`` with ``bboxes`` ``(n, 4)`` xyxy in
                network-input pixels and ``labels`` ``(n,)``.
            batch_img_metas: per image metas; ``batch_input_shape`` (padded batch size) sets
                the input-to-heatmap scale.
            batch_gt_instances_ignore: unused (CornerNet has no ignore regions).

        Returns:
            dict: ``det_loss``, ``off_loss`` and (with embeddings) ``pull_loss``,
            ``push_loss``, each a list with one scalar per level.
        """
        boxes = [get_box_tensor(gt.bboxes).to(tl_heats[-1].dtype) for gt in batch_gt_instances]
        labels = [gt.labels.long() for gt in batch_gt_instances]
        targets = cornernet_targets(
            boxes,
            labels,
            tl_heats[-1].shape,
            batch_img_metas[0]["batch_input_shape"],
            self.num_classes,
            min_overlap=self.min_overlap,
        )
        outputs = self._as_outputs(tl_heats, br_heats, tl_embs, br_embs, tl_offs, br_offs)
        losses = cornernet_loss(outputs, targets, **self.loss_weights)
        if self.loss_weights["pull_weight"] == 0 and self.loss_weights["push_weight"] == 0:
            losses.pop("pull_loss", None)
            losses.pop("push_loss", None)
        return losses

    # ---------------------------------------------------------------------------------------
    def _test_setting(self, key: str):
        cfg = self.test_cfg if self.test_cfg is not None else {}
        return cfg.get(key, CORNERNET_TEST_CFG[key])

    def predict_by_feat(
        self,
        tl_heats: list[Tensor],
        br_heats: list[Tensor],
        tl_embs: list[Tensor | None],
        br_embs: list[Tensor | None],
        tl_offs: list[Tensor],
        br_offs: list[Tensor],
        batch_img_metas: list[dict] | None = None,
        rescale: bool = False,
        with_nms: bool = True,
    ) -> list[InstanceData]:
        """Decode corner pairs of the last level into detections.

        Steps per image: :func:`~plugins.core.cornernet.decode_corners` (coordinates in
        network-input pixels, minus ``img_meta["border"]`` when the test pipeline centre-crops),
        drop pairs scoring ``<= score_thr`` (rejected pairs score -1), clip to the image
        (``img_shape``; with a border, the original image's extent), drop boxes left empty
        by the clipping, NMS from
        ``test_cfg.nms``, keep ``max_per_img``, divide by ``scale_factor`` and clip to
        ``ori_shape`` when ``rescale``. The same order as the Detectron2 CornerNet.

        Args:
            tl_heats, br_heats, tl_embs, br_embs, tl_offs, br_offs: head outputs per level.
            batch_img_metas: per image metas (``batch_input_shape``, ``img_shape``,
                ``ori_shape``, ``scale_factor``, optional ``border``).
            rescale: map boxes back to the original image. Default ``False``.
            with_nms: run NMS. Default ``True``.

        Returns:
            list of ``InstanceData`` with ``bboxes`` ``Tensor[K, 4]``, ``scores`` ``Tensor[K]``
            and ``labels`` ``LongTensor[K]``, sorted by score.

        Raises:
            ValueError: the head has no (1-channel) embeddings, or metas are missing.
        """
        if batch_img_metas is None or len(batch_img_metas) != tl_heats[-1].shape[0]:
            raise ValueError("batch_img_metas: expected one meta dict per image")
        if tl_embs[-1] is None or br_embs[-1] is None:
            raise ValueError("tl_embs: CornerNet inference needs corner embeddings")
        heat = tl_heats[-1]
        borders = heat.new_tensor(
            [list(meta.get("border", (0, 0, 0, 0)))[:4] for meta in batch_img_metas]
        )
        boxes, scores, labels = decode_corners(
            tl_heats[-1],
            br_heats[-1],
            tl_embs[-1],
            br_embs[-1],
            tl_offs[-1],
            br_offs[-1],
            batch_img_metas[0]["batch_input_shape"],
            k=int(self._test_setting("corner_topk")),
            kernel=int(self._test_setting("local_maximum_kernel")),
            distance_threshold=float(self._test_setting("distance_threshold")),
            num_dets=int(self._test_setting("num_dets")),
            heat_logits=True,
            border=borders,
        )
        return [
            self._postprocess_single(boxes[i], scores[i], labels[i], meta, rescale, with_nms)
            for i, meta in enumerate(batch_img_metas)
        ]

    def _postprocess_single(
        self,
        boxes: Tensor,
        scores: Tensor,
        labels: Tensor,
        img_meta: dict,
        rescale: bool,
        with_nms: bool,
    ) -> InstanceData:
        """Threshold, clip, drop empty boxes, NMS, top-k and rescale one image's pairs."""
        keep = scores > float(self._test_setting("score_thr"))
        boxes = _clip(boxes[keep], _image_extent(img_meta))
        scores, labels = scores[keep], labels[keep]
        nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, labels = boxes[nonempty], scores[nonempty], labels[nonempty]
        nms_cfg = self._test_setting("nms")
        if with_nms and nms_cfg is not None and scores.numel() > 0:
            if is_plugins_soft_nms(nms_cfg):
                dets, kept = plugins_batched_soft_nms(boxes, scores, labels, nms_cfg)
            else:
                from mmcv.ops import batched_nms

                dets, kept = batched_nms(boxes, scores.contiguous(), labels, dict(nms_cfg))
            boxes, scores, labels = dets[:, :4], dets[:, 4], labels[kept]
        max_per_img = self._test_setting("max_per_img")
        if max_per_img is not None and max_per_img >= 0:
            boxes, scores, labels = boxes[:max_per_img], scores[:max_per_img], labels[:max_per_img]
        if rescale and "scale_factor" in img_meta:
            factor = boxes.new_tensor(img_meta["scale_factor"]).reshape(-1)[:2]
            boxes = _clip(boxes / factor.repeat(2), img_meta.get("ori_shape"))
        results = InstanceData()
        results.bboxes = boxes
        results.scores = scores
        results.labels = labels.long()
        return results


def _image_extent(img_meta: Mapping) -> tuple[float, float] | None:
    """``(height, width)`` of the image inside the network input, after the border shift.

    Without ``border`` it is ``img_shape``; with ``border`` (test-time centre crop-pad, where
    decoded coordinates are shifted back to the original image) the original image's size in
    input pixels, ``ori_shape`` times ``scale_factor``.
    """
    if "border" in img_meta and "ori_shape" in img_meta:
        height, width = img_meta["ori_shape"][:2]
        scale_w, scale_h = (list(img_meta.get("scale_factor", (1.0, 1.0))) * 2)[:2]
        return float(height) * float(scale_h), float(width) * float(scale_w)
    shape = img_meta.get("img_shape")
    return None if shape is None else (float(shape[0]), float(shape[1]))


def _clip(boxes: Tensor, extent: Sequence[float] | None) -> Tensor:
    """Clip ``Tensor[N, 4]`` xyxy boxes to ``[0, w] x [0, h]`` (unchanged when ``extent`` is None)."""
    if extent is None:
        return boxes
    height, width = float(extent[0]), float(extent[1])
    return torch.stack(
        (
            boxes[:, 0].clamp(0, width),
            boxes[:, 1].clamp(0, height),
            boxes[:, 2].clamp(0, width),
            boxes[:, 3].clamp(0, height),
        ),
        dim=1,
    )
