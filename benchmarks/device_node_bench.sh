#!/usr/bin/env bash
# Node latency through DDS on the GPU host (no ROS install, no .venv, no internet), in one command:
#
#   benchmarks/device_node_bench.sh OUT.json [extra bench_node.py args]
#   benchmarks/device_node_bench.sh --check-only        install + DDS preflight only (no torch)
#
# from the repository root with .whl/ carried (made here by tools/device_wheels.sh). It
#   1. installs .whl/*.whl into /tmp/site (skipped when that exact set is installed already) with
#      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target
#   2. sets the environment the ROS 2 wheels need without a sourced setup file: PYTHONPATH (site +
#      repository), LD_LIBRARY_PATH (site/ros2_prefix/lib + the wheels' ros_*.libs), AMENT_PREFIX_PATH,
#      RMW_IMPLEMENTATION=rmw_fastrtps_cpp, FASTRTPS/FASTDDS_DEFAULT_PROFILES_FILE=config/fastdds.xml,
#      ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (bench_node.py claims a private domain
#      of its own for the node and itself);
#   3. runs benchmarks/dds_preflight.py (imports, a cross-process Image -> TFMessage round trip);
#   4. checks torch/OpenCV/safetensors and CUDA;
#   5. bench_node.py --mode ros  (node in its own process; per-frame latency, then a --rate stream)
#      -> OUT.json, its log -> OUT_ros.log, the node's log -> OUT_node.log;
#   6. bench_node.py --mode inproc (same per-frame path without DDS) -> OUT_inproc.json (+ .log).
# Any failure: exit 1 with one line "device_node_bench: FAILED: ...".
#
# Env overrides: NRE_BENCH_DEVICE (cuda), NRE_BENCH_FRAMES (200), NRE_BENCH_WARMUP (20),
#   NRE_BENCH_RATE (30), NRE_BENCH_STREAM_FRAMES (300), NRE_BENCH_INPROC=0 (skip step 6),
#   NRE_BENCH_TIMEOUT (s per bench run, 240), PYTHON (python3), NRE_DEVICE_SITE (/tmp/site),
#   WHL_DIR (.whl).
# Example (simulated here on the CPU):
#   NRE_BENCH_DEVICE=cpu NRE_BENCH_FRAMES=10 NRE_BENCH_STREAM_FRAMES=30 \
#     benchmarks/device_node_bench.sh build/bench/dev.json
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-python3}"
SITE="${NRE_DEVICE_SITE:-/tmp/site}"
WHL_DIR="${WHL_DIR:-$ROOT/.whl}"
DEVICE="${NRE_BENCH_DEVICE:-cuda}"
FRAMES="${NRE_BENCH_FRAMES:-200}"
WARMUP="${NRE_BENCH_WARMUP:-20}"
RATE="${NRE_BENCH_RATE:-30}"
STREAM="${NRE_BENCH_STREAM_FRAMES:-300}"
TIMEOUT="${NRE_BENCH_TIMEOUT:-240}"
fail() { echo "device_node_bench: FAILED: $*" >&2; exit 1; }
say() { echo "[device_node_bench] $*"; }
T0=$SECONDS

CHECK_ONLY=0
if [ "${1:-}" = "--check-only" ]; then
  CHECK_ONLY=1; shift
else
  [ $# -ge 1 ] || fail "usage: benchmarks/device_node_bench.sh OUT.json [bench_node.py args] | --check-only"
  OUT_JSON="$1"; shift
  case "$OUT_JSON" in /*) ;; *) OUT_JSON="$ROOT/$OUT_JSON" ;; esac
  mkdir -p "$(dirname "$OUT_JSON")" || fail "cannot create $(dirname "$OUT_JSON")"
  STEM="${OUT_JSON%.json}"
fi

# --- 1. wheels -> SITE ---------------------------------------------------------------------------
command -v "$PY" >/dev/null 2>&1 || fail "no $PY"
TAG="$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')" || fail "$PY does not run"
shopt -s nullglob
wheels=("$WHL_DIR"/*.whl)
shopt -u nullglob
[ "${#wheels[@]}" -gt 0 ] || fail "no wheels in $WHL_DIR (run tools/device_wheels.sh here and carry .whl)"
tags="$(printf '%s\n' "${wheels[@]##*/}" | grep -oE -- '-cp3[0-9]+-' | sort -u | tr -d '-' | paste -sd' ')"
[ "$tags" = "$TAG" ] || fail "wheels in $WHL_DIR are for ${tags:-no CPython} but $PY is $TAG"
ls "$WHL_DIR"/nre_tf2_msgs_generated-*.whl >/dev/null 2>&1 || fail "no generated tf2_msgs wheel in $WHL_DIR"
stamp="$( (echo "$TAG"; for w in "${wheels[@]}"; do stat -c '%n %s' "$w"; done) | sha256sum | cut -c1-16)"
if [ "$(cat "$SITE/.nre_device_wheels" 2>/dev/null)" != "$stamp" ]; then
  say "installing ${#wheels[@]} wheels into $SITE"
  mkdir -p "$SITE" || fail "cannot create $SITE"
  pip_log="$(mktemp)"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "${wheels[@]}" >"$pip_log" 2>&1; then
    fail "pip install --target $SITE: $(grep -vE '^\s*$' "$pip_log" | tail -1)"
  fi
  rm -f "$pip_log"
  echo "$stamp" >"$SITE/.nre_device_wheels"
