#!/usr/bin/env bash
# Installs condnum and everything its tests need into the environment of `python3` on PATH
# (activate a virtual environment first): a pinned torch, the build tools, then condnum
# itself, compiled from csrc/ against that torch, with its dependencies and test extras.
#
# Usage: bash tools/install.sh [PIP_OPTION ...]   (passed to the pip command that builds condnum)
# Environment:
#   PYTHON             the interpreter to install into (default: python3)
#   CONDNUM_TORCH      the torch requirement(s) (default: torch==2.13.0, a CPU build). Always
#                      pinned: left to itself pip picks the newest CUDA build, several GB.
#   CONDNUM_EXTRAS     extras to install (default: test; e.g. "test,deep" for timm/torchvision)
#   CONDNUM_BUILD_DIR  scikit-build-core's build folder; give each torch build its own
#   CONDNUM_EDITABLE   1 (default): an editable install of this checkout; 0: a regular one
#   CONDNUM_CUDA       ON|OFF|AUTO: build the CUDA kernels (read by the build itself)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-python3}"
read -r -a torch_spec <<<"${CONDNUM_TORCH:-torch==2.13.0}"

"$py" -m pip install -q "${torch_spec[@]}"
# --no-build-isolation builds against the torch above, so the build tools come first.
"$py" -m pip install -q "scikit-build-core>=0.10" ninja "cmake>=3.26"

opts=(--no-build-isolation "$@")
if [[ -n "${CONDNUM_BUILD_DIR:-}" ]]; then
  opts+=(-C "build-dir=$CONDNUM_BUILD_DIR")
fi
target="$root[${CONDNUM_EXTRAS:-test}]"
if [[ "${CONDNUM_EDITABLE:-1}" == 1 ]]; then
  opts+=(-e)
fi
"$py" -m pip install -q "${opts[@]}" "$target"
