"""The two CornerNet CPU demos train identically, step for step, from the same weights.

``configs/demo/cornernet_shapes.yaml`` (Detectron2) and ``configs/mmdet/demo/cornernet_shapes.py``
(MMDetection) are one recipe. Given one set of weights and one batch (an image that needs
padding, one without objects), both adapters must return the same losses and gradients, and
the optimizers the two trainers build from the configs (Detectron2: ``Trainer.build_optimizer``,
AdamW without weight decay plus the joint gradient clip; mmengine: Adam plus ``clip_grad``)
must take the same step, with the clip engaged. Run-to-run differences between the two demos
then come from data sampling and initialisation, not from the adapters.
"""

from __future__ import annotations

from pathlib import Path

import plugins.d2  # noqa: F401  (first: stands in for a missing detectron2._C)

# isort: split
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import plugins.mm  # noqa: F401  (registration)
from plugins.d2.config import add_plugins_config
from plugins.d2.engine import Trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
D2_DEMO = CONFIGS / "demo" / "cornernet_shapes.yaml"
MM_DEMO = CONFIGS / "mmdet" / "demo" / "cornernet_shapes.py"
SIZE = 128  # both demos train on 128 px inputs
LOSS_NAMES = {  # Detectron2 name -> MMDetection name
    "loss_heatmap": "det_loss",
    "loss_offset": "off_loss",
    "loss_pull": "pull_loss",
    "loss_push": "push_loss",
}

pytestmark = pytest.mark.usefixtures("single_thread")


def _mm_key(d2_key: str) -> str:
    return "bbox_head." + d2_key[len("head.") :] if d2_key.startswith("head.") else d2_key


@pytest.fixture(scope="module")
def pair():
    """(d2 cfg, d2 model, mm cfg, mm model), the mm model holding the d2 model's weights."""
    init_default_scope("mmdet")
    torch.manual_seed(0)
    d2_cfg = get_cfg()
    add_plugins_config(d2_cfg)
    d2_cfg.merge_from_file(str(D2_DEMO))
    d2_model = Trainer.build_model(d2_cfg)
    mm_cfg = Config.fromfile(str(MM_DEMO))
    mm_model = MODELS.build(mm_cfg.model)
    state = {_mm_key(k): v for k, v in d2_model.state_dict().items()}
    mm_model.load_state_dict(state, strict=True)
    return d2_cfg, d2_model, mm_cfg, mm_model


def _batch():
    """RGB uint8 images (one 128 px, one smaller: padded; one without objects) and boxes."""
    gen = torch.Generator().manual_seed(1)
    shapes = [(SIZE, SIZE), (100, 110), (SIZE, 96)]
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8) for h, w in shapes]
    boxes = [
        torch.tensor(
            [[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0], [5.0, 70.0, 40.0, 127.0]]
        ),
        torch.tensor([[3.0, 4.0, 90.0, 80.0], [40.0, 50.0, 70.0, 95.0]]),
        torch.zeros(0, 4),
    ]
    labels = [torch.tensor([0, 3, 5]), torch.tensor([2, 2]), torch.zeros(0, dtype=torch.long)]
    return images, boxes, labels


def _d2_inputs(cfg, images, boxes, labels):
    """Detectron2 inputs padded to 128 px with the pixel mean (0 after normalisation), as
    MMDetection's ``BatchFixedSizePad`` pads the normalised batch."""
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    out = []
    for image, b, lab in zip(images, boxes, labels):
        canvas = mean.expand(3, SIZE, SIZE).clone()
        canvas[:, : image.shape[1], : image.shape[2]] = image.float()
        inst = Instances((SIZE, SIZE))
        inst.gt_boxes = Boxes(b)
        inst.gt_classes = lab
        out.append({"image": canvas, "instances": inst})
    return out


def _mm_inputs(model, images, boxes, labels):
    samples = []
    for image, b, lab in zip(images, boxes, labels):
        shape = tuple(image.shape[1:])
        sample = DetDataSample(metainfo=dict(img_shape=shape, ori_shape=shape, scale_factor=(1, 1)))
        sample.gt_instances = InstanceData(bboxes=b, labels=lab)
        samples.append(sample)
    bgr = [image.flip(0) for image in images]  # mmdet loads BGR; the preprocessor flips back
    return model.data_preprocessor(dict(inputs=bgr, data_samples=samples), True)


def _losses(pair, scale: float = 1.0):
    """Both models' loss dicts after ``backward`` of ``scale`` x their total loss."""
    d2_cfg, d2_model, _, mm_model = pair
    images, boxes, labels = _batch()
    d2_model.train()
    mm_model.train()
    d2_model.zero_grad()
    mm_model.zero_grad()
    d2_losses = d2_model(_d2_inputs(d2_cfg, images, boxes, labels))
    (scale * sum(d2_losses.values())).backward()
    data = _mm_inputs(mm_model, images, boxes, labels)
    assert tuple(data["inputs"].shape[-2:]) == (SIZE, SIZE)
    total, mm_log = mm_model.parse_losses(mm_model(**data, mode="loss"))
    (scale * total).backward()
    return d2_losses, mm_log, total


def test_same_losses_and_gradients(pair):
    d2_losses, mm_log, _ = _losses(pair)
    assert set(d2_losses) == set(LOSS_NAMES)
    for d2_name, mm_name in LOSS_NAMES.items():
        torch.testing.assert_close(mm_log[mm_name], d2_losses[d2_name].detach(), rtol=1e-6, atol=0)
    assert (
        float(d2_losses["loss_push"].detach()) > 0
    )  # two images with >= 2 objects: push is active
    _, d2_model, _, mm_model = pair
    d2_params = dict(d2_model.named_parameters())
    mm_params = dict(mm_model.named_parameters())
    assert {_mm_key(k) for k in d2_params} == set(mm_params)
    for name, param in d2_params.items():
        other = mm_params[_mm_key(name)].grad
        assert param.grad is not None and other is not None, name
        torch.testing.assert_close(other, param.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_same_optimizer_step_with_clipping(pair):
    d2_cfg, d2_model, mm_cfg, mm_model = pair
    assert d2_cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == mm_cfg.optim_wrapper.clip_grad.max_norm
    d2_opt = Trainer.build_optimizer(d2_cfg, d2_model)
    mm_wrapper = build_optim_wrapper(mm_model, mm_cfg.optim_wrapper)
    assert d2_cfg.SOLVER.BASE_LR == mm_cfg.optim_wrapper.optimizer.lr
    before = {k: v.detach().clone() for k, v in d2_model.named_parameters()}
    # 100 x the loss: the gradient norm is far above the clip (35), so the step depends on
    # clipping all gradients together, as mmengine does, not each parameter on its own
    _losses(pair, scale=100.0)
    grads = [p.grad for p in d2_model.parameters()]
    assert float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) > 10 * 35
    d2_opt.step()
    mm_wrapper.step()
    moved = 0.0
    for name, param in d2_model.named_parameters():
        other = mm_model.get_parameter(_mm_key(name))
        torch.testing.assert_close(other, param, rtol=0, atol=1e-6, msg=name)
        moved = max(moved, float((param - before[name]).abs().max()))
    assert moved > 1e-3  # Adam moved the weights by about the learning rate (2e-3)
