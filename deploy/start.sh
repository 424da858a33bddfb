#!/usr/bin/env bash
# Start attnscope as the Docker image does: hosted mode, no network, all interfaces, port $PORT (default 8501).
# Streamlit's own upload limit is set to the hosted one (ATTNSCOPE_MAX_UPLOAD_MB, default 2), so the server refuses a
# larger file while it streams in instead of reading it first (a hosted app started with a larger limit refuses to
# serve). What Streamlit cannot bound itself, uploads to file ids no page takes, a reverse proxy bounds:
# deploy/nginx.conf, with ADDRESS=127.0.0.1 so that only the proxy reaches the app. The CI runs this same script
# (tests/e2e/test_deploy.py and tests/hosted/) because no Docker engine is available there.
set -euo pipefail
cd "$(dirname "$0")/.."
export ATTNSCOPE_HOSTED="${ATTNSCOPE_HOSTED:-1}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export ATTNSCOPE_MAX_UPLOAD_MB="${ATTNSCOPE_MAX_UPLOAD_MB:-2}"
exec .venv/bin/python -m streamlit run app/streamlit_app.py --server.port "${PORT:-8501}" \
    --server.address "${ADDRESS:-0.0.0.0}" --server.headless true \
    --server.maxUploadSize "$ATTNSCOPE_MAX_UPLOAD_MB"
