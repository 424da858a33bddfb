"""AppTest runs the app in this process, under this process's Streamlit config: with the upload limit that
`attnscope app` and deploy/start.sh give a hosted server, as a hosted deployment must be started (a hosted app under
Streamlit's default 200 MB refuses to serve; tests/hosted/test_upload_limit_rows.py checks that refusal)."""

import pytest
from streamlit import config

from attnscope.hosting import policy_from_env

HOSTED_UPLOAD_MB = policy_from_env({"ATTNSCOPE_HOSTED": "1"}).max_upload_mb


@pytest.fixture(autouse=True)
def streamlit_upload_limit():
    """server.maxUploadSize as deploy/start.sh sets it, for the test; Streamlit's value again afterwards."""
    before = config.get_option("server.maxUploadSize")
    config.set_option("server.maxUploadSize", HOSTED_UPLOAD_MB)
    yield HOSTED_UPLOAD_MB
    config.set_option("server.maxUploadSize", before)
