#!/usr/bin/env bash
# Install ssb_det and everything it needs into .venv/ at the repository root.
# Idempotent: a complete install is detected in a second and left alone.
# Detectron2: an existing install, else the official source, else the offline fallback
# (see ssb_det/compat/install_detectron2.py). Fails loudly; never leaves a half install
# marked as complete.
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.ssb_det_installed"
PYTHON=${PYTHON:-python3}

# Everything that decides what gets installed; a change to any of them reinstalls. The
# export packages are only looked up (find_spec), not imported, to keep the check fast.
want=$(cat install.sh setup.py ssb_det/compat/install_detectron2.py | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && "$PY" -c "import ssb_det, detectron2, pycocotools, fvcore, cv2, pytest" 2>/dev/null \
   && "$PY" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('onnx', 'onnxruntime', 'onnxscript')))" 2>/dev/null; then
  exit 0
fi
rm -f "$STAMP"

fail() { echo "install.sh: FAILED: $*" >&2; exit 1; }

echo "install.sh: setting up $VENV (first run takes a few minutes)"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV" || fail "could not create a virtual environment with $PYTHON"
PIP=("$PY" -m pip install --disable-pip-version-check -q)
# setuptools<81: Detectron2 v0.6 imports pkg_resources, removed in setuptools 81.
"${PIP[@]}" --upgrade pip "setuptools<81" wheel || fail "pip/setuptools"
# torch 2.14.1 + torchvision 0.29.1: the pair whose torchvision imports on this machine
# class; override with TORCH_SPEC for another platform.
"${PIP[@]}" ${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1} || fail "torch/torchvision"
"${PIP[@]}" "fvcore>=0.1.5,<0.1.6" "iopath>=0.1.7,<0.1.10" pycocotools opencv-python-headless \
  matplotlib tensorboard pytest onnx onnxruntime || fail "python dependencies"
# onnxscript: torch.onnx's dynamo exporter needs it (ONNX with dynamic height/width,
# tools/export_model.py --format onnx-dynamic); 0.7.2 is the version verified with torch 2.14.1.
"${PIP[@]}" "onnxscript==0.7.2" || fail "onnxscript"
"$PY" ssb_det/compat/install_detectron2.py || fail "Detectron2 (see the messages above)"
"${PIP[@]}" --no-build-isolation --no-deps -e . || fail "ssb_det itself"
"$PY" -c "import ssb_det, detectron2; print('install.sh: ssb_det', ssb_det.__version__, '+ Detectron2', detectron2.__version__)" \
  || fail "import check"
echo "$want" > "$STAMP"
