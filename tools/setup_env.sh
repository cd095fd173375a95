#!/usr/bin/env bash
# Create or reuse the project virtualenv (.venv) and install everything `make test` / `make demo`
# need. Idempotent: a stamp keyed on the hash of the install inputs makes a repeated run a no-op
# that returns in well under a second.
#
#   tools/setup_env.sh            VENV=path (default .venv), PYTHON=interpreter to create it with
#
# Steps (only when the stamp is missing or stale):
#   1. python -m venv .venv (with --system-site-packages where a real ROS 2 is sourced)
#   2. pip install -r requirements.txt            (ROS 2 Jazzy wheels, numpy, opencv, ... pinned)
#   3. pip install torch==2.13.0                  only if torch does not import (keeps CUDA builds)
#   4. pip install -r tools/requirements-rosidl.txt + tools/gen_interfaces.sh
#                                                 ROS wheels mode only: tf2_msgs, colcon
#   5. pip install --no-deps -e .                 this package (console scripts, ament index entry)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
STAMP="$VENV/.nre_setup_stamp"
TORCH_SPEC="${NRE_TORCH_SPEC:-torch==2.13.0}"
log() { echo "[setup_env] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A real ROS 2 installation is sourced (setup.bash) and its Python imports rclpy: use it, never the
# PyPI wheels next to it (mixing the two breaks both).
SYSTEM_ROS=0
if [ -n "${ROS_DISTRO:-}" ] && [ "${NRE_USE_ROS_WHEELS:-0}" != 1 ] && [ ! -x "$VENV/bin/python" ] \
   && /usr/bin/env python3 -c 'import rclpy' >/dev/null 2>&1; then
  SYSTEM_ROS=1
elif [ -f "$VENV/.nre_system_ros" ]; then
  SYSTEM_ROS=1
fi

inputs_digest() {
  (
    cd "$ROOT"
    for f in requirements.txt tools/requirements-rosidl.txt setup.py setup.cfg package.xml \
             tools/setup_env.sh tools/gen_interfaces.sh; do
      if [ -f "$f" ]; then echo "== $f"; cat "$f"; fi
    done
    if [ -d interfaces ]; then
      find interfaces -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
    fi
    echo "system_ros=$SYSTEM_ROS torch=$TORCH_SPEC venv=$VENV"
  ) | sha256sum | cut -d' ' -f1
}

DIGEST="$(inputs_digest)"
up_to_date() { [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$DIGEST" ]; }
if up_to_date; then
  exit 0  # nothing to install
fi

# One installer at a time per virtualenv (parallel `make` runs share .venv); the others wait,
# then find the stamp fresh.
if command -v flock >/dev/null; then
  LOCK="${TMPDIR:-/tmp}/nre_setup_env_$(printf '%s' "$VENV" | sha256sum | cut -c1-16).lock"
  exec 9>"$LOCK"
  if ! flock -n 9; then
    log "another setup of $VENV is running: waiting for it"
    flock 9
  fi
  if up_to_date; then exit 0; fi
fi

start=$SECONDS
pick_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3.10 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  if [ "$SYSTEM_ROS" = 1 ]; then
    BASE_PY="$(command -v python3)"
  else
    BASE_PY="$(pick_python)" || die "need Python 3.10-3.13 (the ROS 2 Jazzy wheels exist for cp310-cp313); set PYTHON=..."
  fi
  log "creating $VENV with $BASE_PY ($("$BASE_PY" --version 2>&1))"
  venv_args=()
  [ "$SYSTEM_ROS" = 1 ] && venv_args+=(--system-site-packages)
  "$BASE_PY" -m venv "${venv_args[@]}" "$VENV" \
    || die "python -m venv failed (Debian: apt-get install python3-venv)"
  [ "$SYSTEM_ROS" = 1 ] && touch "$VENV/.nre_system_ros"
else
  log "reusing $VENV ($("$VENV/bin/python" --version 2>&1)); install inputs changed"
fi

PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check --no-input --progress-bar off -q)

REQS="$ROOT/requirements.txt"
if [ "$SYSTEM_ROS" = 1 ]; then
  # ROS, NumPy and OpenCV come from the ROS installation (rosdep keys in package.xml).
  REQS="$VENV/.requirements-system-ros.txt"
  grep -viE '^(ros-jazzy-|numpy|opencv)' "$ROOT/requirements.txt" >"$REQS"
  log "system ROS 2 ($ROS_DISTRO): installing requirements.txt without ros-jazzy-*, numpy, opencv"
fi
log "pip install -r requirements.txt"
"${PIP[@]}" -r "$REQS"

if (cd / && "$PY" -c 'import torch' >/dev/null 2>&1); then
  log "torch $(cd / && "$PY" -c 'import torch; print(torch.__version__)') already installed: kept"
else
  log "pip install $TORCH_SPEC"
  "${PIP[@]}" "$TORCH_SPEC"
fi

if [ "$SYSTEM_ROS" = 0 ]; then
  log "pip install -r tools/requirements-rosidl.txt (rosidl generators, ament_cmake, colcon)"
  "${PIP[@]}" -r "$ROOT/tools/requirements-rosidl.txt"
  bash "$ROOT/tools/gen_interfaces.sh" "$VENV"
fi

log "pip install -e . (nre_localization, editable)"
"${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT"

(cd / && AMENT_PREFIX_PATH="$VENV" "$PY" - <<'PYEOF'
import importlib
for name in ("numpy", "cv2", "torch", "rclpy", "sensor_msgs.msg", "tf2_msgs.msg", "nre_localization"):
    importlib.import_module(name)
PYEOF
) || die "the new environment does not import everything it should"

echo "$DIGEST" >"$STAMP"
log "done in $((SECONDS - start)) s: $VENV"
