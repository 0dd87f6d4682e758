#!/usr/bin/env bash
# The main demo: train tiny SATFormer and baselines on the embedded corpus; print the table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m recipes.experiments.demo "$@"
