#!/usr/bin/env bash
# The test suite: shape-checked (jaxtyping + beartype) pytest run on 2 workers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VALUE_ROUTING_TYPECHECK=1
exec .venv/bin/python -m pytest -n 2 -q "$@"
