#!/usr/bin/env bash
# The GPU check of condnum, in one command, on a machine with one CUDA GPU:
#
#   bash tools/gpu_check.sh [--dry-run] [OUT]        (OUT default: gpu_check_out)
#
# Stages, each under its own time limit (seconds; override with GPU_CHECK_<LIMIT>_S, LIMIT one
# of BUILD, TESTS, MEMCHECK, RACECHECK, BENCH, e.g. GPU_CHECK_BUILD_S=300), so that the
# whole run ends within 8 minutes on one H100:
#   build           (correctness) editable CUDA build, CONDNUM_CUDA=ON, for this GPU's
#                   architecture; the native CUDA kernels must register. If it fails, a
#                   CONDNUM_CUDA=OFF build follows so that the portable path is still tested.
#   tests_portable  (correctness) the op test suite on cuda, portable backend
#   tests_native    (correctness) the op test suite on cuda, native backend, and test_cuda.py
#                   (the two test stages run side by side, each under the tests limit)
#   memcheck        (correctness) compute-sanitizer memcheck over tools/gpu_sanitize_ops.py
#   racecheck       (correctness) compute-sanitizer racecheck over the same script
#   bench           (benchmark)   bench/bench_gpu.py: condnum against torch.linalg on this GPU,
#                   TF32 off
# A stage that fails or overruns is logged and the next one runs. Written under OUT:
#   summary.md      stage table, the native-kernel verdict, the benchmark tables
#   gpu_check.json  the same as data (tools/gpu_check_report.py)
#   gpu_check.log   every stage's full output
#   bench_gpu.json, bench_gpu.md   the benchmark part alone
# native_cuda_verified (in both) is true only when the CUDA build, tests_native, memcheck
# and racecheck all passed: the evidence for making the native kernels CUDA's default.
#
# Exit status: 0 when every correctness stage passed; 1 when one failed or timed out;
# 2 when there is no CUDA device (checked first, in seconds) or the arguments are wrong.
# --dry-run prints the stages, their limits and commands, checks that the files they use
# exist and that the limits fit the 8 minutes, and runs nothing (no GPU needed).
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default: this GPU's).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
PY="${PYTHON:-python3}"
TOTAL_LIMIT_S=480  # the whole run, 8 minutes
OVERHEAD_S=30      # preflight, report, and each stage's kill grace

dry_run=0
out=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed 's/^# \{0,1\}//; /^set -uo/d'; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg (expected --dry-run or OUT)" >&2; exit 2 ;;
    *) [[ -z "$out" ]] || { echo "gpu_check: one OUT folder, got '$out' and '$arg'" >&2; exit 2; }
       out="$arg" ;;
  esac
done
out="${out:-gpu_check_out}"

OP_TESTS=(python_tests/test_extreme_eigh.py python_tests/test_floored_min.py
          python_tests/test_gram.py python_tests/test_regularizers.py python_tests/test_fuzz.py
          python_tests/test_edge.py python_tests/test_fixed_budget.py
          python_tests/test_regressions.py python_tests/test_second_order.py)
STAGES=(build tests_portable tests_native memcheck racecheck bench)
declare -A KIND=([build]=correctness [tests_portable]=correctness [tests_native]=correctness
                 [memcheck]=correctness [racecheck]=correctness [bench]=benchmark)
declare -A LIMIT=([build]=90 [tests]=150 [memcheck]=30 [racecheck]=30 [bench]=140)
for s in "${!LIMIT[@]}"; do
  var="GPU_CHECK_${s^^}_S"
  LIMIT[$s]="${!var:-${LIMIT[$s]}}"
done
LIMIT[tests_portable]=${LIMIT[tests]}
LIMIT[tests_native]=${LIMIT[tests]}

# pytest-xdist, where installed, spreads each test stage over 4 processes sharing the GPU.
XDIST=""
if "$PY" -c 'import xdist' >/dev/null 2>&1; then XDIST="-n 4"; fi

pytest_cmd() {  # backend selector -> the pytest command line of a test stage
  local k="cuda-$1"
  local files=("${OP_TESTS[@]}")
  if [[ "$1" == native ]]; then k="cuda-native or test_cuda"; files+=(python_tests/test_cuda.py); fi
  echo "$PY -m pytest -q -p no:cacheprovider -rfEs $XDIST ${files[*]} -k '$k'" \
       "--junitxml=\$work/$2.xml"
}

