#!/usr/bin/env python
"""Run a trained detector on an image, a folder of images or a video; draw and save predictions.

Usage::

    python tools/predict.py configs/demo/efficientdet_shapes.yaml output/model_final.pth \\
        photo.jpg --output predictions/
    python tools/predict.py configs/mmdet/demo/cornernet_shapes.py work_dirs/epoch_24.pth \\
        images/ --score-thr 0.4 --device cuda
    python tools/predict.py CONFIG CHECKPOINT clip.mp4 --output out/

The config type is told from the file (``.yaml`` / ``.yml``: Detectron2, ``.py``: MMDetection);
the checkpoint is loaded by the framework's own checkpointer (safe loading, EMA weights when the
Detectron2 config enables EMA) and must fit the config's model completely. Each input is
processed as the framework's own inference does it (Detectron2: ``DefaultPredictor``'s resize;
MMDetection: the config's test pipeline through ``inference_detector``).

Writes into ``--output`` (default ``predictions/``):

* ``<name>_pred.<ext>`` per image (``<name>_pred.mp4`` per video) with the boxes, class names
  and scores ``>= --score-thr`` drawn by the framework's visualiser (Detectron2's
  ``Visualizer``, MMDetection's ``DetLocalVisualizer``);
* ``predictions.json``: COCO results (``image_id`` = input index or frame number,
  ``category_id``, ``bbox`` ``[x, y, w, h]``, ``score``) of the detections ``>= --score-thr``,
  plus ``file_name`` and ``category_name`` for reading them without the dataset.
  ``category_id`` is the dataset's id for the class when it is known (the embedded Shapes
  classes, COCO's 80 classes, a Detectron2 dataset with its id map), else label + 1.

Every file is written under a temporary name in the output folder and renamed into place when
complete. Existing files are replaced only if an earlier run of this tool wrote them (listed in
``.predict_manifest.json`` in that folder); any other existing file of the same name stops the
run before anything is written. Bad input (unknown config type, a checkpoint that does not fit
the config, an unreadable image or video, an empty folder) ends with one
``predict.py: error: ...`` line and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from export_onnx import (  # noqa: E402
    LoadedModel,
    ToolError,
    load_model,
    model_parser,
    run_cli,
)

__all__ = ["main", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "MANIFEST"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
MANIFEST = ".predict_manifest.json"
RESULTS = "predictions.json"

# COCO 2017: category ids of the 80 thing classes, in label order (Detectron2's and mmdet's).
COCO_THING_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70] + [
    *range(72, 83),
    *range(84, 91),
]


# ------------------------------------------------------------------------------------------
# Framework predictors: (BGR image) -> detections, and drawing
# ------------------------------------------------------------------------------------------
class D2Predictor:
    """Detectron2 inference as ``DefaultPredictor`` runs it, and its ``Visualizer``."""

    def __init__(self, loaded: LoadedModel) -> None:
        from detectron2.data import Metadata, MetadataCatalog
        from detectron2.data import transforms as T

        cfg = loaded.cfg
        self.model = loaded.model
        self.input_format = cfg.INPUT.FORMAT
        size = cfg.INPUT.MIN_SIZE_TEST
        self.aug = T.ResizeShortestEdge([size, size], cfg.INPUT.MAX_SIZE_TEST)
        if cfg.DATASETS.TEST:
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        else:
            self.metadata = Metadata(thing_classes=list(loaded.class_names))
        mapping = self.metadata.get("thing_dataset_id_to_contiguous_id", None)
        self.dataset_ids = {v: k for k, v in mapping.items()} if mapping else None

    @torch.no_grad()
    def __call__(self, bgr: np.ndarray):
        image = bgr[:, :, ::-1] if self.input_format == "RGB" else bgr
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        inst = self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"]
        inst = inst.to("cpu")
        return inst, (
            inst.pred_boxes.tensor.numpy(),
            inst.scores.numpy(),
            inst.pred_classes.numpy(),
        )

    def draw(self, bgr: np.ndarray, raw, score_thr: float) -> np.ndarray:
        from detectron2.utils.visualizer import Visualizer

        visualizer = Visualizer(bgr[:, :, ::-1], self.metadata, scale=1.0)
        drawn = visualizer.draw_instance_predictions(raw[raw.scores >= score_thr])
        return np.ascontiguousarray(drawn.get_image()[:, :, ::-1])


class MMPredictor:
    """MMDetection inference (``inference_detector``, the config's test pipeline) and its
    ``DetLocalVisualizer``."""

    def __init__(self, loaded: LoadedModel) -> None:
        from mmdet.registry import VISUALIZERS

        self.model = loaded.model
        vis = dict(loaded.cfg.get("visualizer", None) or dict(type="DetLocalVisualizer"))
        vis.pop("vis_backends", None)  # draw only: no files written by the visualiser
        vis.pop("save_dir", None)
        vis["name"] = f"predict-{uuid.uuid4().hex[:8]}"  # instances are global by name
        self.visualizer = VISUALIZERS.build(vis)
        self.visualizer.dataset_meta = dict(loaded.model.dataset_meta)
        self.dataset_ids = None

    @torch.no_grad()
    def __call__(self, bgr: np.ndarray):
        from mmdet.apis import inference_detector

        sample = inference_detector(self.model, bgr).cpu()
        pred = sample.pred_instances
        return sample, (pred.bboxes.numpy(), pred.scores.numpy(), pred.labels.numpy())

    def draw(self, bgr: np.ndarray, raw, score_thr: float) -> np.ndarray:
        self.visualizer.add_datasample(
            "prediction",
            np.ascontiguousarray(bgr[:, :, ::-1]),
            data_sample=raw,
            draw_gt=False,
            show=False,
            pred_score_thr=score_thr,
        )
        return np.ascontiguousarray(self.visualizer.get_image()[:, :, ::-1])


def category_ids(names: tuple[str, ...], dataset_ids: dict | None) -> list[int]:
    """COCO ``category_id`` of each label (see the module docstring)."""
    from plugins.data.shapes import SHAPES_CATEGORIES

    if dataset_ids and len(dataset_ids) == len(names):
        return [int(dataset_ids[i]) for i in range(len(names))]
    if tuple(names) == tuple(c["name"] for c in SHAPES_CATEGORIES):
        return [int(c["id"]) for c in SHAPES_CATEGORIES]
    if len(names) == len(COCO_THING_IDS) and names[:3] == ("person", "bicycle", "car"):
        return list(COCO_THING_IDS)
    return list(range(1, len(names) + 1))


# ------------------------------------------------------------------------------------------
# Inputs and outputs
# ------------------------------------------------------------------------------------------
def list_inputs(source: str) -> tuple[str, list[Path]]:
    """``("images", files)`` for an image or a folder of images, ``("video", [file])``.

    Raises:
        ToolError: missing path, unknown file type, or a folder without images.
    """
    path = Path(source)
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise ToolError(
                f"input: folder {source} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            )
        return "images", files
    if not path.is_file():
        raise ToolError(f"input: {source} does not exist")
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video", [path]
    if suffix in IMAGE_EXTENSIONS:
        return "images", [path]
    raise ToolError(
        f"input: {source}: unknown file type {suffix or '(no extension)'!r}; expected an image "
        f"({', '.join(IMAGE_EXTENSIONS)}), a video ({', '.join(VIDEO_EXTENSIONS)}) or a folder"
    )


def output_name(path: Path, kind: str) -> str:
    return f"{path.stem}_pred{'.mp4' if kind == 'video' else path.suffix.lower()}"


class OutputFolder:
    """The output folder: writes files atomically; replaces only files this tool wrote."""

    def __init__(self, folder: str) -> None:
        self.path = Path(folder)
        if self.path.exists() and not self.path.is_dir():
            raise ToolError(f"--output: {folder} exists and is not a folder")
        manifest = self.path / MANIFEST
        self.ours: set[str] = set()
        if manifest.is_file():
            try:
                self.ours = set(json.loads(manifest.read_text())["files"])
            except (ValueError, KeyError, TypeError):
                raise ToolError(f"--output: {manifest} is not a manifest of predict.py") from None
        self.written: list[str] = []

    def check(self, names: list[str]) -> None:
        """Raise before anything is written if a target exists that an earlier run did not write."""
        for name in names:
            target = self.path / name
            if target.exists() and name not in self.ours:
                raise ToolError(
                    f"--output: {target} exists and was not written by predict.py; choose "
                    "another --output folder"
                )
        self.path.mkdir(parents=True, exist_ok=True)

    def temporary(self, name: str) -> Path:
        """A temporary path (ours) next to ``name``, keeping its extension."""
        stem, ext = os.path.splitext(name)
        return self.path / f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}"

    def commit(self, tmp: Path, name: str) -> None:
        os.replace(tmp, self.path / name)
        self.written.append(name)
        self.ours.add(name)
        self._write_manifest()

    def write_bytes(self, name: str, data: bytes) -> None:
        tmp = self.temporary(name)
        try:
            tmp.write_bytes(data)
            self.commit(tmp, name)
        finally:
            if tmp.exists():
                tmp.unlink()

    def _write_manifest(self) -> None:
        tmp = self.temporary(MANIFEST)
        try:
            tmp.write_text(json.dumps({"files": sorted(self.ours)}, indent=1))
            os.replace(tmp, self.path / MANIFEST)
        finally:
            if tmp.exists():
                tmp.unlink()


def _results(dets, image_id: int, file_name: str, names, ids, score_thr: float) -> list[dict]:
    boxes, scores, labels = dets
    out = []
    for box, score, label in zip(boxes, scores, labels):
        if score < score_thr:
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "category_id": ids[int(label)],
                "category_name": names[int(label)] if int(label) < len(names) else str(label),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(score), 5),
            }
        )
    return out


def _progress(items, total: int, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr)


def _encode(name: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(os.path.splitext(name)[1], image)
    if not ok:
        raise ToolError(f"cannot encode {name}")
    return data.tobytes()


def predict_images(predictor, files, out: OutputFolder, names, ids, thr: float) -> list[dict]:
    results: list[dict] = []
    for index, path in enumerate(_progress(files, len(files), len(files) > 1, "predict")):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ToolError(f"input: cannot read image {path} (not an image, or damaged)")
        raw, dets = predictor(bgr)
        name = output_name(path, "images")
        out.write_bytes(name, _encode(name, predictor.draw(bgr, raw, thr)))
        results += _results(dets, index, path.name, names, ids, thr)
    return results


def predict_video(predictor, path: Path, out: OutputFolder, names, ids, thr: float) -> list[dict]:
    capture = cv2.VideoCapture(str(path))
    ok, frame = capture.read() if capture.isOpened() else (False, None)
    if not ok or frame is None:
        capture.release()
        raise ToolError(f"input: cannot read video {path} (no decodable frame)")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
    name = output_name(path, "video")
    tmp = out.temporary(name)
    size = (frame.shape[1], frame.shape[0])
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    results: list[dict] = []
    try:
        if not writer.isOpened():
            raise ToolError(f"--output: cannot write an mp4 video in {out.path}")

        def frames():
            yield frame
            while True:
                ok, more = capture.read()
                if not ok:
                    return
                yield more

        for index, bgr in enumerate(_progress(frames(), total, True, path.name)):
            raw, dets = predictor(bgr)
            writer.write(predictor.draw(bgr, raw, thr))
            results += _results(dets, index, f"{path.name}#{index}", names, ids, thr)
        writer.release()
        out.commit(tmp, name)
    finally:
        writer.release()
        capture.release()
        if tmp.exists():
            tmp.unlink()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_parser(
        "predict.py",
        "Predict with a Detectron2 or MMDetection config + checkpoint; draw the detections and "
        "write COCO results.",
    )
    parser.add_argument("input", help="an image, a folder of images or a video")
    parser.add_argument("--output", "-o", default="predictions", help="output folder")
    parser.add_argument(
        "--score-thr", type=float, default=0.3, help="lowest score drawn and saved (default 0.3)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[str]:
    """Predict as ``args`` asks; returns the names of the files written."""
    if not 0.0 <= args.score_thr <= 1.0:
        raise ToolError(f"--score-thr: expected a value in [0, 1], got {args.score_thr}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ToolError(f"--device: {args.device} asked for but CUDA is not available")
    kind, files = list_inputs(args.input)
    out = OutputFolder(args.output)
    out.check([output_name(f, kind) for f in files] + [RESULTS])
    loaded = load_model(args.config, args.checkpoint, args.device)
    predictor = D2Predictor(loaded) if loaded.framework == "d2" else MMPredictor(loaded)
    names = loaded.class_names
    ids = category_ids(names, predictor.dataset_ids)
    if kind == "video":
        results = predict_video(predictor, files[0], out, names, ids, args.score_thr)
    else:
        results = predict_images(predictor, files, out, names, ids, args.score_thr)
    out.write_bytes(RESULTS, json.dumps(results).encode())
    print(
        f"wrote {len(out.written)} files to {out.path}: {', '.join(out.written[:4])}"
        + (", ..." if len(out.written) > 4 else "")
    )
    return out.written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    return run_cli("predict.py", parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
