"""CornerNet: corner head network, Gaussian corner targets, losses and corner decoding.

Paper: CornerNet: Detecting Objects as Paired Keypoints, Law & Deng 2018,
https://arxiv.org/abs/1808.01244.

Everything here is numerically aligned with MMDetection 3.3's ``CornerHead`` (targets, losses,
``_decode_heatmap``), ``gaussian_radius`` / ``gen_gaussian_target`` and
``AssociativeEmbeddingLoss``, so that weights and results transfer both ways (see
``plugins.convert.mmdet_cornernet``). Where mmdet would crash or index out of range
(boxes sticking out of the image, inverted boxes, ``k`` larger than the heatmap) this module
clamps instead; those cases are noted on the functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.core._validate import check_positive, check_tensor
from plugins.core.box_loss import smooth_l1_loss
from plugins.core.corner_pool import BottomRightPool, TopLeftPool
from plugins.core.focal_loss import gaussian_focal_loss, prior_prob_bias
from plugins.core.hourglass import HourglassNet

OUTPUT_KEYS = ("tl_heat", "br_heat", "tl_emb", "br_emb", "tl_off", "br_off")
"""Keys of :meth:`CornerNetHead.forward`'s result, in mmdet's output order."""

_AVG_EPS = torch.finfo(torch.float32).eps  # added to loss normalisers, as mmdet does


# --------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------
class PredictionBranch(nn.Module):
    """3x3 conv (with bias) + ReLU + 1x1 conv (with bias): one CornerNet output map.

    Args:
        in_channels: input channels.
        out_channels: output channels (classes, embedding size or 2 offsets).
        hidden_channels: width of the 3x3 conv. Default 256 (mmdet keeps 256 for any input).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 256) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.out = nn.Conv2d(hidden_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, H, W)`` -> ``(B, out, H, W)``."""
        return self.out(self.act(self.hidden(x)))


class CornerLevelHead(nn.Module):
    """CornerNet's prediction modules for one backbone stack (feature level).

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet, Fig. 7).

    Top-left and bottom-right corner pooling modules, each followed by heatmap, embedding and
    offset branches.

    Args:
        num_classes: heatmap channels.
        in_channels: channels of the input feature.
        corner_emb_channels: embedding size; 0 disables the embedding branches. Default 1.
        pool_channels: width of the pooled branches. Default 128.
        hidden_channels: width of the prediction branches. Default 256.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        corner_emb_channels: int = 1,
        pool_channels: int = 128,
        hidden_channels: int = 256,
    ) -> None:
        super().__init__()
        self.tl_pool = TopLeftPool(in_channels, pool_channels, in_channels)
        self.br_pool = BottomRightPool(in_channels, pool_channels, in_channels)
        self.tl_heat = PredictionBranch(in_channels, num_classes, hidden_channels)
        self.br_heat = PredictionBranch(in_channels, num_classes, hidden_channels)
        if corner_emb_channels > 0:
            self.tl_emb: PredictionBranch | None = PredictionBranch(
                in_channels, corner_emb_channels, hidden_channels
            )
            self.br_emb: PredictionBranch | None = PredictionBranch(
                in_channels, corner_emb_channels, hidden_channels
            )
        else:
            self.tl_emb = None
            self.br_emb = None
        self.tl_off = PredictionBranch(in_channels, 2, hidden_channels)
        self.br_off = PredictionBranch(in_channels, 2, hidden_channels)

    def forward(self, x: Tensor) -> dict[str, Tensor | None]:
        """``(B, in, H, W)`` -> dict with the six maps (embeddings ``None`` when disabled)."""
        tl = self.tl_pool(x)
        br = self.br_pool(x)
        return {
            "tl_heat": self.tl_heat(tl),
            "br_heat": self.br_heat(br),
            "tl_emb": None if self.tl_emb is None else self.tl_emb(tl),
            "br_emb": None if self.br_emb is None else self.br_emb(br),
            "tl_off": self.tl_off(tl),
            "br_off": self.br_off(br),
        }


