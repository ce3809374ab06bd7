#!/usr/bin/env bash
# Create .venv in the project root and install ltau with its demo (mace + lightning), ray, test
# and docs extras. torch is pinned first to the CPU build 2.13.0: a looser requirement can pull a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[demo,ray,test,docs]"
echo "ltau installed in $(pwd)/.venv"
