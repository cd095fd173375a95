#!/usr/bin/env bash
# Generate and install the ROS 2 interface packages under interfaces/ (tf2_msgs: TFMessage) into a
# virtualenv that has the ROS 2 Jazzy PyPI wheels, using the rosidl/ament_cmake wheels of
# tools/requirements-rosidl.txt and the machine's cmake + C/C++ compiler.
#
#   tools/gen_interfaces.sh [VENV]        (default: .venv of this checkout)
#
# A package is built only where Python cannot already import it (never shadows a real ROS
# install), or where this script built it before from a different definition. ~10 s per package.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"
PY="$VENV/bin/python"
BUILD_ROOT="${NRE_INTERFACES_BUILD:-$ROOT/build/interfaces}"
log() { echo "[gen_interfaces] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -x "$PY" ] || die "no python at $PY"
command -v cmake >/dev/null || die "cmake not found (Debian: apt-get install cmake)"
command -v cc >/dev/null || command -v gcc >/dev/null || die "no C compiler (Debian: apt-get install build-essential)"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler (Debian: apt-get install build-essential)"
if command -v ninja >/dev/null; then GENERATOR="Ninja"; else GENERATOR="Unix Makefiles"; fi

# The wheels' exported CMake files name the wheel builder's Python and NumPy include folders
# (/opt/python/cp3X-cp3X/...). Point them at this interpreter's before anything includes them.
PY_INCLUDE="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("include"))')"
NP_INCLUDE="$("$PY" -c 'import numpy; print(numpy.get_include())')"
[ -f "$PY_INCLUDE/Python.h" ] || die "Python headers missing in $PY_INCLUDE (Debian: apt-get install python3-dev)"
mapfile -t stale < <(grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
if [ "${#stale[@]}" -gt 0 ]; then
  log "rewriting include dirs in ${#stale[@]} exported CMake files -> $PY_INCLUDE, $NP_INCLUDE"
  sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+t?#${PY_INCLUDE}#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+t?/site-packages/numpy/(_core|core)/include#${NP_INCLUDE}#g" \
    "${stale[@]}"
  if grep -lE '/opt/python/cp3' "${stale[@]}" >/dev/null; then
    die "unexpected /opt/python paths left in: $(grep -lE '/opt/python/cp3' "${stale[@]}" | tr '\n' ' ')"
  fi
fi

export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
JOBS="$(nproc 2>/dev/null || echo 2)"

for pkg_dir in "$ROOT"/interfaces/*/; do
  pkg="$(basename "$pkg_dir")"
  [ -f "$pkg_dir/package.xml" ] || continue
  digest="$(cd "$pkg_dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
  marker="$VENV/share/$pkg/.nre_generated"
  if [ -f "$marker" ]; then
    if [ "$(cat "$marker")" = "$digest" ]; then log "$pkg: up to date"; continue; fi
    log "$pkg: definition changed, rebuilding"
  elif (cd / && "$PY" -c "import importlib, sys; importlib.import_module(sys.argv[1] + '.msg')" "$pkg") 2>/dev/null; then
    log "$pkg: importable already (not generated here), left alone"
    continue
  fi
  build="$BUILD_ROOT/$pkg"
  rm -rf "$build"
  mkdir -p "$build"
  log "$pkg: configuring ($GENERATOR) in $build"
  start=$SECONDS
  if ! cmake -S "$pkg_dir" -B "$build" -G "$GENERATOR" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DPython3_EXECUTABLE="$PY" -DPYTHON_EXECUTABLE="$PY" >"$build/configure.log" 2>&1; then
    tail -40 "$build/configure.log" >&2; die "$pkg: cmake configure failed (log: $build/configure.log)"
  fi
  if ! cmake --build "$build" --parallel "$JOBS" >"$build/build.log" 2>&1; then
    tail -40 "$build/build.log" >&2; die "$pkg: build failed (log: $build/build.log)"
  fi
  if ! cmake --install "$build" >"$build/install.log" 2>&1; then
    tail -40 "$build/install.log" >&2; die "$pkg: install failed (log: $build/install.log)"
  fi
  (cd / && "$PY" -c "import importlib, sys; importlib.import_module(sys.argv[1] + '.msg')" "$pkg") \
    || die "$pkg: installed into $VENV but does not import"
  echo "$digest" >"$marker"
  log "$pkg: generated and installed into $VENV in $((SECONDS - start)) s"
done
