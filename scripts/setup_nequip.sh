#!/usr/bin/env bash
# Create .venv-nequip in the project root and install ltau with its nequip and test extras.
# NequIP 0.19 needs e3nn 0.6 while mace-torch pins e3nn 0.4.4, so NequIP lives in its own venv.
# torch is pinned first to the CPU build 2.13.0: a looser requirement can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-nequip
.venv-nequip/bin/python -m pip install --quiet --upgrade pip
.venv-nequip/bin/python -m pip install --quiet "torch==2.13.0"
.venv-nequip/bin/python -m pip install --quiet -e ".[nequip,test]"
echo "ltau installed in $(pwd)/.venv-nequip"
