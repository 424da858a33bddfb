#!/usr/bin/env bash
# Start attnscope as the Docker image does: hosted mode, no network, all interfaces, port $PORT (default 8501).
# The CI runs this same script (tests/e2e/test_deploy.py) because no Docker engine is available there.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATTNSCOPE_HOSTED="${ATTNSCOPE_HOSTED:-1}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec .venv/bin/python -m streamlit run app/streamlit_app.py --server.port "${PORT:-8501}" \
    --server.address "${ADDRESS:-0.0.0.0}" --server.headless true
