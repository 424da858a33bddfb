"""The hosted deployment's start command, run as the Docker image runs it (no Docker engine here: the image's build
step is `make setup`, which CI has just run, and its command is deploy/start.sh, which this test runs)."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, free_port, wait_for_health

pytestmark = pytest.mark.slow


def test_dockerfile_builds_with_make_setup_and_starts_with_deploy_start():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "RUN make setup" in lines
    assert 'CMD ["bash", "deploy/start.sh"]' in lines
    assert any("HF_HUB_OFFLINE=1" in line for line in lines), "the image must run without network"


@contextlib.contextmanager
def _served(command: list[str], *, cwd: Path, env: dict, log_name: str, port: int, output_dir) -> Iterator[str]:
    """Start the dashboard with `command`, wait until it is healthy, yield its URL, stop it."""
    log = open(output_dir / log_name, "w")
    process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, process, log_name)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def _first_map(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.locator(".js-plotly-plot .gtitle", has_text="Layer 0, head 0").wait_for(timeout=120_000)
    return page


def test_hosted_start_script_serves_the_app(browser, output_dir):
    port = free_port()
    environment = {**os.environ, "PORT": str(port), "ADDRESS": "127.0.0.1", "ATTNSCOPE_ALLOWED_MODELS": ""}
    environment.pop("ATTNSCOPE_HOSTED", None)  # the script turns hosted mode on by itself
    with _served(["bash", str(ROOT / "deploy" / "start.sh")], cwd=Path("/"), env=environment,
                 log_name="streamlit-deploy.log", port=port, output_dir=output_dir) as url:
        page = _first_map(browser, url)
        page.get_by_text("Hosted demo: texts are cut at 1024 tokens").wait_for(timeout=30_000)
        page.close()


def test_attnscope_app_command_serves_the_dashboard(browser, output_dir, tmp_path):
    """`attnscope app` (the console script) starts the dashboard from any folder, as an installed package would."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "attnscope"), "app", "--port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    with _served(command, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, log_name="attnscope-app.log",
                 port=port, output_dir=output_dir) as url:
        _first_map(browser, url).close()