class CornerNetHead(nn.Module):
    """CornerNet head: one :class:`CornerLevelHead` per backbone stack.

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet).

    Heatmaps are logits (apply ``sigmoid`` for probabilities); their last conv's bias starts at
    ``prior_prob_bias(0.1)``, as in mmdet. Other convs use Kaiming-normal (fan-out) init with
    zero bias, BatchNorm weight 1 / bias 0, and the last conv of every branch PyTorch's default
    init, which reproduces mmdet's ``CornerHead.init_weights``.

    Args:
        num_classes: number of object classes (heatmap channels).
        in_channels: channels of each input feature.
        num_feat_levels: number of input features (stacks): 2 for Hourglass-104. Default 2.
        corner_emb_channels: embedding size; 0 disables embeddings. Default 1.
        pool_channels: width of the corner pooling branches. Default 128.
        hidden_channels: width of the prediction branches. Default 256.
        prior_prob: initial heatmap probability. Default 0.1.
        channels_last: run the convolutions in ``torch.channels_last`` memory format (weights
            and activations; faster inference on CPU, values agree to float rounding); the
            returned maps are contiguous NCHW either way. Default ``False`` (see
            :class:`~plugins.core.hourglass.HourglassNet` for the CPU training crash).

    Shapes:
        ``forward(list of num_feat_levels tensors (B, in_channels, H, W))`` -> dict with keys
        ``tl_heat``/``br_heat`` (lists of ``(B, num_classes, H, W)``), ``tl_emb``/``br_emb``
        (lists of ``(B, corner_emb_channels, H, W)`` or of ``None``), ``tl_off``/``br_off``
        (lists of ``(B, 2, H, W)``), one entry per level; the last level is used for inference.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        num_feat_levels: int = 2,
        corner_emb_channels: int = 1,
        pool_channels: int = 128,
        hidden_channels: int = 256,
        prior_prob: float = 0.1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        check_positive("num_classes", num_classes)
        check_positive("in_channels", in_channels)
        check_positive("num_feat_levels", num_feat_levels)
        check_positive("corner_emb_channels", corner_emb_channels, allow_zero=True)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.num_feat_levels = int(num_feat_levels)
        self.corner_emb_channels = int(corner_emb_channels)
        self.prior_prob = float(prior_prob)
        self.levels = nn.ModuleList(
            CornerLevelHead(
                self.num_classes,
                self.in_channels,
                self.corner_emb_channels,
                pool_channels,
                hidden_channels,
            )
            for _ in range(self.num_feat_levels)
        )
        self.reset_parameters()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def reset_parameters(self) -> None:
        """Initialise the weights like mmdet's ``CornerHead.init_weights``."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bias = prior_prob_bias(self.prior_prob)
        for level in self.levels:
            for branch in (level.tl_heat, level.br_heat, level.tl_off, level.br_off):
                branch.out.reset_parameters()
            for branch in (level.tl_emb, level.br_emb):
                if branch is not None:
                    branch.out.reset_parameters()
            nn.init.constant_(level.tl_heat.out.bias, bias)
            nn.init.constant_(level.br_heat.out.bias, bias)

    def forward(self, feats: Sequence[Tensor]) -> dict[str, list[Tensor | None]]:
        """Predict corner maps for every level; see the class docstring for shapes."""
        if isinstance(feats, Tensor) or len(feats) != self.num_feat_levels:
            got = "a Tensor" if isinstance(feats, Tensor) else f"{len(feats)} features"
            raise ValueError(f"feats: expected a list of {self.num_feat_levels} tensors, got {got}")
        outputs: dict[str, list[Tensor | None]] = {key: [] for key in OUTPUT_KEYS}
        for i, (level, feat) in enumerate(zip(self.levels, feats)):
            check_tensor(f"feats[{i}]", feat, (None, self.in_channels, None, None), floating=True)
            if self.channels_last:
                feat = feat.contiguous(memory_format=torch.channels_last)
            for key, value in level(feat).items():
                outputs[key].append(None if value is None else value.contiguous())
        return outputs


