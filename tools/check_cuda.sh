#!/usr/bin/env bash
# Compile-checks every csrc/cuda/*.cu with nvcc for sm_90 (H100/H200) and sm_80 (A100),
# warnings on and treated as errors, one file at a time, into a temporary directory.
# Needs no GPU and no torch: the kernels are plain CUDA C++ (raw pointers + a stream).
# The torch binding csrc/cuda/ops_cuda.cpp is built only by a CUDA build (CMakeLists.txt,
# CONDNUM_CUDA); here it is syntax-checked with the host compiler against the installed
# torch's headers (a CPU wheel ships the c10/cuda ones) when torch is importable.
#
# Usage: tools/check_cuda.sh [file.cu ...]     (default: all of csrc/cuda/*.cu + ops_cuda.cpp)
# Environment: NVCC (default: nvcc on PATH, then $CUDA_HOME/bin/nvcc),
#              CONDNUM_CUDA_ARCHS (default "80 90"), NVCC_EXTRA_FLAGS.
# Exit status: 0 when everything compiles (or nvcc is missing: skipped with a message),
# 1 when a file fails.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc_bin="${NVCC:-}"
if [[ -z "$nvcc_bin" ]]; then
  if command -v nvcc >/dev/null 2>&1; then
    nvcc_bin="$(command -v nvcc)"
  elif [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
    nvcc_bin="$CUDA_HOME/bin/nvcc"
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    nvcc_bin=/usr/local/cuda/bin/nvcc
  fi
fi
if [[ -z "$nvcc_bin" ]]; then
  echo "check_cuda: SKIPPED: nvcc not found (set NVCC or CUDA_HOME to compile-check csrc/cuda)"
  exit 0
fi

if [[ $# -gt 0 ]]; then
  files=("$@")
else
  shopt -s nullglob
  files=("$root"/csrc/cuda/*.cu)
  shopt -u nullglob
fi
if [[ ${#files[@]} -eq 0 ]]; then
  echo "check_cuda: no .cu files under csrc/cuda"
  exit 0
fi

gencode=()
for arch in ${CONDNUM_CUDA_ARCHS:-80 90}; do
  gencode+=("-gencode" "arch=compute_${arch},code=sm_${arch}")
done
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

version="$("$nvcc_bin" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
echo "check_cuda: $nvcc_bin (CUDA $version), archs: ${CONDNUM_CUDA_ARCHS:-80 90}"
failed=()
for f in "${files[@]}"; do
  name="$(basename "$f" .cu)"
  start=$SECONDS
  # Warnings of the host compiler and of nvcc's front end are errors. Register spills are
  # reported (from --resource-usage), not fatal: the small ones in cold code (the
  # convergence checks' non-inlined calls) cost nothing; a spill in a hot loop should be
  # fixed (see the kernel names in the notes).
  # shellcheck disable=SC2086
  if "$nvcc_bin" -c -std=c++20 -O3 "${gencode[@]}" -I"$root/csrc" \
      -Xcompiler -Wall,-Wextra,-Werror -Werror all-warnings --resource-usage -lineinfo \
      ${NVCC_EXTRA_FLAGS:-} -o "$tmp/$name.o" "$f" >"$tmp/$name.log" 2>&1; then
    echo "  ok    $(basename "$f")  ($((SECONDS - start)) s)"
    # Kernel/function names and their spills, one line each ("sm_XX name: N bytes").
    awk '/Compiling entry function|Function properties for/ {
           match($0, /_Z[A-Za-z0-9_]+/); fn = substr($0, RSTART, RLENGTH)
           if ($0 ~ /for .sm_[0-9]+./) { match($0, /sm_[0-9]+/); arch = substr($0, RSTART, RLENGTH) } }
         /bytes spill stores/ { split($0, a, " "); for (i = 1; i <= NF; ++i) if ($i == "spill" && $(i+1) == "stores,") n = $(i-2);
           if (n + 0 > 0) printf "        note: %s %s spills %s bytes\n", arch, fn, n }' "$tmp/$name.log" |
      sort -u | { if command -v c++filt >/dev/null 2>&1; then c++filt; else cat; fi; }
  else
    echo "  FAIL  $(basename "$f")  ($((SECONDS - start)) s)"
    sed 's/^/        /' "$tmp/$name.log"
    failed+=("$(basename "$f")")
  fi
done
# The binding: syntax only (linking needs a CUDA build of torch).
binding="$root/csrc/cuda/ops_cuda.cpp"
if [[ $# -eq 0 && -f "$binding" ]]; then
  cuda_inc=""
  for cand in "${CUDA_HOME:-}/include" "$(dirname "$(readlink -f "$nvcc_bin")")/../include" \
              /usr/local/cuda/include; do
    if [[ -f "$cand/cuda_runtime_api.h" ]]; then cuda_inc="$cand"; break; fi
  done
  torch_inc="$(${PYTHON:-python3} -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))' 2>/dev/null || true)"
  if [[ -z "$torch_inc" || ! -f "$torch_inc/c10/cuda/CUDAGuard.h" ]]; then
    echo "  skip  ops_cuda.cpp  (torch with c10/cuda headers not importable by ${PYTHON:-python3})"
  elif [[ -z "$cuda_inc" ]]; then
    echo "  skip  ops_cuda.cpp  (cuda_runtime_api.h not found)"
  else
    start=$SECONDS
    # C10_USING_CUSTOM_GENERATED_MACROS: CPU wheels lack c10/cuda/impl/cuda_cmake_macros.h.
    if "${CXX:-c++}" -std=c++20 -fsyntax-only -Wall -Wextra -Wno-unused-parameter -Werror \
        -DC10_USING_CUSTOM_GENERATED_MACROS -DCONDNUM_WITH_CUDA=1 \
        -isystem "$torch_inc" -isystem "$torch_inc/torch/csrc/api/include" -isystem "$cuda_inc" \
        -I"$root/csrc" "$binding" >"$tmp/ops_cuda.log" 2>&1; then
      echo "  ok    ops_cuda.cpp  (syntax, $((SECONDS - start)) s)"
    else
      echo "  FAIL  ops_cuda.cpp  (syntax, $((SECONDS - start)) s)"
      sed 's/^/        /' "$tmp/ops_cuda.log"
      failed+=("ops_cuda.cpp")
    fi
  fi
fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "check_cuda: FAILED: ${failed[*]}"
  exit 1
fi
echo "check_cuda: all ${#files[@]} CUDA sources compile for ${CONDNUM_CUDA_ARCHS:-80 90}"
