"""Every Python block of the README runs as written, in order, on the packaged model."""

import os
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_python_block_of_the_readme_runs(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    namespace = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples write files where they run
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "Attention sinks" in printed
    assert (tmp_path / "stats.parquet").exists()
    assert "L18H6" in printed and (tmp_path / "atlas" / "atlas.parquet").exists()  # the head atlas example
