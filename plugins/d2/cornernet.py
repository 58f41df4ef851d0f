"""CornerNet for Detectron2: config keys, Hourglass backbone and the ``CornerNet`` meta-arch.

`CornerNet: Detecting Objects as Paired Keypoints <https://arxiv.org/abs/1808.01244>`_.

The network and its math live in :mod:`plugins.core` (``HourglassNet``, ``CornerNetHead``,
``cornernet_targets``, ``cornernet_loss``, ``decode_corners``, ``batched_soft_nms``). This
module only translates between Detectron2's types (config nodes, ``ImageList``, ``Instances``)
and tensors. Module paths follow the shared checkpoint layout: ``backbone.body`` holds the core
``HourglassNet`` and ``head.net`` the core ``CornerNetHead``, so a state dict moves to the
MMDetection adapter by renaming the prefix ``head.`` to ``bbox_head.``.

Typical use::

    import plugins.d2  # registers the backbone and the meta-architecture
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from plugins.d2.config import add_plugins_config

    cfg = get_cfg()
    add_plugins_config(cfg)
    cfg.merge_from_file("configs/cornernet_hourglass104.yaml")
    model = build_model(cfg)
"""

from __future__ import annotations

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, ImageList, Instances
from torch import Tensor, nn

from plugins.core._validate import check_choice
from plugins.core.cornernet import (
    CornerNetHead,
    cornernet_loss,
    cornernet_targets,
    decode_corners,
)
from plugins.core.hourglass import HourglassNet
from plugins.core.soft_nms import batched_soft_nms

__all__ = [
    "SOFT_NMS_METHODS",
    "CornerNet",
    "CornerNetPredictor",
    "HourglassBackbone",
    "add_cornernet_config",
    "build_hourglass_backbone",
]

#: Values of ``MODEL.CORNERNET.SOFT_NMS.METHOD``.
SOFT_NMS_METHODS = ("gaussian", "linear", "hard")

#: Loss names returned by :class:`CornerNet` in training, keyed by core ``cornernet_loss`` name.
_LOSS_NAMES = {
    "det_loss": "loss_heatmap",
    "off_loss": "loss_offset",
    "pull_loss": "loss_pull",
    "push_loss": "loss_push",
}