fi
[ -d "$SITE/rclpy" ] && [ -d "$SITE/ros2_prefix/lib" ] \
  || fail "$SITE lacks rclpy/ or ros2_prefix/lib (wheels not made by tools/device_wheels.sh?)"

# --- 2. environment ------------------------------------------------------------------------------
libs="$SITE/ros2_prefix/lib"
for d in "$SITE"/ros_*.libs; do [ -d "$d" ] && libs="$libs:$d"; done
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$SITE/ros2_prefix"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1  # no re-exec by the wheels' .pth hook, were it on a path
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export FASTRTPS_DEFAULT_PROFILES_FILE="$ROOT/config/fastdds.xml"
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/config/fastdds.xml"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
unset ROS_LOCALHOST_ONLY ROS_STATIC_PEERS  # deprecated in Jazzy (the range above replaces it)
export ROS_LOG_DIR="$ROOT/build/bench/ros_log"
export PYTHONUNBUFFERED=1
[ -f "$FASTRTPS_DEFAULT_PROFILES_FILE" ] || fail "no $FASTRTPS_DEFAULT_PROFILES_FILE"

# --- 3. DDS preflight ----------------------------------------------------------------------------
pre="$("$PY" benchmarks/dds_preflight.py 2>&1)"
line="$(grep -E '^dds preflight: ' <<<"$pre" | tail -1)"
case "$line" in
  "dds preflight: OK"*) say "${line#dds preflight: }" ;;
  *) fail "${line:-$(grep -vE '^\s*$' <<<"$pre" | tail -1)}" ;;
esac
if [ "$CHECK_ONLY" = 1 ]; then
  say "check-only: OK in $((SECONDS - T0)) s"
  exit 0
fi

# --- 4. torch & co. ------------------------------------------------------------------------------
env_line="$("$PY" - "$DEVICE" 2>&1 <<'PYEOF'
import sys
import cv2, numpy, safetensors, torch
dev = sys.argv[1]
if dev.startswith("cuda") and not torch.cuda.is_available():
    raise SystemExit(f"torch {torch.__version__}: CUDA not available")
name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"opencv {cv2.__version__}, {name}")
PYEOF
)" || fail "$(tail -1 <<<"$env_line")"
say "$env_line"
shm_free="$(df -Pm /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')"
[ -n "$shm_free" ] && [ "$shm_free" -lt 96 ] \
  && say "WARNING: only ${shm_free} MiB free in /dev/shm (Fast DDS wants 16 MiB per process + queues)"

# --- 5. through DDS (node in its own process) -----------------------------------------------------
run_bench() {  # mode json log
  local mode="$1" json="$2" log="$3" rc
  say "bench_node --mode $mode --device $DEVICE --frames $FRAMES -> $json"
  timeout -s INT -k 20 "$TIMEOUT" "$PY" benchmarks/bench_node.py --mode "$mode" --device "$DEVICE" \
    --frames "$FRAMES" --warmup "$WARMUP" --rate "$RATE" --stream-frames "$STREAM" \
    --out "$json" "${EXTRA[@]}" 2>&1 | tee "$log"
  rc="${PIPESTATUS[0]}"
  if [ -f build/bench/logs/node.log ] && [ "$mode" = ros ]; then cp build/bench/logs/node.log "$STEM"_node.log; fi
  if [ "$rc" != 0 ]; then
    [ "$rc" = 124 ] && fail "bench_node --mode $mode timed out after $TIMEOUT s (log: $log)"
    fail "bench_node --mode $mode exited $rc: $(grep -vE '^\s*$' "$log" | tail -1) (log: $log)"
  fi
  [ -s "$json" ] || fail "bench_node --mode $mode wrote no $json"
}
EXTRA=("$@")
rm -f build/bench/logs/node.log "$OUT_JSON"
run_bench ros "$OUT_JSON" "$STEM"_ros.log
if [ "${NRE_BENCH_INPROC:-1}" != 0 ]; then
  run_bench inproc "$STEM"_inproc.json "$STEM"_inproc.log
fi

# --- summary -------------------------------------------------------------------------------------
"$PY" - "$OUT_JSON" "$STEM"_inproc.json <<'PYEOF' || fail "bad JSON $OUT_JSON"
import json, sys
from pathlib import Path
r = json.loads(Path(sys.argv[1]).read_text())
lt, s = r["latency_tracking"], r["stream"]
f = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
print(f"[device_node_bench] DDS {r['device_name']}: image -> pose p50 {f(lt['p50_ms'])} / p90 "
      f"{f(lt['p90_ms'])} / p99 {f(lt['p99_ms'])} ms (n {lt['n']}, declined {r['declined']}); "
      f"stream {s['input_rate_hz']:g} Hz: {s['poses_received']}/{s['frames_sent']} poses, "
      f"{s['frames_dropped_by_node']} dropped by node, {s['frames_lost_in_transport']} lost, "
      f"output {s['output_rate_hz']:.1f} Hz, no_frame_dropped={s['no_frame_dropped']}")
p = Path(sys.argv[2])
if p.is_file():
    q = json.loads(p.read_text())["latency_tracking"]
    print(f"[device_node_bench] inproc: p50 {f(q['p50_ms'])} / p90 {f(q['p90_ms'])} / p99 "
          f"{f(q['p99_ms'])} ms (n {q['n']})")
PYEOF
say "done in $((SECONDS - T0)) s"
