"""The hosted deployment: the Dockerfile read instruction by instruction (no Docker engine here, so the image is
never built: what can be checked is that its steps are the ones the build and the start need, in an order that
works), and its start command run as the image runs it (the image's build step is `make setup`, which CI has just
run, and its command is deploy/start.sh, which the browser tests here run)."""

import contextlib
import fnmatch
import json
import os
import posixpath
import re
import shlex
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, free_port, wait_for_health

CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass
class _Step:
    """One Dockerfile instruction and the build state it runs in."""

    keyword: str  # FROM, RUN, COPY, ... in capitals
    arguments: str  # the rest of the instruction, continuation lines joined
    env: dict  # ENV in effect, this instruction's own included
    workdir: str
    user: str


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) in order: comment lines dropped (also inside a continued instruction), lines ending in a
    backslash joined to the next."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def _env_pairs(arguments: str) -> dict:
    """ENV key=value ... (values may be quoted or empty), or the legacy one-variable form ENV key value."""
    words = shlex.split(arguments)
    if "=" not in words[0]:
        return {words[0]: arguments.split(None, 1)[1]}
    return dict(word.split("=", 1) for word in words)


def _steps(text: str) -> list[_Step]:
    steps, env, workdir, user = [], {}, "/", "root"
    for keyword, arguments in _instructions(text):
        if keyword == "ENV":
            env = {**env, **_env_pairs(arguments)}
        elif keyword == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, arguments))
        elif keyword == "USER":
            user = arguments.split(":")[0]
        steps.append(_Step(keyword, arguments, env, workdir, user))
    return steps


def _flags_and_words(arguments: str) -> tuple[dict, list[str]]:
    """COPY/ADD arguments: ({flag: value}, [sources..., destination])."""
    words = shlex.split(arguments)
    flags = dict(word[2:].partition("=")[::2] for word in words if word.startswith("--"))
    return flags, [word for word in words if not word.startswith("--")]


def _commands(arguments: str) -> list[list[str]]:
    """A shell-form RUN as its commands (split at &&, ; and ||), each as words."""
    return [shlex.split(part) for part in re.split(r"&&|\|\||;", arguments) if part.strip()]


def _index_of_make_setup(steps: list[_Step]) -> int:
    runs = [i for i, step in enumerate(steps) if step.keyword == "RUN"
            and ["make", "setup"] in _commands(step.arguments)]
    assert len(runs) == 1, "the image must run `make setup` once, as `make run` and CI set up"
    return runs[0]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns leave `path` (or a folder above it) out of the build context; the last
    matching pattern wins, ! re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        include = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            matches = any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        else:
            matches = any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)
        if matches:
            ignored = not include
    return ignored


def _dockerignore() -> list[str]:
    path = ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_builds_the_app_with_make_setup():
    """One python base image the package supports; make installed and the repository copied into the working
    folder before `make setup`; torch from PyTorch's CPU index during it; the cache the models are prepared into
    is the one the app reads at run time; everything owned by the user the app runs as."""
    steps = _steps((ROOT / "Dockerfile").read_text())
    bases = [step.arguments for step in steps if step.keyword == "FROM"]
    assert len(bases) == 1, f"one stage expected, got FROM {bases}"
    version = re.fullmatch(r"python:(\d+)\.(\d+)[-.\w]*", bases[0])
    assert version, f"the base image must be an official python image, got {bases[0]}"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=\s*(\d+)\.(\d+)", requires).groups())
    assert tuple(map(int, version.groups())) >= minimum, f"{bases[0]} is older than requires-python {requires}"

    setup = _index_of_make_setup(steps)
    assert re.search(r"^setup:", (ROOT / "Makefile").read_text(), re.M), "the Makefile has no setup target"
    before = steps[:setup]
    installs_make = any(command[:2] == ["apt-get", "install"] and "make" in command[2:]
                        for step in before if step.keyword == "RUN" for command in _commands(step.arguments))
    assert installs_make, "python:*-slim has no make: apt-get install it before `RUN make setup`"
    run_setup = steps[setup]
    copies = [(_flags_and_words(step.arguments), step) for step in before if step.keyword in ("COPY", "ADD")]
    whole = [(flags, step) for (flags, words), step in copies if words[:-1] == ["."]
             and posixpath.normpath(posixpath.join(step.workdir, words[-1])) == run_setup.workdir]
    assert whole, f"the repository (.) must be copied into {run_setup.workdir}, where `make setup` runs, before it"
    assert run_setup.workdir != "/", "make setup needs a WORKDIR of its own"

    runtime = steps[-1]
    assert runtime.user not in ("root", "0"), "the app must not run as root"
    assert run_setup.user == runtime.user, "make setup must run as the app's user, who then owns .venv and the cache"
    assert whole[-1][0].get("chown", "").split(":")[0] == runtime.user, "the copied files must belong to the user"
    cache = run_setup.env.get("ATTNSCOPE_CACHE")
    assert cache and runtime.env.get("ATTNSCOPE_CACHE") == cache, \
        "ATTNSCOPE_CACHE must be set before make setup and unchanged after: the prepared models are read from it"
    assert CPU_TORCH_INDEX in run_setup.env.get("PIP_EXTRA_INDEX_URL", "").split(), \
        "torch must come from PyTorch's CPU index (PyPI's Linux wheel pulls the CUDA libraries)"