def add_cornernet_config(cfg: CN) -> None:
    """Add the ``MODEL.HOURGLASS`` and ``MODEL.CORNERNET`` nodes, in place.

    Defaults are the paper's Hourglass-104 CornerNet on COCO (mmdet's ``cornernet_hourglass104``
    config). Calling it twice is harmless (existing nodes keep their values).

    Args:
        cfg: a Detectron2 config, e.g. from ``detectron2.config.get_cfg()``.
    """
    if "HOURGLASS" not in cfg.MODEL:
        cfg.MODEL.HOURGLASS = hg = CN()
        # Times each hourglass module halves the resolution (5 in Hourglass-104). Inputs are
        # padded to a multiple of 4 * 2**DOWNSAMPLE_TIMES (128).
        hg.DOWNSAMPLE_TIMES = 5
        # Number of stacked hourglass modules; each one feeds the head (2 in Hourglass-104).
        hg.NUM_STACKS = 2
        # Channels per hourglass level, outermost first (more than DOWNSAMPLE_TIMES entries).
        hg.STAGE_CHANNELS = [256, 256, 384, 384, 384, 512]
        # Residual blocks per hourglass level, outermost first (same length as STAGE_CHANNELS).
        hg.STAGE_BLOCKS = [2, 2, 2, 2, 2, 4]
        # Channels of the per-stack stride-4 output features given to the head.
        hg.FEAT_CHANNELS = 256

    if "CORNERNET" in cfg.MODEL:
        return
    cfg.MODEL.CORNERNET = cn = CN()
    # Number of object classes, no background class (80 for COCO).
    cn.NUM_CLASSES = 80
    # Channels of the associative embedding of each corner (1 in the paper).
    cn.CORNER_EMB_CHANNELS = 1
    # Width of the corner pooling branches of the head (128 in the paper).
    cn.POOL_CHANNELS = 128
    # Width of the 3x3 conv of each prediction branch (256 in the paper).
    cn.HIDDEN_CHANNELS = 256
    # Weight of the Gaussian focal heatmap loss.
    cn.HEATMAP_WEIGHT = 1.0
    # Focal exponent on (1 - p) at corners and on p elsewhere (alpha in the paper). The core
    # loss implements the paper's value only; other values are rejected.
    cn.FOCAL_ALPHA = 2.0
    # Exponent of the (1 - gaussian) penalty reduction around corners (beta in the paper). The
    # core loss implements the paper's value only; other values are rejected.
    cn.FOCAL_BETA = 4.0
    # Weight of the embedding "pull" loss (groups the two corners of one object).
    cn.PULL_WEIGHT = 0.1
    # Weight of the embedding "push" loss (separates corners of different objects).
    cn.PUSH_WEIGHT = 0.1
    # Weight of the sub-pixel corner offset (smooth L1) loss.
    cn.OFFSET_WEIGHT = 1.0
    # Gaussian radius rule: the smallest IoU a box with corners inside the radius keeps with
    # the ground truth.
    cn.GAUSSIAN_MIN_OVERLAP = 0.3
    # Test: top-k corners kept per heatmap (k^2 candidate pairs per image).
    cn.TOPK = 100
    # Test: max-pooling window used as heatmap NMS before picking the top-k corners.
    cn.LOCAL_MAXIMUM_KERNEL = 3
    # Test: pairs whose embeddings differ by more than this are rejected.
    cn.DISTANCE_THRESHOLD = 0.5
    # Test: best candidate pairs kept after decoding, before soft-NMS.
    cn.PRE_NMS_TOPK = 1000
    # Test: candidates scoring at or below this are dropped before soft-NMS (rejected pairs
    # score -1, valid ones the mean of their corner probabilities, in [0, 1]).
    cn.SCORE_THRESH_TEST = 0.0
    # Test: detections kept per image.
    cn.MAX_DETECTIONS = 100

    cn.SOFT_NMS = CN()
    # Run class-wise soft-NMS at test time (the paper does); False keeps the top-scoring
    # candidates without any NMS.
    cn.SOFT_NMS.ENABLED = True
    # Score decay: "gaussian", "linear" or "hard" (classic NMS).
    cn.SOFT_NMS.METHOD = "gaussian"
    # Gaussian decay: scores are multiplied by exp(-IoU^2 / SIGMA).
    cn.SOFT_NMS.SIGMA = 0.5
    # IoU threshold of the "linear" and "hard" methods (unused by "gaussian").
    cn.SOFT_NMS.IOU_THRESHOLD = 0.5
    # Boxes whose decayed score falls below this are discarded.
    cn.SOFT_NMS.SCORE_THRESHOLD = 0.001


# ---------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------
class HourglassBackbone(Backbone):
    """Detectron2 ``Backbone`` around the core stacked :class:`HourglassNet`.

    `Stacked Hourglass Networks <https://arxiv.org/abs/1603.06937>`_, in CornerNet's
    variant (https://arxiv.org/abs/1808.01244). Outputs one stride-4 feature per stack, named
    ``hg0``, ``hg1``, ...: the last one is used for inference, all of them are supervised.

    Args:
        body: the core ``HourglassNet``; stored as ``self.body`` (checkpoint prefix
            ``backbone.body.``).
    """

    def __init__(self, body: HourglassNet) -> None:
        super().__init__()
        if not isinstance(body, HourglassNet):
            raise ValueError(f"body: expected a plugins.core HourglassNet, got {type(body)}")
        self.body = body
        self._out_features = [f"hg{i}" for i in range(body.num_stacks)]
        self._out_feature_channels = {name: body.feat_channel for name in self._out_features}
        self._out_feature_strides = {name: 4 for name in self._out_features}
        self._size_divisibility = 4 * 2**body.downsample_times

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be multiples of this: ``4 * 2**downsample_times``."""
        return self._size_divisibility

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Run the stacks.

        Args:
            x: normalized images ``(B, 3, H, W)``, ``H`` and ``W`` multiples of
                :attr:`size_divisibility`.

        Returns:
            ``{"hg0": (B, C, H / 4, W / 4), ...}``, one entry per stack in stack order,
            ``C = feat_channel``.
        """
        div = self._size_divisibility
        if x.dim() == 4 and (x.shape[-2] % div or x.shape[-1] % div):
            raise ValueError(
                f"x: expected shape (B, 3, H, W) with H and W multiples of {div}, "
                f"got {tuple(x.shape)}"
            )
        return dict(zip(self._out_features, self.body(x)))