class CornerNet(nn.Module):
    """CornerNet network: :class:`~plugins.core.hourglass.HourglassNet` + :class:`CornerNetHead`.

    Paper: https://arxiv.org/abs/1808.01244 (CornerNet).

    Args:
        num_classes: number of object classes.
        backbone: the hourglass backbone. Default: Hourglass-104 (``HourglassNet()``).
        corner_emb_channels: embedding size. Default 1.
        channels_last: the head's ``channels_last`` (faster inference; give the backbone its
            own). Default ``False``.

    Shapes:
        ``forward((B, 3, H, W))`` -> :class:`CornerNetHead` output with one level per stack,
        maps of size ``(H / 4, W / 4)``.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: HourglassNet | None = None,
        corner_emb_channels: int = 1,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = HourglassNet() if backbone is None else backbone
        self.head = CornerNetHead(
            num_classes,
            self.backbone.feat_channel,
            num_feat_levels=self.backbone.num_stacks,
            corner_emb_channels=corner_emb_channels,
            channels_last=channels_last,
        )

    def forward(self, images: Tensor) -> dict[str, list[Tensor | None]]:
        """Run backbone and head on ``images`` ``(B, 3, H, W)``."""
        return self.head(self.backbone(images))


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------
def gaussian_radius(det_size: tuple[float, float], min_overlap: float = 0.3) -> float | Tensor:
    """Radius of the Gaussian around a ground-truth corner (CornerNet's rule).

    The largest radius ``r`` such that a box whose corners both move by ``r`` still has IoU >=
    ``min_overlap`` with the ground truth, taking the minimum over the three cases (one corner
    inside / both inside / both outside); each case is a quadratic in ``r``. Same formulas and
    operation order as mmdet's ``gaussian_radius``.

    Args:
        det_size: ``(height, width)`` of the box on the heatmap grid; Python numbers or
            float64 tensors of one shape (computed elementwise).
        min_overlap: minimum IoU. Default 0.3.

    Returns:
        float (or Tensor of radii for tensor input); callers truncate it to an int.
    """
    height, width = det_size
    sqrt = torch.sqrt if isinstance(height, Tensor) or isinstance(width, Tensor) else math.sqrt
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 - sqrt(b1**2 - 4 * 1 * c1)) / (2 * 1)
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 - sqrt(b2**2 - 4 * 4 * c2)) / (2 * 4)
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + sqrt(b3**2 - 4 * a3 * c3)) / (2 * a3)
    if isinstance(r1, Tensor) or isinstance(r2, Tensor) or isinstance(r3, Tensor):
        return torch.minimum(torch.minimum(torch.as_tensor(r1), r2), r3)
    return min(r1, r2, r3)


def _gaussian_sigma_denominator(radius: Tensor, dtype: torch.dtype) -> Tensor:
    """``2 sigma^2`` with ``sigma = (2 r + 1) / 6``, computed in float64 then cast."""
    sigma = (2 * radius.to(torch.float64) + 1) / 6
    return (2 * sigma * sigma).to(dtype)


def gaussian_kernel(
    radius: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """Unnormalised 2-D Gaussian ``exp(-(x^2 + y^2) / (2 sigma^2))``, ``sigma = (2r+1)/6``.

    Values below ``finfo(dtype).eps`` times the peak are set to 0 (as mmdet's ``gaussian2D``).

    Args:
        radius: non-negative int radius.
        dtype: result dtype. Default float32.
        device: result device. Default CPU.

    Returns:
        Tensor ``(2r+1, 2r+1)`` with 1 at the centre.
    """
    check_positive("radius", radius, allow_zero=True)
    r = int(radius)
    d = torch.arange(-r, r + 1, dtype=dtype, device=device)
    sq = d.view(-1, 1) * d.view(-1, 1) + d.view(1, -1) * d.view(1, -1)
    denom = _gaussian_sigma_denominator(torch.tensor(float(r)), dtype).to(device)
    g = torch.exp(-sq / denom)
    return g.masked_fill(g < torch.finfo(dtype).eps * g.max(), 0)


def draw_gaussian(heatmap: Tensor, center: tuple[int, int], radius: int, k: float = 1.0) -> Tensor:
    """Splat a Gaussian peak onto ``heatmap`` in place, keeping the elementwise maximum.

    Equals mmdet's ``gen_gaussian_target``.

    Args:
        heatmap: ``(H, W)`` float map, modified in place.
        center: integer ``(x, y)`` of the peak (inside the map).
        radius: Gaussian radius (int >= 0), see :func:`gaussian_radius`.
        k: peak value multiplier. Default 1.

    Returns:
        Tensor: ``heatmap`` itself.
    """
    check_tensor("heatmap", heatmap, (None, None), floating=True)
    height, width = heatmap.shape
    x, y = int(center[0]), int(center[1])
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f"center: expected (x, y) inside a {width}x{height} map, got {center}")
    r = int(radius)
    g = gaussian_kernel(r, heatmap.dtype, heatmap.device) * k
    x0, x1 = max(0, x - r), min(width, x + r + 1)
    y0, y1 = max(0, y - r), min(height, y + r + 1)
    patch = g[y0 - y + r : y1 - y + r, x0 - x + r : x1 - x + r]
    region = heatmap[y0:y1, x0:x1]
    torch.maximum(region, patch, out=region)
    return heatmap


def _feat_hw(feat_shape: Sequence[int]) -> tuple[int, int]:
    if len(feat_shape) not in (2, 4):
        raise ValueError(f"feat_shape: expected (B, C, H, W) or (H, W), got {tuple(feat_shape)}")
    return int(feat_shape[-2]), int(feat_shape[-1])


def cornernet_targets(
    gt_boxes: Sequence[Tensor],
    gt_labels: Sequence[Tensor],
    feat_shape: Sequence[int],
    img_shape: Sequence[int],
    num_classes: int,
    min_overlap: float = 0.3,
) -> dict[str, Tensor | list[Tensor]]:
    """Build CornerNet training targets (equals mmdet's ``CornerHead.get_targets``).

    Boxes are scaled to the heatmap grid; the integer corner cell gets a Gaussian of radius
    ``int(gaussian_radius((ceil(h), ceil(w)), min_overlap))`` in its class channel (maxima kept
    where Gaussians overlap) and the sub-cell remainder as offset target. Corners of boxes that
    extend past the image are clamped into the map (mmdet would wrap negative indices).

    Args:
        gt_boxes: per image ``Tensor[n_i, 4]`` ``(x1, y1, x2, y2)`` in input-image pixels.
        gt_labels: per image ``Tensor[n_i]`` integer class ids in ``[0, num_classes)``.
        feat_shape: heatmap shape ``(B, C, H, W)`` (or ``(H, W)``).
        img_shape: network input shape ``(height, width[, channels])`` (mmdet's
            ``batch_input_shape``).
        num_classes: number of classes.
        min_overlap: IoU used by :func:`gaussian_radius`. Default 0.3.

    Returns:
        dict with ``tl_heat``/``br_heat`` ``(B, num_classes, H, W)``, ``tl_off``/``br_off``
        ``(B, 2, H, W)`` (x then y), and ``corners``: per image ``LongTensor[n_i, 4]`` of
        ``(tl_y, tl_x, br_y, br_x)`` grid cells, used by the embedding loss.

    Raises:
        ValueError: mismatched lists, bad shapes/dtypes or labels out of range.
    """
    check_positive("num_classes", num_classes)
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(
            f"gt_labels: expected {len(gt_boxes)} tensors (one per image), got {len(gt_labels)}"
        )
    height, width = _feat_hw(feat_shape)
    batch = len(gt_boxes)
    if len(feat_shape) == 4 and int(feat_shape[0]) != batch:
        raise ValueError(f"feat_shape: expected batch size {batch}, got {tuple(feat_shape)}")
    img_h, img_w = float(img_shape[0]), float(img_shape[1])
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels)):
        sizes: dict[str, int] = {}
        check_tensor(f"gt_boxes[{i}]", boxes, ("N", 4), floating=True, sizes=sizes)
        check_tensor(f"gt_labels[{i}]", labels, ("N",), floating=False, sizes=sizes)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"gt_labels[{i}]: expected values in [0, {num_classes}), got {labels}")

    ref = gt_boxes[-1] if batch else torch.zeros(0, 4)
    dtype, device = ref.dtype, ref.device
    tl_heat = torch.zeros(batch, num_classes, height, width, dtype=dtype, device=device)
    br_heat = torch.zeros_like(tl_heat)
    tl_off = torch.zeros(batch, 2, height, width, dtype=dtype, device=device)
    br_off = torch.zeros_like(tl_off)
    counts = [int(b.shape[0]) for b in gt_boxes]
    empty = torch.zeros(0, 4, dtype=torch.long, device=device)
    if sum(counts) == 0:
        corners = [empty.clone() for _ in range(batch)]
        return dict(tl_heat=tl_heat, br_heat=br_heat, tl_off=tl_off, br_off=br_off, corners=corners)

    boxes = torch.cat([b.to(dtype) for b in gt_boxes])
    labels = torch.cat([lab.to(device=device, dtype=torch.long) for lab in gt_labels])
    image = torch.repeat_interleave(
        torch.arange(batch, device=device), torch.tensor(counts, device=device)
    )
    # python-float ratios multiply float32 values, exactly as mmdet does per box
    w_ratio = float(width / img_w)
    h_ratio = float(height / img_h)
    left, right = boxes[:, 0] * w_ratio, boxes[:, 2] * w_ratio
    top, bottom = boxes[:, 1] * h_ratio, boxes[:, 3] * h_ratio

    def cell(v: Tensor, size: int) -> Tensor:
        return v.clamp(max=size - 1).trunc().clamp(min=0).long()

    left_i, right_i = cell(left, width), cell(right, width)
    top_i, bottom_i = cell(top, height), cell(bottom, height)

    box_w = torch.ceil(right - left).clamp(min=0).to(torch.float64)
    box_h = torch.ceil(bottom - top).clamp(min=0).to(torch.float64)
    radius = gaussian_radius((box_h, box_w), min_overlap)
    radius = radius.trunc().clamp(min=0).long()

    _splat_gaussians(tl_heat, image, labels, top_i, left_i, radius)
    _splat_gaussians(br_heat, image, labels, bottom_i, right_i, radius)

    _write_offsets(tl_off, image, top_i, left_i, left - left_i, top - top_i)
    _write_offsets(br_off, image, bottom_i, right_i, right - right_i, bottom - bottom_i)

    all_corners = torch.stack([top_i, left_i, bottom_i, right_i], dim=1)
    corners = list(all_corners.split(counts))
    return dict(tl_heat=tl_heat, br_heat=br_heat, tl_off=tl_off, br_off=br_off, corners=corners)


def _splat_gaussians(
    heat: Tensor, image: Tensor, labels: Tensor, ys: Tensor, xs: Tensor, radius: Tensor
) -> None:
    """Max-splat one Gaussian per box into ``heat`` ``(B, C, H, W)`` (vectorised)."""
    _, num_classes, height, width = heat.shape
    r_max = int(radius.max())
    d = torch.arange(-r_max, r_max + 1, device=heat.device)
    dy, dx = d.view(1, -1, 1), d.view(1, 1, -1)
    r = radius.view(-1, 1, 1)
    sq = (dy * dy + dx * dx).to(heat.dtype)
    g = torch.exp(-sq / _gaussian_sigma_denominator(r, heat.dtype))
    # per-box truncation of tiny values (peak is 1) and of the square window of radius r
    inside = (dy.abs() <= r) & (dx.abs() <= r)
    g = g.masked_fill(g < torch.finfo(heat.dtype).eps, 0)
    y = ys.view(-1, 1, 1) + dy
    x = xs.view(-1, 1, 1) + dx
    valid = inside & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    plane = (image * num_classes + labels).view(-1, 1, 1)
    flat = (plane * height + y) * width + x
    heat.view(-1).scatter_reduce_(0, flat[valid], g.expand_as(flat)[valid], "amax")


def _write_offsets(
    off: Tensor, image: Tensor, ys: Tensor, xs: Tensor, dx: Tensor, dy: Tensor
) -> None:
    """Write per-box sub-cell offsets; the last box wins on a shared cell (as in mmdet)."""
    _, _, height, width = off.shape
    key = (image * height + ys) * width + xs
    order = torch.arange(key.numel(), device=key.device)
    winner = torch.full((off.shape[0] * height * width,), -1, device=key.device, dtype=torch.long)
    winner.scatter_reduce_(0, key, order, "amax")
    keep = winner[key] == order
    b, y, x = image[keep], ys[keep], xs[keep]
    off[b, 0, y, x] = dx[keep].to(off.dtype)
    off[b, 1, y, x] = dy[keep].to(off.dtype)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------
def associative_embedding_loss(
    tl_emb: Tensor,
    br_emb: Tensor,
    corners: Sequence[Tensor],
    pull_weight: float = 1.0,
    push_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Weighted pull / push embedding losses, summed over images.

    Per image with ``N`` objects and corner embeddings ``e_tl``, ``e_br`` (mean ``e_k``)::

        pull = sum_k [(e_tl_k - e_k)^2 + (e_br_k - e_k)^2] / N
        push = sum_{k != j} relu(1 - |e_k - e_j|) / (N (N - 1))     (0 when N < 2)

    Equals mmdet's ``AssociativeEmbeddingLoss(pull_weight, push_weight)``, including its
    treatment of multi-channel embeddings (each channel of each object counts as one entry).

    Args:
        tl_emb: ``(B, M, H, W)`` top-left embeddings.
        br_emb: ``(B, M, H, W)`` bottom-right embeddings.
        corners: per image ``LongTensor[n_i, 4]`` ``(tl_y, tl_x, br_y, br_x)``.
        pull_weight: factor on each image's pull term. Default 1.0.
        push_weight: factor on each image's push term. Default 1.0.

    Returns:
        ``(pull, push)`` scalar tensors (zero, but attached to the graph, without objects).
    """
    sizes: dict[str, int] = {}
    check_tensor("tl_emb", tl_emb, ("B", "M", "H", "W"), floating=True, sizes=sizes)
    check_tensor("br_emb", br_emb, ("B", "M", "H", "W"), floating=True, sizes=sizes)
    if len(corners) != tl_emb.shape[0]:
        raise ValueError(f"corners: expected {tl_emb.shape[0]} tensors, got {len(corners)}")
    pull_total: Tensor | float = 0.0
    push_total: Tensor | float = 0.0
    for i, c in enumerate(corners):
        check_tensor(f"corners[{i}]", c, (None, 4), floating=False)
        if c.shape[0] == 0:
            pull = tl_emb[i].sum() * 0.0
            push = tl_emb[i].sum() * 0.0
        else:
            e_tl = tl_emb[i][:, c[:, 0], c[:, 1]].t().reshape(-1, 1)
            e_br = br_emb[i][:, c[:, 2], c[:, 3]].t().reshape(-1, 1)
            mean = (e_tl + e_br) / 2.0
            n = e_tl.shape[0]
            pull = ((e_tl - mean).pow(2) + (e_br - mean).pow(2)).sum() / n
            if n > 1:
                gap = (mean - mean.t()).abs()
                off_diag = 1 - torch.eye(n, dtype=mean.dtype, device=mean.device)
                push = F.relu(off_diag * (1 - gap)).sum() / (n * (n - 1))
            else:
                push = tl_emb[i].sum() * 0.0
        pull_total = pull_total + pull_weight * pull
        push_total = push_total + push_weight * push
    return pull_total, push_total  # type: ignore[return-value]


def cornernet_loss(
    outputs: dict[str, Sequence[Tensor | None]],
    targets: dict[str, Tensor | Sequence[Tensor]],
    pull_weight: float = 0.1,
    push_weight: float = 0.1,
    off_weight: float = 1.0,
    heat_weight: float = 1.0,
    sum_levels: bool = False,
) -> dict[str, list[Tensor] | Tensor]:
    """CornerNet's training losses, equal to mmdet's ``CornerHead.loss_by_feat``.

    Per level (every level is supervised with the same targets):

    - ``det_loss``: Gaussian focal loss (alpha 2, beta 4) of ``sigmoid(heat)``, summed and
      divided by ``max(1, #peaks)``, averaged over top-left and bottom-right, times
      ``heat_weight``;
    - ``pull_loss`` / ``push_loss``: :func:`associative_embedding_loss` times the weights
      (absent when the head has no embeddings);
    - ``off_loss``: smooth-L1 (beta 1) on the offsets at peak cells, divided by
      ``max(1, #peak cells)``, averaged over both corners, times ``off_weight``.

    Args:
        outputs: :meth:`CornerNetHead.forward` result (lists per level; heatmaps are logits).
        targets: :func:`cornernet_targets` result.
        pull_weight: weight of the pull loss. Default 0.1.
        push_weight: weight of the push loss. Default 0.1.
        off_weight: weight of the offset loss. Default 1.0.
        heat_weight: weight of the heatmap loss. Default 1.0.
        sum_levels: return scalars summed over levels instead of per-level lists.
            Default ``False`` (mmdet's layout: lists, summed by its loss parser).

    Returns:
        dict with ``det_loss``, ``off_loss`` and (with embeddings) ``pull_loss``, ``push_loss``.
    """
    for key in OUTPUT_KEYS:
        if key not in outputs:
            raise ValueError(f"outputs: expected key {key!r} (CornerNetHead output)")
    for key in ("tl_heat", "br_heat", "tl_off", "br_off", "corners"):
        if key not in targets:
            raise ValueError(f"targets: expected key {key!r} (cornernet_targets output)")
    gt_tl, gt_br = targets["tl_heat"], targets["br_heat"]
    gt_tl_off, gt_br_off = targets["tl_off"], targets["br_off"]
    corners = targets["corners"]
    sizes: dict[str, int] = {}
    check_tensor("targets['tl_heat']", gt_tl, ("B", "C", "H", "W"), floating=True, sizes=sizes)
    check_tensor("targets['br_heat']", gt_br, ("B", "C", "H", "W"), floating=True, sizes=sizes)
    check_tensor("targets['tl_off']", gt_tl_off, ("B", 2, "H", "W"), floating=True, sizes=sizes)
    check_tensor("targets['br_off']", gt_br_off, ("B", 2, "H", "W"), floating=True, sizes=sizes)
    if len(corners) != sizes["B"]:
        raise ValueError(f"targets['corners']: expected {sizes['B']} tensors, got {len(corners)}")
    n_levels = len(outputs["tl_heat"])
    for key in OUTPUT_KEYS:
        if len(outputs[key]) != n_levels:
            raise ValueError(
                f"outputs[{key!r}]: expected {n_levels} levels (as tl_heat), got {len(outputs[key])}"
            )

    tl_peak, br_peak = gt_tl.eq(1), gt_br.eq(1)
    tl_norm = tl_peak.sum().clamp(min=1).to(gt_tl.dtype) + _AVG_EPS
    br_norm = br_peak.sum().clamp(min=1).to(gt_br.dtype) + _AVG_EPS
    tl_mask = tl_peak.any(1, keepdim=True).to(gt_tl.dtype)
    br_mask = br_peak.any(1, keepdim=True).to(gt_br.dtype)
    tl_mask_norm = tl_mask.sum().clamp(min=1) + _AVG_EPS
    br_mask_norm = br_mask.sum().clamp(min=1) + _AVG_EPS

    with_emb = outputs["tl_emb"][0] is not None if n_levels else False
    result: dict[str, list[Tensor]] = {"det_loss": [], "off_loss": []}
    if with_emb:
        result["pull_loss"], result["push_loss"] = [], []
    for lvl in range(n_levels):
        tl_heat, br_heat = outputs["tl_heat"][lvl], outputs["br_heat"][lvl]
        tl_off, br_off = outputs["tl_off"][lvl], outputs["br_off"][lvl]
        check_tensor(f"outputs['tl_heat'][{lvl}]", tl_heat, tuple(gt_tl.shape), floating=True)
        check_tensor(f"outputs['br_heat'][{lvl}]", br_heat, tuple(gt_br.shape), floating=True)
        check_tensor(f"outputs['tl_off'][{lvl}]", tl_off, tuple(gt_tl_off.shape), floating=True)
        check_tensor(f"outputs['br_off'][{lvl}]", br_off, tuple(gt_br_off.shape), floating=True)

        tl_det = gaussian_focal_loss(tl_heat.sigmoid(), gt_tl).sum() / tl_norm
        br_det = gaussian_focal_loss(br_heat.sigmoid(), gt_br).sum() / br_norm
        result["det_loss"].append(heat_weight * (tl_det + br_det) / 2.0)

        if with_emb:
            tl_emb, br_emb = outputs["tl_emb"][lvl], outputs["br_emb"][lvl]
            if tl_emb is None or br_emb is None:
                raise ValueError(f"outputs['tl_emb'/'br_emb'][{lvl}]: expected tensors, got None")
            pull, push = associative_embedding_loss(
                tl_emb,
                br_emb,
                corners,  # type: ignore[arg-type]
                pull_weight=pull_weight,
                push_weight=push_weight,
            )
            result["pull_loss"].append(pull)
            result["push_loss"].append(push)

        tl_o = smooth_l1_loss(tl_off, gt_tl_off, beta=1.0).mul(tl_mask).sum() / tl_mask_norm
        br_o = smooth_l1_loss(br_off, gt_br_off, beta=1.0).mul(br_mask).sum() / br_mask_norm
        result["off_loss"].append(off_weight * (tl_o + br_o) / 2.0)

    if sum_levels:
        return {k: torch.stack(v).sum() for k, v in result.items()}
    return result  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------
def local_maximum(heat: Tensor, kernel: int = 3) -> Tensor:
    """Keep values equal to the max of their ``kernel x kernel`` window, zero the rest.

    Args:
        heat: ``(B, C, H, W)``.
        kernel: odd window size. Default 3.

    Returns:
        Tensor ``(B, C, H, W)``.
    """
    peak = F.max_pool2d(heat, kernel, stride=1, padding=(kernel - 1) // 2)
    return heat * (peak == heat).to(heat.dtype)


def _gather_hw(feat: Tensor, index: Tensor) -> Tensor:
    """``feat`` ``(B, C, H, W)``, ``index`` ``(B, K)`` into ``H * W`` -> ``(B, K, C)``."""
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1)
    return flat.gather(2, index.unsqueeze(1).expand(b, c, index.shape[1])).transpose(1, 2)


def decode_corners(
    tl_heat: Tensor,
    br_heat: Tensor,
    tl_emb: Tensor,
    br_emb: Tensor,
    tl_off: Tensor,
    br_off: Tensor,
    img_shape: Sequence[int],
    k: int = 100,
    kernel: int = 3,
    distance_threshold: float = 0.5,
    num_dets: int = 1000,
    *,
    heat_logits: bool = False,
    border: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Pair corners into boxes (equals mmdet's ``CornerHead._decode_heatmap``).

    Local maxima of each heatmap (max-pool NMS) give the top ``k`` corners per image; every
    top-left/bottom-right pair becomes a candidate box scored by the mean corner score, with
    positions refined by the offsets and scaled to the input size. Pairs of different class,
    embedding distance above ``distance_threshold``, or with ``x2 <= x1`` / ``y2 <= y1`` get
    score ``-1``. The ``num_dets`` best candidates are returned (NMS is left to the caller).

    Args:
        tl_heat: ``(B, C, H, W)`` top-left heatmap probabilities (logits with ``heat_logits``).
        br_heat: ``(B, C, H, W)`` bottom-right heatmap, same convention.
        tl_emb: ``(B, 1, H, W)`` top-left embeddings.
        br_emb: ``(B, 1, H, W)`` bottom-right embeddings.
        tl_off: ``(B, 2, H, W)`` top-left offsets (x, y).
        br_off: ``(B, 2, H, W)`` bottom-right offsets.
        img_shape: ``(height, width[, ...])`` of the network input (mmdet's
            ``batch_input_shape``).
        k: corners kept per heatmap. Default 100 (clamped to ``C * H * W``).
        kernel: local-maximum window. Default 3.
        distance_threshold: maximum embedding distance of a pair. Default 0.5.
        num_dets: candidates returned. Default 1000 (clamped to ``k * k``).
        heat_logits: apply ``sigmoid`` to the heatmaps first. Default ``False``.
        border: optional ``(B, 4)`` ``(top, bottom, left, right)`` crop borders subtracted
            from the coordinates (mmdet's ``img_meta['border']``, test-time centre crop).

    Returns:
        ``(boxes Tensor[B, K, 4] xyxy in input pixels, scores Tensor[B, K] (-1 = rejected),
        labels LongTensor[B, K])`` with ``K = min(num_dets, k * k)``, sorted by score.
    """
    sizes: dict[str, int] = {}
    check_tensor("tl_heat", tl_heat, ("B", "C", "H", "W"), floating=True, sizes=sizes)
    check_tensor("br_heat", br_heat, ("B", "C", "H", "W"), floating=True, sizes=sizes)
    check_tensor("tl_emb", tl_emb, ("B", 1, "H", "W"), floating=True, sizes=sizes)
    check_tensor("br_emb", br_emb, ("B", 1, "H", "W"), floating=True, sizes=sizes)
    check_tensor("tl_off", tl_off, ("B", 2, "H", "W"), floating=True, sizes=sizes)
    check_tensor("br_off", br_off, ("B", 2, "H", "W"), floating=True, sizes=sizes)
    if border is not None:
        check_tensor("border", border, ("B", 4), sizes=sizes)
    check_positive("k", k)
    check_positive("num_dets", num_dets)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel: expected an odd positive int, got {kernel!r}")
    batch, num_classes, height, width = tl_heat.shape
    k = min(int(k), num_classes * height * width)
    num_dets = min(int(num_dets), k * k)
    if batch == 0 or k == 0:
        z = tl_heat.new_zeros((batch, num_dets if k else 0))
        return z.new_zeros(z.shape + (4,)), z, z.long()

    if heat_logits:
        tl_heat, br_heat = tl_heat.sigmoid(), br_heat.sigmoid()
    inp_h, inp_w = img_shape[0], img_shape[1]

    def corners_of(heat: Tensor, off: Tensor, emb: Tensor):
        scores, index = torch.topk(local_maximum(heat, kernel).reshape(batch, -1), k)
        cls = torch.div(index, height * width, rounding_mode="floor")
        pix = index % (height * width)
        ys = torch.div(pix, width, rounding_mode="floor")
        xs = (pix % width).int().float()
        o = _gather_hw(off, pix)
        xs = (xs + o[..., 0]) * (inp_w / width)
        ys = (ys + o[..., 1]) * (inp_h / height)
        if border is not None:
            xs = xs - border[:, 2:3].to(xs.dtype)
            ys = ys - border[:, 0:1].to(ys.dtype)
        xs = torch.where(xs > 0.0, xs, torch.zeros_like(xs))
        ys = torch.where(ys > 0.0, ys, torch.zeros_like(ys))
        e = _gather_hw(emb, pix)[..., 0]
        return scores, cls, xs, ys, e

    tl_s, tl_c, tl_x, tl_y, tl_e = corners_of(tl_heat, tl_off, tl_emb)
    br_s, br_c, br_x, br_y, br_e = corners_of(br_heat, br_off, br_emb)

    # (B, k_tl, k_br) grids; tl varies along dim 1, br along dim 2
    tl_x, tl_y = tl_x[:, :, None].expand(-1, k, k), tl_y[:, :, None].expand(-1, k, k)
    br_x, br_y = br_x[:, None, :].expand(-1, k, k), br_y[:, None, :].expand(-1, k, k)
    boxes = torch.stack((tl_x, tl_y, br_x, br_y), dim=3)
    scores = (tl_s[:, :, None] + br_s[:, None, :]) / 2
    reject = (
        (tl_c[:, :, None] != br_c[:, None, :])
        | ((tl_e[:, :, None] - br_e[:, None, :]).abs() > distance_threshold)
        | (br_x <= tl_x)
        | (br_y <= tl_y)
    )
    scores = torch.where(reject, torch.full_like(scores, -1.0), scores)
    scores, index = torch.topk(scores.reshape(batch, -1).contiguous(), num_dets)
    boxes = boxes.reshape(batch, -1, 4).gather(1, index.unsqueeze(-1).expand(-1, -1, 4))
    labels = tl_c[:, :, None].expand(-1, k, k).reshape(batch, -1).gather(1, index)
    return boxes, scores, labels


__all__ = [
    "OUTPUT_KEYS",
    "CornerLevelHead",
    "CornerNet",
    "CornerNetHead",
    "PredictionBranch",
    "associative_embedding_loss",
    "cornernet_loss",
    "cornernet_targets",
    "decode_corners",
    "draw_gaussian",
    "gaussian_kernel",
    "gaussian_radius",
    "local_maximum",
]
