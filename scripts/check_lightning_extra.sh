#!/usr/bin/env bash
# CI: the 'lightning' extra alone (no mace, no ASE) runs the tabular demo and the Lightning
# example. Creates .venv-lightning; torch is pinned first to the CPU build 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-lightning
.venv-lightning/bin/python -m pip install --quiet --upgrade pip
.venv-lightning/bin/python -m pip install --quiet "torch==2.13.0"
.venv-lightning/bin/python -m pip install --quiet -e ".[lightning]"
for absent in ase mace e3nn; do
    if .venv-lightning/bin/python -c "import $absent" 2>/dev/null; then
        echo "the lightning extra installed $absent" >&2
        exit 1
    fi
done
out=$(mktemp -d)
.venv-lightning/bin/ltau -q demo --task tabular --epochs 30 --output-dir "$out/tabular"
test -s "$out/tabular/report.html" && test -s "$out/tabular/metrics.json"
.venv-lightning/bin/python examples/lightning_regression.py --epochs 5 > "$out/example.json"
tail -n 1 "$out/example.json" | .venv-lightning/bin/python -c "import json, sys; json.loads(sys.stdin.read())"
rm -rf "$out"
echo "the lightning extra alone runs the tabular demo and the Lightning example"