@BACKBONE_REGISTRY.register()
def build_hourglass_backbone(cfg: CN, input_shape: ShapeSpec) -> HourglassBackbone:
    """Build the Hourglass backbone from ``cfg.MODEL.HOURGLASS``.

    Select it with ``MODEL.BACKBONE.NAME: build_hourglass_backbone``.

    Args:
        cfg: config with the nodes of :func:`add_cornernet_config`.
        input_shape: input image spec; must have 3 channels.

    Returns:
        HourglassBackbone: outputs ``hg0`` ... ``hg{NUM_STACKS - 1}`` at stride 4.
    """
    if input_shape.channels is not None and input_shape.channels != 3:
        raise ValueError(f"input_shape: expected 3 channels, got {input_shape.channels}")
    hg = cfg.MODEL.HOURGLASS
    body = HourglassNet(
        downsample_times=hg.DOWNSAMPLE_TIMES,
        num_stacks=hg.NUM_STACKS,
        stage_channels=tuple(hg.STAGE_CHANNELS),
        stage_blocks=tuple(hg.STAGE_BLOCKS),
        feat_channel=hg.FEAT_CHANNELS,
    )
    return HourglassBackbone(body)


# ---------------------------------------------------------------------------------------------
# Head and meta-architecture
# ---------------------------------------------------------------------------------------------
class CornerNetPredictor(nn.Module):
    """Holds the core :class:`CornerNetHead` at ``self.net`` (checkpoint prefix ``head.net.``).

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet).

    Args:
        net: the core head.
    """

    def __init__(self, net: CornerNetHead) -> None:
        super().__init__()
        self.net = net

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor | None]]:
        """Predict corner maps.

        Args:
            feats: one ``(B, C, H, W)`` feature per stack, in stack order.

        Returns:
            Core head output: ``tl_heat``/``br_heat`` (heatmap logits ``(B, K, H, W)``),
            ``tl_emb``/``br_emb`` ``(B, 1, H, W)``, ``tl_off``/``br_off`` ``(B, 2, H, W)``,
            each a list with one entry per stack.
        """
        return self.net(feats)


