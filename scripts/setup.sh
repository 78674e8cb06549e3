#!/usr/bin/env bash
# Set up everything gaussiantalker needs on a fresh machine, in a virtual environment at ./.venv:
# torch, our native CUDA/CPU rasterizer and simple-knn (compiled here), the optional TensorFlow and
# transformers extras, and the test tools. Idempotent: a second run only checks.
#
# Environment: PYTHON (interpreter for the venv; default: the first of python3, python3.12, python3.11,
# python3.10 whose version is supported), GT_VENV (default ./.venv), GT_BUILD_CUDA=0|1 and
# TORCH_CUDA_ARCH_LIST (see setup.py), GT_EXTRAS (default "test,demo,deepspeech,hubert,webapp").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GT_VENV:-.venv}
EXTRAS=${GT_EXTRAS:-test,demo,deepspeech,hubert,webapp}
say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

# Supported interpreters: mediapipe 0.10.21 (the last release with its face models) has wheels for
# Python <= 3.12 only, torch 2.14.1 for >= 3.10. Keep in step with requires-python in pyproject.toml.
SUPPORTED="3.10 3.11 3.12"
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
supported() { case " $SUPPORTED " in *" $1 "*) return 0 ;; esac; return 1; }

# The environment takes about 9 GB (torch's CUDA build 5.5 GB, TensorFlow, MediaPipe, the compiled kernels): check the
# disk before pip runs out of it half-way.
NEED_GB=10
if [ ! -x "$VENV/bin/python" ] && command -v df >/dev/null 2>&1 && command -v awk >/dev/null 2>&1; then
  where=$(dirname "$VENV")
  free_kb=$( (df -Pk "$where" 2>/dev/null || true) | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ "$free_kb" -lt $((NEED_GB * 1024 * 1024)) ]; then
    die "only $((free_kb / 1024 / 1024)) GB free on the disk of $where; the environment needs about $NEED_GB GB: free some space, or set GT_VENV to a folder on a disk with room"
  fi
fi

if [ -x "$VENV/bin/python" ]; then
  v=$(py_version "$VENV/bin/python") || v="unknown"
  supported "$v" || die "$VENV was made with Python $v, which is not supported (need 3.10, 3.11 or 3.12): remove $VENV and run again"
else
  PY=""
  if [ -n "${PYTHON:-}" ]; then
    v=$(py_version "$PYTHON") || die "PYTHON=$PYTHON does not run"
    supported "$v" || die "PYTHON=$PYTHON is Python $v; gaussiantalker needs Python 3.10, 3.11 or 3.12"
    PY=$PYTHON
  else
    seen=""
    for cand in python3 python3.12 python3.11 python3.10; do
      command -v "$cand" >/dev/null 2>&1 || continue
      v=$(py_version "$cand") || continue
      if supported "$v"; then PY=$cand; break; fi
      seen="$seen $cand=$v"
    done
    [ -n "$PY" ] || die "no supported Python found (need 3.10, 3.11 or 3.12; found:${seen:- none}): install python3.12 (e.g. 'uv python install 3.12') and run again with PYTHON=/path/to/python3.12"
  fi
  "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 \
    || die "$PY ($(py_version "$PY")) cannot create virtual environments: install its venv module (Debian: apt-get install python$(py_version "$PY")-venv)"
  say "creating virtual environment $VENV with $PY (Python $(py_version "$PY"))"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

# torch first: the native extensions are compiled against it (pip install --no-build-isolation).
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  say "installing torch 2.14.1 + torchvision 0.29.1"
  "${PIP[@]}" install -q torch==2.14.1 torchvision==0.29.1
fi
"${PIP[@]}" install -q "setuptools>=64" wheel ninja

# A system ffmpeg (with ffprobe) is optional: imageio-ffmpeg ships an ffmpeg binary the library uses.
if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's ffmpeg"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
      || say "apt-get could not install ffmpeg; the ffmpeg shipped by imageio-ffmpeg will be used"
  else
    say "no system ffmpeg; the ffmpeg shipped by imageio-ffmpeg will be used"
  fi
fi

# The web app's tests: a real headless browser (Debian's chromium, driven by playwright's Python binding;
# no browser download) and a real speech synthesiser (espeak-ng) for the chat loop. Without them those
# tests skip, saying why.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's ${missing[*]} (web app tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || say "apt-get could not install ${missing[*]}; the web app's browser / speech tests will skip"
  else
    say "no ${missing[*]}: the web app's browser / speech tests will skip"
  fi
fi

# CUDA toolkits compile slowly: keep the parallel jobs within the machine.
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 2)}
say "building and installing gaussiantalker[$EXTRAS] (native kernels compile now: a few minutes)"
"${PIP[@]}" install -q --no-build-isolation -e ".[$EXTRAS]"
"$VENV/bin/python" - <<'PYEOF'
import diff_gaussian_rasterization, simple_knn
print("[setup] diff_gaussian_rasterization:", diff_gaussian_rasterization.build_info())
print("[setup] simple_knn:", simple_knn.build_info())
PYEOF
