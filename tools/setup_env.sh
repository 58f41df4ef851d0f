#!/usr/bin/env bash
# One-command setup: creates .venv inside the checkout and installs the pinned stack.
#
#   bash tools/setup_env.sh
#
# Idempotent: every step checks what is already installed, so a second run on the same
# machine takes well under two minutes. The first run on a fresh 2-core machine takes about
# 20-25 minutes, most of it compiling mmcv 2.1.0's CPU ops (pip caches the built wheel in
# ~/.cache/pip, so a fresh clone on the same machine reuses it).
#
# Environment knobs:
#   PYTHON=python3.11      interpreter used to create the venv (default: python3)
#   VENV=.venv             where the venv lives (default: .venv in the checkout)
#   DETECTRON2_GIT_URL=... try this git URL first for Detectron2 (default: the official repo)
#   MAX_JOBS=2             parallel compile jobs for mmcv
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
BUILD="$ROOT/.build"
REQ="$ROOT/requirements.txt"
DETECTRON2_GIT_URL="${DETECTRON2_GIT_URL:-https://github.com/facebookresearch/detectron2.git}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

STEP="start"
trap 'echo "setup_env.sh: FAILED at step: $STEP (see the output above)" >&2' ERR
step() { STEP="$1"; printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$1"; }

# Read a pin from requirements.txt (plain or "#@" line), e.g. `pin torch` -> 2.13.0
pin() {
  local v
  v=$(sed -n "s/^\(#@ \)\{0,1\}$1==\([^ ;#]*\).*/\2/p" "$REQ" | head -n1)
  [[ -n "$v" ]] || { echo "requirements.txt has no pin for $1" >&2; return 1; }
  echo "$v"
}
installed_version() { "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null || true
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
PY
}
PIP() { "$VENV/bin/python" -m pip "$@"; }

step "python venv at $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' \
  || { echo "Python >= 3.10 is required" >&2; false; }

step "build tools (pip, setuptools with pkg_resources, wheel)"
PIP install -q "pip==$(pin pip)" "setuptools==$(pin setuptools)" "wheel==$(pin wheel)"

step "torch $(pin torch) + torchvision $(pin torchvision)"
# The machine's pip config may point at a local CPU-only torch wheel, whose ABI the
# registry's torchvision does not match (torchvision::nms missing). --isolated ignores pip
# config files and PIP_* variables so torch and torchvision come from the same index as a pair.
if ! "$VENV/bin/python" -c "
import torch, torchvision, sys
from torchvision.ops import nms
ok = torch.__version__.split('+')[0] == '$(pin torch)' and torchvision.__version__.split('+')[0] == '$(pin torchvision)'
nms(torch.tensor([[0., 0., 1., 1.]]), torch.tensor([1.]), 0.5)
sys.exit(0 if ok else 1)" 2>/dev/null; then
  cert_args=()
  [[ -n "${PIP_CERT:-}" ]] && cert_args=(--cert "$PIP_CERT")
  PIP install --isolated "${cert_args[@]}" --default-timeout "${PIP_DEFAULT_TIMEOUT:-180}" \
    "torch==$(pin torch)" "torchvision==$(pin torchvision)"
fi
"$VENV/bin/python" -c "import torch, torchvision; from torchvision.ops import nms; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

step "pinned Python requirements (requirements.txt)"
PIP install -q -r "$REQ"

step "mmcv $(pin mmcv) with ops (compiled from source if no wheel is cached; ~16 min on 2 cores)"
if [[ "$(installed_version mmcv)" != "$(pin mmcv)" ]] || ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
  MMCV_WITH_OPS=1 PIP install --no-build-isolation "mmcv==$(pin mmcv)"
fi
"$VENV/bin/python" -c "import mmcv, mmcv.ops; print('mmcv', mmcv.__version__)"

step "mmdet $(pin mmdet)"
if [[ "$(installed_version mmdet)" != "$(pin mmdet)" ]]; then
  PIP install --no-deps "mmdet==$(pin mmdet)"
fi
"$VENV/bin/python" -c "import mmdet.models; print('mmdet', __import__('mmdet').__version__)"

step "detectron2"
if [[ -z "$(installed_version detectron2)$(installed_version pb1-detectron2)" ]]; then
  # 1) the official repository, full C++ extension, when its git host is reachable.
  if timeout 60 git ls-remote --heads "$DETECTRON2_GIT_URL" >/dev/null 2>&1; then
    echo "installing Detectron2 from $DETECTRON2_GIT_URL (with its C++ extension)"
    PIP install --no-build-isolation --no-deps "git+$DETECTRON2_GIT_URL"
  else
    # 2) the registry's repackaging of the v0.6 source. Its sdist lacks layers/csrc, so the
    #    extension is left out of setup.py; plugins.d2 handles the missing detectron2._C.
    echo "git host unreachable: installing the registry's Detectron2 v0.6 source without its C++ extension"
    D2_PKG="pb1-detectron2==$(pin pb1-detectron2)"
    rm -rf "$BUILD/detectron2" && mkdir -p "$BUILD/detectron2"
    PIP download -q --no-deps --no-build-isolation -d "$BUILD/detectron2" "$D2_PKG"
    tar xzf "$BUILD"/detectron2/*.tar.gz -C "$BUILD/detectron2"
    src=$(find "$BUILD/detectron2" -mindepth 1 -maxdepth 1 -type d | head -n1)
    "$VENV/bin/python" - "$src/setup.py" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
new, n = re.subn(r"ext_modules=get_extensions\(\),", "ext_modules=[],", text)
if n != 1:
    sys.exit(f"cannot find ext_modules=get_extensions() in {path}")
open(path, "w").write(new)
PY
    # setup.py packages the model-zoo configs from a top-level configs/ that the sdist lacks.
    [[ -d "$src/configs" ]] || cp -r "$src/detectron2/model_zoo/configs" "$src/configs"
    PIP install --no-build-isolation --no-deps "$src"
  fi
fi
"$VENV/bin/python" -c "import detectron2; print('detectron2', detectron2.__version__)"

step "this project (editable)"
# (checked from / so that the checkout on the current directory does not hide a missing install)
if ! (cd / && "$VENV/bin/python" -c "import plugins, os, sys; sys.exit(0 if os.path.dirname(plugins.__file__) == os.path.join('$ROOT', 'plugins') else 1)") 2>/dev/null; then
  PIP install -q --no-build-isolation --no-deps -e "$ROOT"
fi

step "check: pip dependency consistency"
PIP check || echo "(pip check reports the conflicts above; known and harmless: see README)"

STEP="done"
echo
echo "setup_env.sh: environment ready in $VENV"
echo "  activate with: source $VENV/bin/activate"
echo "  run the tests with: make test"
