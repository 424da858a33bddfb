"""A hosted server as the Docker image starts it (deploy/start.sh, hosted defaults), with its process id for memory
readings, Debian's chromium (the e2e fixture), and AppTest under the upload limit deploy/start.sh gives Streamlit
(tests/app/conftest.py)."""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app.conftest import streamlit_upload_limit  # noqa: F401  (a fixture: AppTest as deploy/start.sh serves)
from tests.e2e.conftest import ROOT, browser, free_port, wait_for_health  # noqa: F401  (browser is a fixture)


@dataclass
class HostedServer:
    url: str
    pid: int

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (VmHWM), in MB."""
        return _status_kb(self.pid, "VmHWM") / 1024

    def rss_mb(self) -> float:
        return _status_kb(self.pid, "VmRSS") / 1024


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} missing from /proc/{pid}/status")


@pytest.fixture(scope="module")
def hosted(output_dir):
    port = free_port()
    log_name = "streamlit-hosted.log"
    log = open(output_dir / log_name, "w")
    environment = {**os.environ, "PORT": str(port), "ADDRESS": "127.0.0.1", "ATTNSCOPE_ALLOWED_MODELS": "",
                   "PYTHONUNBUFFERED": "1"}
    for name in ("ATTNSCOPE_HOSTED", "ATTNSCOPE_MAX_TOKENS", "ATTNSCOPE_MAX_UPLOAD_MB", "ATTNSCOPE_MAX_FILES",
                 "ATTNSCOPE_MAX_PROMPTS", "ATTNSCOPE_MAX_BATCH"):
        environment.pop(name, None)  # the hosted defaults, as the image runs them
    process = subprocess.Popen(["bash", str(ROOT / "deploy" / "start.sh")], cwd=Path("/"), stdout=log,
                               stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(url, process, log_name)
    yield HostedServer(url=url, pid=process.pid)
    process.terminate()
    process.wait(timeout=20)
    log.close()
