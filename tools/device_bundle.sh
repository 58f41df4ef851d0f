#!/usr/bin/env bash
# Build the wheel folder a GPU device run carries, then print the exact device command.
#
#   bash tools/device_bundle.sh            # -> .whl/ for the device's CPython 3.12, + the command
#   bash tools/device_bundle.sh --check    # also: install a copy built for this machine's Python
#                                          # into a temporary --target and run a 2-iteration
#                                          # Detectron2 training + evaluation from it, with the
#                                          # packages the device image lacks blocked
#
# The device machine (docs/gpu_check.md) runs the working tree with its own Python 3.12, torch
# 2.11, torchvision, Triton, timm, numba, pytest, Pillow (>= 10), matplotlib, tabulate,
# portalocker, tensorboard, ... and no network. It lacks Detectron2 and most of its
# dependencies, effdet and pycocotools; those travel as wheels (64 MiB at most with the tree):
#   - Detectron2 v0.6: the registry's pb1-detectron2 source built without its C++ extension
#     (as tools/setup_env.sh installs it), with two changes: the default argument
#     `interp=Image.LINEAR` of ExtentTransform becomes `Image.BILINEAR` (the same value; Pillow
#     10 removed the LINEAR alias and Detectron2 0.6 reads it at import), and the model zoo
#     finds its configs next to its own file instead of through pkg_resources (setuptools 81
#     and later have no pkg_resources; plugins.d2 imports detectron2.model_zoo);
#   - fvcore, iopath, yacs, termcolor, omegaconf, hydra-core, antlr4-python3-runtime, effdet
#     (pure Python, the versions installed in .venv), pycocotools (the binary wheel for the
#     device's CPython), and this project.
# Versions are the ones tools/setup_env.sh installed in the venv (requirements.txt pins).
#
# Environment knobs:
#   VENV=.venv          the project's environment (builds the wheels; Detectron2's setup.py
#                       imports torch)
#   DEVICE_PY=3.12      the device's Python version (pycocotools' binary wheel is chosen for it)
#   WHL_DIR=.whl        the wheel folder (made by this script; it refuses a folder it did not make)
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
DEVICE_PY="${DEVICE_PY:-3.12}"
WHL_DIR="${WHL_DIR:-$ROOT/.whl}"
BUILD="$ROOT/.build/device_bundle"
MARK=".made-by-device_bundle"
LIMIT=$((64 * 1024 * 1024))
CHECK=0
[[ "${1:-}" == "--check" ]] && CHECK=1
[[ $# -le 1 && ( $# -eq 0 || $CHECK -eq 1 ) ]] || { echo "usage: $0 [--check]" >&2; exit 2; }
export PIP_DISABLE_PIP_VERSION_CHECK=1

STEP="start"
trap 'echo "device_bundle.sh: FAILED at step: $STEP" >&2' ERR
step() { STEP="$1"; printf '==> %s\n' "$1"; }

PURE=(fvcore iopath yacs termcolor omegaconf hydra-core antlr4-python3-runtime effdet)
BINARY=(pycocotools)

version_of() {  # the version installed in the venv
  "$PY" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$1" 2>/dev/null \
    || { echo "device_bundle.sh: $1 is not installed in $VENV (run make setup)" >&2; return 1; }
}

# A wheel folder of ours: created here, or holding our marker. Only our *.whl files are removed.
fresh_dir() {
  local dir="$1"
  if [[ -e "$dir" && ! -e "$dir/$MARK" ]] && [[ -n "$(ls -A "$dir" 2>/dev/null)" ]]; then
    echo "device_bundle.sh: $dir exists and was not made by this script; refusing to touch it" >&2
    return 1
  fi
  mkdir -p "$dir"
  touch "$dir/$MARK"
  find "$dir" -maxdepth 1 -type f -name '*.whl' -delete
}

# build_bundle DIR PYTHON_VERSION: every wheel into DIR
build_bundle() {
  local dir="$1" pyver="$2" name
  fresh_dir "$dir"
  step "pure-Python wheels (${PURE[*]})"
  local specs=()
  for name in "${PURE[@]}"; do specs+=("$name==$(version_of "$name")"); done
  # pip wheel: downloads a wheel where the registry has one, builds the sdist-only ones
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "${specs[@]}"

  step "binary wheels for CPython $pyver (${BINARY[*]})"
  local plat=() n
  for n in 17 24 27 28 31 34; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
  plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  for name in "${BINARY[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" \
      --implementation cp "${plat[@]}" -d "$dir" "$name==$(version_of "$name")"
  done

  step "Detectron2 $(version_of pb1-detectron2) without its C++ extension (pure Python)"
  rm -rf "$BUILD/detectron2" && mkdir -p "$BUILD/detectron2"
  "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary=:all: \
    -d "$BUILD/detectron2" "pb1-detectron2==$(version_of pb1-detectron2)"
  tar xzf "$BUILD"/detectron2/*.tar.gz -C "$BUILD/detectron2"
  local src
  src=$(find "$BUILD/detectron2" -mindepth 1 -maxdepth 1 -type d | head -n1)
  "$PY" - "$src" <<'PY'
import pathlib
import sys

src = pathlib.Path(sys.argv[1])
zoo_call = 'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )'
edits = [
    ("setup.py", "ext_modules=get_extensions(),", "ext_modules=[],"),
    ("detectron2/data/transforms/transform.py", "interp=Image.LINEAR,", "interp=Image.BILINEAR,"),
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", ""),
    (
        "detectron2/model_zoo/model_zoo.py",
        zoo_call,
        'os.path.join(os.path.dirname(__file__), "configs", config_path)',
    ),
]
for rel, old, new in edits:
    path = src / rel
    text = path.read_text()
    if text.count(old) != 1:
        sys.exit(f"device_bundle.sh: expected one {old!r} in {path}")
    path.write_text(text.replace(old, new))
PY
  # setup.py packages the model-zoo configs from a top-level configs/ that the sdist lacks
  [[ -d "$src/configs" ]] || cp -r "$src/detectron2/model_zoo/configs" "$src/configs"
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "$src"

  step "this project (dense-detection-plugins)"
  # built from a copy: an in-tree build would leave build/ and *.egg-info in the checkout
  rm -rf "$BUILD/project" && mkdir -p "$BUILD/project"
  cp -r pyproject.toml README.md plugins "$BUILD/project/"
  find "$BUILD/project" -name __pycache__ -prune -exec rm -rf {} +
  "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$dir" "$BUILD/project"

  step "check: pure wheels, one version each"
  "$PY" - "$dir" "$pyver" <<'PY'
import collections
import pathlib
import sys

folder, pyver = pathlib.Path(sys.argv[1]), sys.argv[2]
names = collections.Counter()
for whl in sorted(folder.glob("*.whl")):
    name, _, rest = whl.name.partition("-")
    tags = whl.stem.split("-")[-3:]
    names[name.lower().replace("_", "-")] += 1
    if tags[0].startswith("cp") and tags[0] != "cp" + pyver.replace(".", ""):
        sys.exit(f"device_bundle.sh: {whl.name} is not built for CPython {pyver}")
    if name.lower() != "pycocotools" and tags != ["py3", "none", "any"]:
        sys.exit(f"device_bundle.sh: {whl.name} is not a pure-Python wheel")
twice = [n for n, c in names.items() if c > 1]
if twice:
    sys.exit(f"device_bundle.sh: more than one wheel of {twice} in {folder}")
print(f"{sum(names.values())} wheels: {', '.join(sorted(names))}")
PY
}

size_of() { du -sb "$1" | cut -f1; }

build_bundle "$WHL_DIR" "$DEVICE_PY"

step "size (the tree and the carried wheels travel together: 64 MiB at most)"
whl_bytes=$(size_of "$WHL_DIR")
tree_bytes=$(git ls-files -co --exclude-standard -z | du --files0-from=- -cb 2>/dev/null | tail -1 | cut -f1)
total=$((whl_bytes + tree_bytes))
printf '%s: %.1f MiB; working tree: %.1f MiB; together %.1f MiB of 64\n' "$WHL_DIR" \
  "$(echo "$whl_bytes / 1048576" | bc -l)" "$(echo "$tree_bytes / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)"
if ((total > LIMIT)); then
  echo "device_bundle.sh: over the 64 MiB the device run carries" >&2
  false
fi

if ((CHECK)); then
  LOCAL_PY=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  step "--check: a bundle for this machine's Python $LOCAL_PY, installed into a fresh --target"
  CHECK_DIR="$BUILD/check"
  rm -rf "$CHECK_DIR" && mkdir -p "$CHECK_DIR"
  build_bundle "$CHECK_DIR/whl" "$LOCAL_PY"
  # the newest Pillow, as on the device (Detectron2 0.6 unpatched fails to import with it)
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CHECK_DIR/whl" "Pillow>=10"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$CHECK_DIR/site" "$CHECK_DIR"/whl/*.whl
  step "--check: 2 training iterations + evaluation, device image emulated"
  OMP_NUM_THREADS=1 PYTHONPATH="$CHECK_DIR/site" \
    "$PY" "$ROOT/tools/device_image_check.py" "$CHECK_DIR/site" "$ROOT"
fi

STEP="done"
cat <<EOF

device_bundle.sh: $WHL_DIR is ready. The device run (the run tool; see docs/gpu_check.md):
  carry: [".whl"]
  timeout_s: 570
  command:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; set -o pipefail; PYTHONUNBUFFERED=1 python3 tools/gpu_check.py --out \$OUT 2>&1 | tee \$OUT/gpu_check.log
EOF
