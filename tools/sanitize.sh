#!/usr/bin/env bash
# Builds the C++ kernels with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option CONDNUM_SANITIZE) into a throwaway venv and runs the op-level tests
# under it. A separate venv is needed: an editable install's import hook would
# otherwise shadow the sanitized module.
#
# Usage: bash tools/sanitize.sh [pytest args]     (default: the op-level test files)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CONDNUM_SANITIZE_VENV:-/tmp/condnum-sanitize-venv}"

python3 -m venv "$venv"
PYTHON="$venv/bin/python" CONDNUM_EDITABLE=0 CONDNUM_BUILD_DIR="$root/build/sanitize" \
  bash "$root/tools/install.sh" \
  -C cmake.define.CONDNUM_SANITIZE=address,undefined -C cmake.build-type=RelWithDebInfo

# The sanitizer runtimes must come first; leaks are not checked (CPython keeps its
# allocations alive by design); any UBSan report aborts the run.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The solvers' own product and Cholesky-solve kernels, whatever this CPU would pick (torch's
# BLAS has no code of ours to check).
export CONDNUM_MATVEC=own
cd "$root/python_tests"  # not the repository root: import the installed, sanitized package
if [ $# -eq 0 ]; then  # the native kernels only: the portable path has no C++ to sanitize
  set -- test_gram.py test_extreme_eigh.py test_floored_min.py test_regularizers.py \
    test_hardening.py test_fuzz.py test_regressions.py test_matvec.py test_cholesky_solve.py \
    -k "not portable"
fi
"$venv/bin/pytest" -q -p no:cacheprovider "$@"