@META_ARCH_REGISTRY.register()
class CornerNet(nn.Module):
    """CornerNet detector for Detectron2 (``MODEL.META_ARCHITECTURE: CornerNet``).

    `CornerNet: Detecting Objects as Paired Keypoints <https://arxiv.org/abs/1808.01244>`_.

    Objects are detected as pairs of top-left / bottom-right corners: per-class corner
    heatmaps trained with a Gaussian-penalised focal loss, 1-D associative embeddings that
    group the two corners of an object (pull / push losses) and sub-pixel offsets. At test
    time the top-k corners of the last stack are paired (:func:`decode_corners`) and
    class-wise soft-NMS keeps the final detections.

    Args:
        backbone: a backbone whose outputs (in ``backbone._out_features`` order) feed the head,
            normally :class:`HourglassBackbone`.
        head: :class:`CornerNetPredictor`.
        num_classes: number of classes.
        pixel_mean: per-channel mean subtracted from input images.
        pixel_std: per-channel std the images are divided by.
        input_format: channel order of the input images ("BGR" or "RGB"). Default "BGR".
        heatmap_weight: weight of the heatmap loss. Default 1.0.
        pull_weight: weight of the pull loss. Default 0.1.
        push_weight: weight of the push loss. Default 0.1.
        offset_weight: weight of the offset loss. Default 1.0.
        min_overlap: Gaussian radius IoU. Default 0.3.
        topk: corners kept per heatmap at test time. Default 100.
        local_maximum_kernel: heatmap max-pool window at test time. Default 3.
        distance_threshold: maximum embedding distance of a pair. Default 0.5.
        pre_nms_topk: candidate pairs kept after decoding. Default 1000.
        score_thresh: candidates with a score at or below it are dropped. Default 0.0.
        max_detections: detections per image. Default 100.
        soft_nms_enabled: run class-wise soft-NMS. Default ``True``.
        soft_nms_method: "gaussian", "linear" or "hard". Default "gaussian".
        soft_nms_sigma: Gaussian sigma. Default 0.5.
        soft_nms_iou_threshold: IoU threshold of "linear" / "hard". Default 0.5.
        soft_nms_score_threshold: decayed scores below it are discarded. Default 0.001.

    Inputs follow Detectron2's convention: a list of dicts with ``image`` ``(3, H, W)`` and, in
    training, ``instances`` (``gt_boxes``, ``gt_classes``). Training returns
    ``{"loss_heatmap", "loss_offset", "loss_pull", "loss_push"}`` (scalars summed over
    stacks); inference returns ``[{"instances": Instances}]`` with ``pred_boxes``, ``scores``
    (in [0, 1]) and ``pred_classes``, in the original image size (``height`` / ``width`` of
    the input dict when given).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: CornerNetPredictor,
        num_classes: int,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        input_format: str = "BGR",
        heatmap_weight: float = 1.0,
        pull_weight: float = 0.1,
        push_weight: float = 0.1,
        offset_weight: float = 1.0,
        min_overlap: float = 0.3,
        topk: int = 100,
        local_maximum_kernel: int = 3,
        distance_threshold: float = 0.5,
        pre_nms_topk: int = 1000,
        score_thresh: float = 0.0,
        max_detections: int = 100,
        soft_nms_enabled: bool = True,
        soft_nms_method: str = "gaussian",
        soft_nms_sigma: float = 0.5,
        soft_nms_iou_threshold: float = 0.5,
        soft_nms_score_threshold: float = 0.001,
    ) -> None:
        super().__init__()
        check_choice("soft_nms_method", soft_nms_method, SOFT_NMS_METHODS)
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError(
                f"pixel_mean, pixel_std: expected 3 values each, got {len(pixel_mean)} and "
                f"{len(pixel_std)}"
            )
        self.backbone = backbone
        self.head = head
        self.num_classes = int(num_classes)
        self.input_format = input_format
        self.heatmap_weight = heatmap_weight
        self.pull_weight = pull_weight
        self.push_weight = push_weight
        self.offset_weight = offset_weight
        self.min_overlap = min_overlap
        self.topk = topk
        self.local_maximum_kernel = local_maximum_kernel
        self.distance_threshold = distance_threshold
        self.pre_nms_topk = pre_nms_topk
        self.score_thresh = score_thresh
        self.max_detections = max_detections
        self.soft_nms_enabled = soft_nms_enabled
        self.soft_nms_method = soft_nms_method
        self.soft_nms_sigma = soft_nms_sigma
        self.soft_nms_iou_threshold = soft_nms_iou_threshold
        self.soft_nms_score_threshold = soft_nms_score_threshold
        # Non-persistent: the checkpoint holds only backbone.body.* and head.net.*.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CN) -> dict:
        """Keyword arguments of :meth:`__init__` from ``cfg.MODEL``."""
        cn = cfg.MODEL.CORNERNET
        if (cn.FOCAL_ALPHA, cn.FOCAL_BETA) != (2.0, 4.0):
            raise ValueError(
                "MODEL.CORNERNET.FOCAL_ALPHA / FOCAL_BETA: expected 2.0 / 4.0 (the values "
                f"plugins.core.cornernet.cornernet_loss implements), got {cn.FOCAL_ALPHA} / "
                f"{cn.FOCAL_BETA}"
            )
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        names = list(backbone._out_features)
        channels = {shapes[n].channels for n in names}
        if len(channels) != 1:
            raise ValueError(f"backbone: expected outputs of equal width, got {shapes}")
        net = CornerNetHead(
            num_classes=cn.NUM_CLASSES,
            in_channels=channels.pop(),
            num_feat_levels=len(names),
            corner_emb_channels=cn.CORNER_EMB_CHANNELS,
            pool_channels=cn.POOL_CHANNELS,
            hidden_channels=cn.HIDDEN_CHANNELS,
        )
        nms = cn.SOFT_NMS
        return {
            "backbone": backbone,
            "head": CornerNetPredictor(net),
            "num_classes": cn.NUM_CLASSES,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "input_format": cfg.INPUT.FORMAT,
            "heatmap_weight": cn.HEATMAP_WEIGHT,
            "pull_weight": cn.PULL_WEIGHT,
            "push_weight": cn.PUSH_WEIGHT,
            "offset_weight": cn.OFFSET_WEIGHT,
            "min_overlap": cn.GAUSSIAN_MIN_OVERLAP,
            "topk": cn.TOPK,
            "local_maximum_kernel": cn.LOCAL_MAXIMUM_KERNEL,
            "distance_threshold": cn.DISTANCE_THRESHOLD,
            "pre_nms_topk": cn.PRE_NMS_TOPK,
            "score_thresh": cn.SCORE_THRESH_TEST,
            "max_detections": cn.MAX_DETECTIONS,
            "soft_nms_enabled": nms.ENABLED,
            "soft_nms_method": nms.METHOD,
            "soft_nms_sigma": nms.SIGMA,
            "soft_nms_iou_threshold": nms.IOU_THRESHOLD,
            "soft_nms_score_threshold": nms.SCORE_THRESHOLD,
        }

    @property
    def device(self) -> torch.device:
        """Device of the model (of its pixel statistics)."""
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalize the images and pad them into a batch divisible by the backbone's stride.

        Args:
            batched_inputs: Detectron2 inputs; ``image`` is ``(3, H, W)`` in ``input_format``.

        Returns:
            ImageList: ``tensor`` ``(B, 3, H_pad, W_pad)``, ``image_sizes`` the unpadded sizes.
        """
        images = []
        for i, x in enumerate(batched_inputs):
            image = x["image"]
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(
                    f"batched_inputs[{i}]['image']: expected shape (3, H, W), got {got}"
                )
            images.append((image.to(self.device) - self.pixel_mean) / self.pixel_std)
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: list[dict]) -> dict[str, Tensor] | list[dict]:
        """Training losses or inference results; see the class docstring.

        Args:
            batched_inputs: list of Detectron2 input dicts.

        Returns:
            Training: dict of scalar losses. Inference: list of ``{"instances": Instances}``.
        """
        images = self.preprocess_image(batched_inputs)
        feats = self.backbone(images.tensor)
        outputs = self.head([feats[name] for name in self.backbone._out_features])
        if self.training:
            for i, x in enumerate(batched_inputs):
                if "instances" not in x:
                    raise ValueError(f"batched_inputs[{i}]: expected key 'instances' in training")
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.losses(outputs, gt_instances, images)
        results = self.inference(outputs, images)
        processed = []
        for result, x, image_size in zip(results, batched_inputs, images.image_sizes):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def losses(
        self,
        outputs: dict[str, list[Tensor | None]],
        gt_instances: list[Instances],
        images: ImageList,
    ) -> dict[str, Tensor]:
        """CornerNet losses from the head outputs and the ground truth.

        Args:
            outputs: :class:`CornerNetPredictor` output.
            gt_instances: per image ``gt_boxes`` (``Boxes`` of ``Tensor[n_i, 4]``, input
                pixels) and ``gt_classes`` (``Tensor[n_i]`` in ``[0, num_classes)``); images
                may have no boxes.
            images: the batch the outputs were computed on.

        Returns:
            ``loss_heatmap``, ``loss_offset`` and (with embeddings) ``loss_pull``,
            ``loss_push``: scalars, summed over stacks.
        """
        targets = cornernet_targets(
            [inst.gt_boxes.tensor for inst in gt_instances],
            [inst.gt_classes for inst in gt_instances],
            feat_shape=outputs["tl_heat"][0].shape,
            img_shape=images.tensor.shape[-2:],
            num_classes=self.num_classes,
            min_overlap=self.min_overlap,
        )
        losses = cornernet_loss(
            outputs,
            targets,
            pull_weight=self.pull_weight,
            push_weight=self.push_weight,
            off_weight=self.offset_weight,
            heat_weight=self.heatmap_weight,
            sum_levels=True,
        )
        return {_LOSS_NAMES.get(name, name): value for name, value in losses.items()}

    @torch.no_grad()
    def inference(
        self, outputs: dict[str, list[Tensor | None]], images: ImageList
    ) -> list[Instances]:
        """Decode the last stack's corners into detections, then soft-NMS per class.

        Args:
            outputs: :class:`CornerNetPredictor` output.
            images: the batch the outputs were computed on.

        Returns:
            Per image ``Instances`` of the unpadded input size with ``pred_boxes`` (input
            pixels, not yet clipped), ``scores`` in ``[0, 1]`` and ``pred_classes``, best
            first, at most ``max_detections``.
        """
        tl_emb, br_emb = outputs["tl_emb"][-1], outputs["br_emb"][-1]
        if tl_emb is None or br_emb is None:
            raise ValueError("outputs: CornerNet inference needs corner embeddings")
        boxes, scores, labels = decode_corners(
            outputs["tl_heat"][-1],
            outputs["br_heat"][-1],
            tl_emb,
            br_emb,
            outputs["tl_off"][-1],
            outputs["br_off"][-1],
            img_shape=images.tensor.shape[-2:],
            k=self.topk,
            kernel=self.local_maximum_kernel,
            distance_threshold=self.distance_threshold,
            num_dets=self.pre_nms_topk,
            heat_logits=True,
        )
        results = []
        for i, image_size in enumerate(images.image_sizes):
            keep = scores[i] > self.score_thresh
            results.append(
                self._select(boxes[i][keep], scores[i][keep], labels[i][keep], image_size)
            )
        return results

    def _select(
        self, boxes: Tensor, scores: Tensor, labels: Tensor, image_size: tuple[int, int]
    ) -> Instances:
        """Soft-NMS per class (if enabled) and keep the ``max_detections`` best.

        Like mmdet's ``CornerHead`` (and the paper's code), boxes are not clipped before NMS;
        :func:`detector_postprocess` clips them to the output image afterwards.
        """
        if self.soft_nms_enabled:
            keep, scores = batched_soft_nms(
                boxes,
                scores,
                labels,
                method=self.soft_nms_method,
                sigma=self.soft_nms_sigma,
                iou_threshold=self.soft_nms_iou_threshold,
                score_threshold=self.soft_nms_score_threshold,
                max_detections=self.max_detections,
            )
        else:
            scores, keep = scores.topk(min(self.max_detections, scores.numel()))
        result = Instances(image_size)
        result.pred_boxes = Boxes(boxes[keep])
        result.scores = scores
        result.pred_classes = labels[keep]
        return result
