"""Uploads beyond the hosted limit (issue 26): the server's own limit, however the hosted app is started, and the
reverse proxy's bounds on what the app cannot bound itself.

| case | what was tried | what happened before |
|---|---|---|
| plain `streamlit run` | hosted, `streamlit run app/streamlit_app.py` | 19 MB uploads stored; 2 MB only logged |
| `attnscope app` | hosted, `attnscope app` | the shipped 20 MB limit |
| made-up file ids | 100 PUTs of 1.9 MB to file ids no page takes | +182 MiB, not given back when the session closed |
"""

import re
import tomllib
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from attnscope.app import launch
from attnscope.hosting import policy_from_env

ROOT = Path(__file__).resolve().parents[2]
ENTRY = str(ROOT / "app" / "streamlit_app.py")
HOSTED = policy_from_env({"ATTNSCOPE_HOSTED": "1"})


def _shipped_upload_mb() -> int:
    """The upload limit a plain `streamlit run app/streamlit_app.py` reads (the config file beside the script)."""
    return tomllib.loads(launch.CONFIG.read_text())["server"]["maxUploadSize"]


@pytest.mark.slow
def test_a_hosted_app_started_with_a_larger_upload_limit_refuses_to_serve_saying_how_to_start_it(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    shipped = _shipped_upload_mb()
    assert shipped > HOSTED.max_upload_mb
    config.set_option("server.maxUploadSize", shipped)  # as a plain `streamlit run` starts it (conftest restores it)
    at = AppTest.from_file(ENTRY, default_timeout=120).switch_page("app_pages/head_atlas.py").run()
    assert not at.exception
    assert [re.sub(r"\\(.)", r"\1", e.value) for e in at.error] == [
        f"attnscope is misconfigured: Streamlit's server.maxUploadSize is {shipped} MB but ATTNSCOPE_MAX_UPLOAD_MB is "
        f"{HOSTED.max_upload_mb}, so the server would store uploads up to {shipped} MB; start it with `attnscope app` "
        f"or deploy/start.sh, which pass the limit, or add `--server.maxUploadSize {HOSTED.max_upload_mb}` to "
        "`streamlit run`."]
    assert not at.title and not at.file_uploader, "a page was served"

    config.set_option("server.maxUploadSize", HOSTED.max_upload_mb)  # as deploy/start.sh starts it
    at = AppTest.from_file(ENTRY, default_timeout=120).switch_page("app_pages/head_atlas.py").run()
    assert not at.exception and not at.error and [t.value for t in at.title] == ["Head atlas"]


def test_attnscope_app_started_hosted_gives_streamlit_the_hosted_upload_limit(monkeypatch):
    monkeypatch.setenv("ATTNSCOPE_HOSTED", "1")
    monkeypatch.setenv("ATTNSCOPE_MAX_UPLOAD_MB", "3")
    flags = launch.streamlit_command(port=8600, extra=["--server.maxUploadSize", "9"])[5:]
    shipped = flags.index(f"--server.maxUploadSize={_shipped_upload_mb()}")
    assert flags.index("--server.maxUploadSize=3") > shipped  # the last of a repeated flag counts
    assert flags[-3:] == ["--server.port=8600", "--server.maxUploadSize", "9"]  # the user's options still win

    monkeypatch.delenv("ATTNSCOPE_HOSTED")
    assert "--server.maxUploadSize=3" not in launch.streamlit_command(port=8600)


def test_the_hosted_start_script_gives_streamlit_the_hosted_upload_limit():
    start = (ROOT / "deploy" / "start.sh").read_text()
    assert f'ATTNSCOPE_MAX_UPLOAD_MB="${{ATTNSCOPE_MAX_UPLOAD_MB:-{HOSTED.max_upload_mb}}}"' in start
    assert '--server.maxUploadSize "$ATTNSCOPE_MAX_UPLOAD_MB"' in start


def _directives(block: str) -> dict[str, list[str]]:
    """An nginx block's own directives (the blocks inside it left out; comments already removed): name to values."""
    found: dict[str, list[str]] = {}
    for statement in re.sub(r"\{[^{}]*\}", ";", block).split(";"):
        words = statement.split()
        if words:
            found.setdefault(words[0], []).append(" ".join(words[1:]))
    return found


def _bytes(size: str) -> int:
    """An nginx size ("64k", "2m") in bytes."""
    number, unit = re.fullmatch(r"(\d+)([kKmM]?)", size).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20}[unit.lower()]


def test_the_reverse_proxy_bounds_uploads_to_file_ids_no_page_takes():
    """deploy/nginx.conf caps every request body (an upload at one hosted file and its multipart headers) and the
    rate of uploads per address; the README points to it where it says what the app cannot bound."""
    text = re.sub(r"#[^\n]*", "", (ROOT / "deploy" / "nginx.conf").read_text())
    upload = re.search(r"location /_stcore/upload_file/ \{([^{}]*)\}", text)
    assert upload, "deploy/nginx.conf has no block for Streamlit's upload endpoint"
    inside = _directives(upload.group(1))
    body = _bytes(inside["client_max_body_size"][0])
    assert HOSTED.max_upload_bytes + 1024 <= body < HOSTED.max_upload_mb * 2**20 + 2**20
    zone = re.search(r"zone=(\w+)", inside["limit_req"][0]).group(1)
    assert re.search(rf"limit_req_zone \$binary_remote_addr zone={zone}:\w+ rate=\d+r/[ms];", text)
    server = re.search(r"server \{(.*)\}", text, re.S).group(1)
    assert _bytes(_directives(server)["client_max_body_size"][0]) <= 64 * 2**10  # no other route takes a body
    readme = (ROOT / "README.md").read_text()
    assert "`deploy/nginx.conf`" in readme and "client_max_body_size" in readme
