"""A user's folder given as the Shapes ``data_root`` stops the run and survives byte for byte."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "mmdet" / "demo" / "efficientdet_shapes.py"


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text('{"images": []}')
    (root / "train2017").mkdir()
    (root / "train2017" / "000000000009.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "NOTES.md").write_text("my notes")
    return root


def test_mm_train_stops_before_touching_a_user_folder(user_folder: Path) -> None:
    sys.path.insert(0, str(REPO / "tools"))
    import mm_train

    before = _hashes(user_folder)
    args = mm_train.parse_args(
        [str(DEMO), "--cfg-options", f"train_dataloader.dataset.data_root={user_folder}"]
    )
    with pytest.raises(mm_train.ConfigProblem, match=r"train_dataloader.dataset.data_root: .*coco"):
        mm_train.build_train_config(args)
    assert _hashes(user_folder) == before


def test_building_the_dataset_directly_refuses_too(user_folder: Path) -> None:
    """mmdet's own tools build the dataset without our checks: the dataset itself refuses."""
    from mmdet.registry import DATASETS

    import plugins.mm  # noqa: F401
    from plugins.data.shapes import ShapesRootError

    before = _hashes(user_folder)
    with pytest.raises(ShapesRootError, match="nothing was changed"):
        DATASETS.build(dict(type="PluginsShapesDataset", split="train", data_root=str(user_folder)))
    assert _hashes(user_folder) == before
    assert sorted(p.name for p in user_folder.parent.iterdir()) == ["coco"]
