#!/usr/bin/env python
"""Check the carried wheels against the GPU device's image, on this machine (no GPU needed).

``tools/device_bundle.sh --check`` installs the wheels (built for this machine's Python, plus
the newest Pillow, as on the device) into a fresh ``--target`` folder and runs::

    PYTHONPATH=<target> python tools/device_image_check.py <target> <repo>

Third-party modules that neither the device image (:data:`DEVICE_IMAGE`, the package list of
the device's documentation) nor ``<target>`` provides are blocked (``ModuleNotFoundError``),
so a dependency the wheels miss shows up here. Then it imports effdet and converts a
``tf_efficientdet_d0`` into ours, and runs ``tools/train_net.py`` in this process with the
dry-run command of ``tools/gpu_check.py`` (2 iterations of the tiny EfficientDet on the
embedded dataset, then COCO evaluation). Finally every carried package must have been imported
from ``<target>``. Exit status 0 when all of that holds.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import os
import re
import runpy
import sys
import tempfile
from pathlib import Path

# Distributions on the device image ('cuda', read 2026-11-17; docs of the device tool).
DEVICE_IMAGE = set(
    """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja
numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp
""".split()
)

# Local distribution -> the device's one that provides the same modules.
_SAME_MODULES = {"opencv-python": "opencv-python-headless"}

# Carried packages -> a module each must be imported from the target folder.
CARRIED = {
    "detectron2": "detectron2",
    "fvcore": "fvcore",
    "iopath": "iopath",
    "yacs": "yacs",
    "termcolor": "termcolor",
    "omegaconf": "omegaconf",
    "effdet": "effdet",
    "pycocotools": "pycocotools",
    "pillow": "PIL",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def blocked_modules(target: Path) -> set[str]:
    """Top-level modules installed here whose distributions the device (+ target) lacks, and
    ``pkg_resources`` (setuptools 81 and later, maybe the device's, have none)."""
    allowed = {_norm(d) for d in DEVICE_IMAGE}
    allowed |= {
        _norm(d.metadata["Name"]) for d in importlib.metadata.distributions(path=[str(target)])
    }
    blocked = {"pkg_resources"}
    for module, dists in importlib.metadata.packages_distributions().items():
        if module in sys.stdlib_module_names or module == "plugins":
            continue
        names = {_SAME_MODULES.get(_norm(d), _norm(d)) for d in dists}
        if not names & allowed and not any(n.startswith("nvidia-") for n in names):
            blocked.add(module)
    return blocked


class _Block(importlib.abc.MetaPathFinder):
    def __init__(self, modules: set[str]) -> None:
        self.modules = modules

    def find_spec(self, fullname, path, target=None):  # noqa: D102
        top = fullname.partition(".")[0]
        if top in self.modules:
            raise ModuleNotFoundError(f"{top} is not on the device image", name=fullname)
        return None


def main(argv: list[str]) -> int:
    target, repo = Path(argv[0]).resolve(), Path(argv[1]).resolve()
    os.chdir(repo)  # the training command's paths are relative to the checkout
    import torch  # on the device image (its CUDA libraries load before the blocker)

    blocked = blocked_modules(target)
    sys.meta_path.insert(0, _Block(blocked))
    print(f"blocked (not on the device image): {', '.join(sorted(blocked)) or 'none'}")
    sys.path[:0] = [str(repo), str(repo / "tools")]

    import effdet

    from plugins.convert.effdet import convert_effdet_state_dict
    from plugins.core.efficientdet import EfficientDet

    ref = effdet.EfficientDet(effdet.get_efficientdet_config("tf_efficientdet_d0"), False)
    ours = EfficientDet("efficientdet_d0")
    ours.load_state_dict(convert_effdet_state_dict(ref.state_dict(), "efficientdet_d0"))
    print("effdet tf_efficientdet_d0 -> ours: converted")

    import gpu_check

    with tempfile.TemporaryDirectory() as tmp:
        ctx = gpu_check.Ctx("cpu", True, 0.0, Path(tmp), Path(tmp))
        cmd, _ = gpu_check.d2_train_command(ctx, Path(tmp) / "d2")
        sys.argv = [str(repo / cmd[1])] + cmd[2:]
        torch.set_num_threads(1)
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        except SystemExit as stop:
            if stop.code not in (0, None):
                print(f"train_net.py exited with {stop.code}")
                return 1
    wrong = {}
    for dist, module in CARRIED.items():
        where = Path(sys.modules[module].__file__).resolve()
        if target not in where.parents:
            wrong[dist] = str(where)
    import PIL

    print(f"Pillow {PIL.__version__}, Detectron2 from {sys.modules['detectron2'].__file__}")
    if wrong:
        print(f"not imported from {target}: {wrong}")
        return 1
    print("device image check: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
