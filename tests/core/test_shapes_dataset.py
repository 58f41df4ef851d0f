"""Tests of the embedded Shapes dataset generator (plugins/data/shapes.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from plugins.data import shapes
from plugins.data.shapes import (
    SHAPES_CATEGORIES,
    SHAPES_CLASSES,
    ShapesPaths,
    ensure_shapes_dataset,
)

EXPECTED_NAMES = ["circle", "square", "triangle", "ring", "plus", "star"]
EXPECTED_COUNTS = {"train": 320, "val": 64}


def _file_hashes(root: str | Path) -> dict[str, str]:
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> ShapesPaths:
    return ensure_shapes_dataset(tmp_path_factory.mktemp("shapes_a") / "shapes")


@pytest.fixture(scope="module")
def dataset_hashes(dataset: ShapesPaths) -> dict[str, str]:
    return _file_hashes(dataset.root)


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def test_paths_and_layout(dataset: ShapesPaths) -> None:
    root = Path(dataset.root)
    assert Path(dataset.train_images) == root / "train"
    assert Path(dataset.val_images) == root / "val"
    assert Path(dataset.train_json) == root / "annotations" / "train.json"
    assert Path(dataset.val_json) == root / "annotations" / "val.json"
    for split, images_dir in (("train", dataset.train_images), ("val", dataset.val_images)):
        jpgs = sorted(p.name for p in Path(images_dir).iterdir())
        assert len(jpgs) == EXPECTED_COUNTS[split]
        assert all(name.endswith(".jpg") for name in jpgs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset.root = "elsewhere"  # type: ignore[misc]


def test_second_call_returns_at_once(dataset: ShapesPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(out_dir: object) -> None:
        raise AssertionError("a complete dataset must not be generated again")

    monkeypatch.setattr(shapes, "generate_shapes_dataset", fail)
    assert ensure_shapes_dataset(dataset.root) == dataset


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_json_loads_with_pycocotools(dataset: ShapesPaths, split: str) -> None:
    coco = COCO(getattr(dataset, f"{split}_json"))
    for key in ("images", "annotations", "categories", "info", "licenses"):
        assert key in coco.dataset
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == list(range(1, len(EXPECTED_NAMES) + 1))
    assert [c["name"] for c in cats] == EXPECTED_NAMES
    assert [c["name"] for c in SHAPES_CATEGORIES] == EXPECTED_NAMES
    assert list(SHAPES_CLASSES) == EXPECTED_NAMES
    assert sorted(coco.getImgIds()) == list(range(1, EXPECTED_COUNTS[split] + 1))
    ann_ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) == 1
    # Every category is well represented in every split.
    for cat_id in coco.getCatIds():
        assert len(coco.getAnnIds(catIds=[cat_id])) >= 30
    # Image records match the files on disk; some images are not square.
    shapes_seen = set()
    for img in coco.loadImgs(coco.getImgIds()):
        assert "/" not in img["file_name"]
        with Image.open(Path(getattr(dataset, f"{split}_images")) / img["file_name"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (img["width"], img["height"])
        shapes_seen.add((img["height"], img["width"]))
    assert (256, 256) in shapes_seen and len(shapes_seen) >= 2


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
@pytest.mark.parametrize("split", ["train", "val"])
def test_boxes_inside_images_and_consistent_with_masks(dataset: ShapesPaths, split: str) -> None:
    coco = COCO(getattr(dataset, f"{split}_json"))
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
        assert ann["iscrowd"] == 0
        assert 1 <= ann["category_id"] <= len(EXPECTED_NAMES)
        # The RLE mask decoded by pycocotools has exactly this box and area.
        mask = coco.annToMask(ann)
        assert mask.shape == (img["height"], img["width"])
        rle = mask_utils.encode(np.asfortranarray(mask))
        np.testing.assert_array_equal(mask_utils.toBbox(rle), ann["bbox"])
        assert ann["area"] == mask.sum() > 0
        assert ann["area"] <= w * h


@pytest.mark.parametrize("split", ["train", "val"])
def test_boxes_are_tight(dataset: ShapesPaths, split: str) -> None:
    """The pixel rows/columns just inside each box edge differ from those just outside."""
    data = _load(getattr(dataset, f"{split}_json"))
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    strengths = []
    for img in data["images"][:40]:
        path = Path(getattr(dataset, f"{split}_images")) / img["file_name"]
        pixels = np.asarray(Image.open(path), dtype=np.int16)
        height, width = pixels.shape[:2]
        for ann in by_image.get(img["id"], []):
            x, y, w, h = (int(v) for v in ann["bbox"])
            pairs = []
            if y > 0:
                pairs.append((pixels[y, x : x + w], pixels[y - 1, x : x + w]))
            if y + h < height:
                pairs.append((pixels[y + h - 1, x : x + w], pixels[y + h, x : x + w]))
            if x > 0:
                pairs.append((pixels[y : y + h, x], pixels[y : y + h, x - 1]))
            if x + w < width:
                pairs.append((pixels[y : y + h, x + w - 1], pixels[y : y + h, x + w]))
            for inside, outside in pairs:
                strengths.append(np.abs(inside - outside).max())
    strengths = np.array(strengths)
    assert len(strengths) > 300
    # JPEG and noise blur a few one-pixel tips; nearly every edge is a strong step.
    assert (strengths >= 60).mean() >= 0.97


def test_object_sizes_and_empty_images(dataset: ShapesPaths) -> None:
    train = _load(dataset.train_json)
    val = _load(dataset.val_json)
    for data in (train, val):
        sides = {}
        for ann in data["annotations"]:
            sides.setdefault(ann["image_id"], []).append(max(ann["bbox"][2:]))
        images = {img["id"]: img for img in data["images"]}
        all_sides = np.array([s for v in sides.values() for s in v])
        rel = np.array(
            [s / min(images[i]["height"], images[i]["width"]) for i, v in sides.items() for s in v]
        )
        assert all_sides.min() <= 14  # small objects (~10 px) exist
        assert rel.max() >= 0.5  # large objects (over half the image) exist
        areas = np.array([a["area"] for a in data["annotations"]])
        assert 0.15 <= (areas < 32**2).mean() <= 0.6  # COCO "small"
        assert (areas > 96**2).mean() >= 0.02  # COCO "large" (visible pixels)
        counts = np.array([len(v) for v in sides.values()])
        assert counts.max() <= 8 and counts.mean() >= 3
    # The train split holds a few images (1-2 %) without any object.
    annotated = {ann["image_id"] for ann in train["annotations"]}
    empty = [img["id"] for img in train["images"] if img["id"] not in annotated]
    assert 1 <= len(empty) <= 0.02 * len(train["images"])


def test_concurrent_generation_is_deterministic_and_ends_with_one_dataset(
    dataset: ShapesPaths, dataset_hashes: dict[str, str], tmp_path: Path
) -> None:
    """Two fresh processes race for one new root; the result equals this process's copy.

    This is also the determinism check: a second, independent generation into another
    directory gives byte-identical files.
    """
    root = tmp_path / "nested" / "shapes"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(ensure_shapes_dataset, [str(root), str(root)])
    assert results[0] == results[1] == ensure_shapes_dataset(root)
    assert results[0].root == str(root) != dataset.root
    hashes = _file_hashes(root)
    # + two json files, the completion marker and the ownership marker
    assert len(hashes) == EXPECTED_COUNTS["train"] + EXPECTED_COUNTS["val"] + 4
    assert sorted(hashes) == sorted(dataset_hashes)
    differing = [name for name in hashes if hashes[name] != dataset_hashes[name]]
    assert differing == []
    # No temporaries left next to the root, only the lock file.
    leftovers = [p.name for p in root.parent.iterdir() if p.name != "shapes"]
    assert leftovers == [".shapes.lock"]


def test_rename_race_uses_the_winners_copy(
    dataset: ShapesPaths, dataset_hashes: dict[str, str], tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "shapes"

    def slow_loser(out_dir: str | os.PathLike) -> None:
        shutil.copytree(dataset.root, out_dir)
        # Another process finishes first and renames its copy into place.
        shutil.copytree(dataset.root, root)

    monkeypatch.setattr(shapes, "generate_shapes_dataset", slow_loser)
    assert ensure_shapes_dataset(root).root == str(root)
    assert _file_hashes(root) == dataset_hashes
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shapes.lock", "shapes"]


@pytest.mark.parametrize("damage", ["no_marker", "old_marker", "missing_image", "missing_json"])
def test_incomplete_root_is_regenerated(
    dataset: ShapesPaths, dataset_hashes: dict[str, str], tmp_path: Path, monkeypatch, damage: str
) -> None:
    root = tmp_path / "shapes"
    shutil.copytree(dataset.root, root)
    if damage == "no_marker":
        (root / ".complete").unlink()
    elif damage == "old_marker":
        (root / ".complete").write_text("shapes v1 train=320 val=64\n")
    elif damage == "missing_image":
        (root / "val" / "000007.jpg").unlink()
    else:
        (root / "annotations" / "train.json").unlink()
    calls = []

    def fake(out_dir: str | os.PathLike) -> None:
        calls.append(out_dir)
        shutil.copytree(dataset.root, out_dir)

    monkeypatch.setattr(shapes, "generate_shapes_dataset", fake)
    assert ensure_shapes_dataset(root).root == str(root)
    assert len(calls) == 1
    assert _file_hashes(root) == dataset_hashes
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shapes.lock", "shapes"]


def test_default_root_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLUGINS_DATA_DIR", str(tmp_path))
    name = f"shapes_v{shapes.SHAPES_VERSION}"
    assert shapes.default_shapes_root() == tmp_path / name
    monkeypatch.delenv("PLUGINS_DATA_DIR")
    assert shapes.default_shapes_root() == Path.home() / ".cache" / "dense_plugins" / name


def test_cli_prints_paths(dataset: ShapesPaths, capsys: pytest.CaptureFixture) -> None:
    from plugins.data.__main__ import main

    assert main(["--root", dataset.root, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "root": dataset.root,
        "train_images": dataset.train_images,
        "train_json": dataset.train_json,
        "val_images": dataset.val_images,
        "val_json": dataset.val_json,
    }


def test_rle_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    masks = [
        np.ones((5, 7), dtype=bool),
        np.pad(np.ones((2, 2), dtype=bool), ((0, 5), (0, 4))),  # starts with a 1-run
        np.pad(np.ones((1, 1), dtype=bool), ((3, 4), (0, 6))),  # a single pixel
        np.eye(6, 9, dtype=bool),
        rng.uniform(size=(40, 33)) < 0.5,  # many short runs (negative deltas)
        np.pad(np.ones((60, 50), dtype=bool), ((100, 40), (70, 90))),  # long runs
    ]
    for mask in masks:
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))["counts"]
        assert shapes._rle_string(mask) == expected.decode("ascii")


def test_abandoned_temporaries_are_removed(
    dataset: ShapesPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / ".shapes.tmp-1-deadbeef"
    fresh = tmp_path / ".shapes.tmp-2-cafecafe"  # may belong to a process still running
    foreign = tmp_path / ".shapes.tmp-3-0badf00d"  # old, but not written by the generator
    for folder in (old, fresh, foreign):
        (folder / "train").mkdir(parents=True)
    for folder in (old, fresh):
        (folder / shapes._OWNER).write_text(shapes._OWNER_TEXT)
    (foreign / "train" / "mine.txt").write_text("user data")
    os.utime(old, (0, 0))
    os.utime(foreign, (0, 0))
    monkeypatch.setattr(
        shapes, "generate_shapes_dataset", lambda out: shutil.copytree(dataset.root, out)
    )
    with pytest.warns(UserWarning, match=r"kept .*0badf00d: it holds files"):
        ensure_shapes_dataset(tmp_path / "shapes")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".shapes.lock",
        ".shapes.tmp-2-cafecafe",
        ".shapes.tmp-3-0badf00d",
        "shapes",
    ]
    assert (foreign / "train" / "mine.txt").read_text() == "user data"


def _user_folder(root: Path) -> dict[str, str]:
    """A folder of a user's own COCO data (json, images, notes); returns its file hashes."""
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text('{"images": []}')
    (root / "images").mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "images" / "0001.jpg")
    (root / "notes.txt").write_text("do not delete")
    return _file_hashes(root)