if (( dry_run )); then
  echo "gpu_check --dry-run: stages, limits (s) and commands; nothing is run"
  for s in "${STAGES[@]}"; do
    case "$s" in
      build) cmd="CONDNUM_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -e . -C build-dir=build/gpu-check" ;;
      tests_portable) cmd="$(pytest_cmd portable tests_portable)" ;;
      tests_native) cmd="$(pytest_cmd native tests_native)" ;;
      memcheck|racecheck) cmd="PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool $s --error-exitcode 1 $PY tools/gpu_sanitize_ops.py" ;;
      bench) cmd="$PY bench/bench_gpu.py --out OUT --budget $((LIMIT[bench] - 15))" ;;
    esac
    printf '  %-15s %-12s %4s  %s\n' "$s" "${KIND[$s]}" "${LIMIT[$s]}" "$cmd"
  done
  total=$((LIMIT[build] + LIMIT[tests] + LIMIT[memcheck] + LIMIT[racecheck] + LIMIT[bench]))
  missing=()
  for f in "${OP_TESTS[@]}" python_tests/test_cuda.py tools/gpu_sanitize_ops.py \
           tools/gpu_check_report.py bench/bench_gpu.py bench/bench_eigh.py \
           bench/bench_regularizers.py bench/bench_vit_scale.py; do
    [[ -f "$f" ]] || missing+=("$f")
  done
  if (( ${#missing[@]} )); then echo "gpu_check --dry-run: missing files: ${missing[*]}"; exit 1; fi
  if (( total + OVERHEAD_S > TOTAL_LIMIT_S )); then
    echo "gpu_check --dry-run: limits add up to ${total} s + ${OVERHEAD_S} s, over ${TOTAL_LIMIT_S} s"
    exit 1
  fi
  echo "gpu_check --dry-run: ok: limits ${total} s + ${OVERHEAD_S} s overhead <= ${TOTAL_LIMIT_S} s"
  exit 0
fi

# ------------------------------------------------------------------ preflight: a CUDA device?
if ! probe="$("$PY" -c 'import torch
print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' 2>&1)"; then
  echo "gpu_check: no CUDA device: $PY cannot import torch ($probe)"
  exit 2
fi
read -r torch_version torch_cuda available <<<"$(tail -n 1 <<<"$probe")"
if [[ "$available" != "True" ]]; then
  echo "gpu_check: no CUDA device: torch $torch_version (CUDA $torch_cuda) reports" \
       "torch.cuda.is_available() = False; nothing was run"
  exit 2
fi

mkdir -p "$out" && out="$(cd "$out" && pwd)" || exit 2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log="$out/gpu_check.log"
: >"$log"
: >"$work/stages.tsv"
echo "gpu_check: torch $torch_version, CUDA $torch_cuda, OUT=$out" | tee -a "$log"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$log" 2>&1 || true

record() {  # stage status seconds
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "${KIND[$1]:-support}" "$2" "$3" "${LIMIT[$1]:-}" \
    >>"$work/stages.tsv"
  echo "   $1: $2 (${3} s)" | tee -a "$log"
}

run_stage() {  # stage limit command... ; records passed / failed (exit N) / timed out
  local stage=$1 limit=$2 start=$SECONDS rc status
  shift 2
  echo "== $stage (limit ${limit} s): $*" | tee -a "$log"
  timeout --kill-after=5 "$limit" "$@" >"$work/$stage.log" 2>&1
  rc=$?
  { echo "== $stage output"; cat "$work/$stage.log"; } >>"$log"
  case $rc in
    0) status=passed ;;
    124|137) status="timed out after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  record "$stage" "$status" $((SECONDS - start))
  return $rc
}

# ------------------------------------------------------------------ build
arch="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
build() {  # CONDNUM_CUDA value, build folder
  env CONDNUM_CUDA="$1" TORCH_CUDA_ARCH_LIST="$arch" \
    "$PY" -m pip install -q --no-build-isolation --no-deps -e . -C build-dir="$2"
}
export -f build
export PY arch
native_built=0
if run_stage build "${LIMIT[build]}" bash -c 'build ON build/gpu-check &&
    "$PY" -c "import torch, condnum, sys; sys.exit(0 if condnum.built_with_cuda() else 1)"'; then
  native_built=1
else
  # Without the CUDA kernels the portable path still serves CUDA tensors: test that.
  LIMIT[build_fallback]=120
  run_stage build_fallback 120 bash -c 'build OFF build/gpu-check-nocuda'
fi

# ------------------------------------------------------------------ tests
# The two backends side by side: each run is mostly Python between small kernels.
run_stage tests_portable "${LIMIT[tests]}" bash -c "work=$work; $(pytest_cmd portable tests_portable)" &
if (( native_built )); then
  run_stage tests_native "${LIMIT[tests]}" bash -c "work=$work; $(pytest_cmd native tests_native)" &
else
  record tests_native "skipped: no native CUDA build" 0
fi
wait

# ------------------------------------------------------------------ compute-sanitizer
sanitizer=""
if command -v compute-sanitizer >/dev/null 2>&1; then
  sanitizer="$(command -v compute-sanitizer)"
else
  # The toolkit folder: CUDA_HOME, or the folder nvcc reports it runs from (_HERE_).
  here="$("${NVCC:-nvcc}" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
          sed -n 's/^#\$ _HERE_=//p' | head -n 1)"
  for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" "${here%/bin}" /usr/local/cuda; do
    for cand in "$home/bin/compute-sanitizer" "$home/compute-sanitizer/compute-sanitizer"; do
      if [[ -n "$home" && -x "$cand" ]]; then sanitizer="$cand"; break 2; fi
    done
  done
fi
for tool in memcheck racecheck; do
  if (( ! native_built )); then
    record "$tool" "skipped: no native CUDA build" 0
  elif [[ -z "$sanitizer" ]]; then
    record "$tool" "skipped: compute-sanitizer not found (PATH, CUDA_HOME, nvcc's toolkit)" 0
  else
    # No caching allocator: every tensor its own cudaMalloc, so memcheck sees its bounds.
    run_stage "$tool" "${LIMIT[$tool]}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$sanitizer" --tool "$tool" --error-exitcode 1 "$PY" tools/gpu_sanitize_ops.py
  fi
done

# ------------------------------------------------------------------ benchmarks
run_stage bench "${LIMIT[bench]}" "$PY" bench/bench_gpu.py --out "$out" \
  --budget $((LIMIT[bench] - 15))

# ------------------------------------------------------------------ report
"$PY" tools/gpu_check_report.py --stages "$work/stages.tsv" --junit "$work" --out "$out" \
  --native-built "$native_built" | tee -a "$log"
exit "${PIPESTATUS[0]}"