def test_dockerfile_runs_deploy_start_in_hosted_mode_without_network():
    """The image's command is deploy/start.sh under bash from the copied repository; at run time the hub is
    offline, hosted mode is on with limits the app accepts, and the port exposed is the port the app listens on."""
    from attnscope.hosting import policy_from_env

    steps = _steps((ROOT / "Dockerfile").read_text())
    assert not [step for step in steps if step.keyword == "ENTRYPOINT"], "an ENTRYPOINT would wrap the command"
    commands = [step for step in steps if step.keyword == "CMD"]
    assert commands, "the image needs a CMD"
    command = commands[-1]
    words = json.loads(command.arguments)  # exec form: no sh -c around it, so after start.sh's exec streamlit is
    # PID 1 and gets docker stop's SIGTERM
    assert words[0] == "bash" and len(words) == 2, f"CMD must be [\"bash\", script], got {words}"
    setup = steps[_index_of_make_setup(steps)]
    script = posixpath.normpath(posixpath.join(command.workdir, words[1]))
    assert script.startswith(setup.workdir + "/"), f"{script} is not inside the copied repository"
    relative = posixpath.relpath(script, setup.workdir)
    assert relative == "deploy/start.sh" and (ROOT / relative).is_file()
    assert not _ignored(relative, _dockerignore()), f".dockerignore leaves {relative} out of the image"

    env = steps[-1].env
    assert env.get("HF_HUB_OFFLINE") == "1", "the image must run without network"
    policy = policy_from_env(env)  # raises PolicyError on a limit the app cannot read
    assert policy.hosted, f"ATTNSCOPE_HOSTED={env.get('ATTNSCOPE_HOSTED')!r} does not turn hosted mode on"
    exposed = {word.split("/")[0] for step in steps if step.keyword == "EXPOSE" for word in step.arguments.split()}
    start = (ROOT / relative).read_text()
    default_port = re.search(r'--server\.port "\$\{PORT:-(\d+)\}"', start)
    assert default_port, "deploy/start.sh must listen on $PORT"
    assert exposed == {env.get("PORT", default_port.group(1))}, f"EXPOSE {exposed} is not the port the app uses"
    assert env.get("ADDRESS", "0.0.0.0") == "0.0.0.0", "in a container the app must listen on every interface"


def test_dockerignore_keeps_what_make_setup_reads_and_drops_the_host_venv():
    """The build context holds the Makefile, what its setup target depends on, the packages and the start script;
    a host .venv copied in would make `test -x .venv/bin/python` skip building the image's own."""
    makefile = (ROOT / "Makefile").read_text()
    prerequisites = re.search(r"^\$\(APP_STAMP\):(.*)$", makefile, re.M)
    assert prerequisites, "the Makefile's app stamp rule moved; update this test"
    needed = ["Makefile", *prerequisites.group(1).split(), "README.md", "deploy/start.sh"]
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    needed += [f"{folder}/__init__.py" for folder in package_dirs.values()]
    patterns = _dockerignore()
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not _ignored(path, patterns), f".dockerignore leaves {path} out of the build context"
    assert _ignored(".venv/bin/python", patterns), ".dockerignore must leave the host's .venv out"


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


@pytest.mark.slow
def test_hosted_start_script_serves_the_app(browser, output_dir):
    port = free_port()
    environment = {**os.environ, "PORT": str(port), "ADDRESS": "127.0.0.1", "ATTNSCOPE_ALLOWED_MODELS": ""}
    environment.pop("ATTNSCOPE_HOSTED", None)  # the script turns hosted mode on by itself
    with _served(["bash", str(ROOT / "deploy" / "start.sh")], cwd=Path("/"), env=environment,
                 log_name="streamlit-deploy.log", port=port, output_dir=output_dir) as url:
        page = _first_map(browser, url)
        page.get_by_text("Hosted demo: texts are cut at 1024 tokens").wait_for(timeout=30_000)
        page.close()


@pytest.mark.slow
def test_attnscope_app_command_serves_the_dashboard(browser, output_dir, tmp_path):
    """`attnscope app` (the console script) starts the dashboard from any folder, as an installed package would."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "attnscope"), "app", "--port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
    with _served(command, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"}, log_name="attnscope-app.log",
                 port=port, output_dir=output_dir) as url:
        _first_map(browser, url).close()
    with pytest.raises(ConnectionRefusedError):  # SIGTERM to `attnscope app` stopped the server, not just a launcher
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