def test_user_folder_as_root_is_an_error_and_survives(tmp_path: Path, monkeypatch) -> None:
    """Never delete what the generator did not create: the issue's data-loss case."""
    root = tmp_path / "my_coco"
    before = _user_folder(root)
    monkeypatch.setattr(
        shapes, "generate_shapes_dataset", lambda out: pytest.fail("must not generate")
    )
    with pytest.raises(shapes.ShapesRootError, match=r"my_coco is not empty and is not a Shapes"):
        ensure_shapes_dataset(root)
    assert _file_hashes(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_coco"]


def test_generate_refuses_a_user_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    before = _user_folder(root)
    with pytest.raises(shapes.ShapesRootError, match="notes.txt|annotations"):
        shapes.generate_shapes_dataset(root)
    assert _file_hashes(root) == before


def test_old_dataset_with_a_user_file_is_not_replaced(
    dataset: ShapesPaths, tmp_path: Path, monkeypatch
) -> None:
    """An outdated dataset of ours that also holds a user's file is an error, not a cleanup."""
    root = tmp_path / "shapes"
    shutil.copytree(dataset.root, root)
    (root / ".complete").write_text("shapes v1 train=320 val=64\n")
    (root / "annotations" / "my_split.json").write_text("{}")
    before = _file_hashes(root)
    with pytest.raises(shapes.ShapesRootError, match=r"annotations/my_split.json"):
        ensure_shapes_dataset(root)
    assert _file_hashes(root) == before


@pytest.mark.parametrize("kind", ["file", "empty_dir"])
def test_file_root_is_an_error_and_empty_folder_is_used(
    dataset: ShapesPaths, dataset_hashes: dict[str, str], tmp_path: Path, monkeypatch, kind: str
) -> None:
    root = tmp_path / "shapes"
    monkeypatch.setattr(
        shapes, "generate_shapes_dataset", lambda out: shutil.copytree(dataset.root, out)
    )
    if kind == "file":
        root.write_text("mine")
        with pytest.raises(shapes.ShapesRootError, match="is not a folder"):
            ensure_shapes_dataset(root)
        assert root.read_text() == "mine"
    else:
        root.mkdir()
        assert ensure_shapes_dataset(root).root == str(root)
        assert _file_hashes(root) == dataset_hashes
