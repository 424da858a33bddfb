"""Start the dashboard: the one `streamlit run` command behind `attnscope app` and `make run`.

The dashboard's Streamlit settings (upload limit, error details, theme, headless mode) live in one file that ships
inside the package, beside the entry script: app/.streamlit/config.toml. Streamlit's documented config files are the
user's global one and the one in the folder it is started from, so an installed attnscope started from anywhere else
would run with Streamlit's defaults (200 MB uploads, full tracebacks in the browser). The launcher therefore passes
every setting of that file as a command-line flag, which Streamlit ranks above every config file; options given
after them (`attnscope app --server.maxUploadSize 2`) still win, since the last of a repeated flag counts. Streamlit
1.67 also reads a `.streamlit/config.toml` beside the main script, so `streamlit run app/streamlit_app.py` (the
end-to-end tests, deploy/start.sh) gets the same file.

In hosted mode (ATTNSCOPE_HOSTED) the launcher also passes the hosting policy's upload limit (ATTNSCOPE_MAX_UPLOAD_MB,
2 MB by default) after the shipped 20 MB, as deploy/start.sh does: Streamlit stores an upload before any page sees
it, and a hosted app started with a larger limit refuses to serve (attnscope.app.common.check_deployment).

Streamlit is imported by the command it starts, never here: the launcher only checks that it is installed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "streamlit_app.py"
CONFIG = SCRIPT.parent / ".streamlit" / "config.toml"


class StreamlitMissing(RuntimeError):
    """The dashboard's extra is not installed; the message says how to install it."""


def settings_flags(config: Path = CONFIG) -> list[str]:
    """Every option of a Streamlit config file as a `streamlit run` flag, e.g. "--server.maxUploadSize=20"."""
    with config.open("rb") as file:
        sections = tomllib.load(file)
    return [f"--{section}.{key}={_flag_value(value)}" for section, options in sections.items()
            for key, value in options.items()]


def _flag_value(value: bool | int | float | str) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def hosted_flags(environ: Mapping[str, str] | None = None) -> list[str]:
    """In hosted mode, Streamlit's upload limit set to the hosting policy's; [] when not hosted, or when an ATTNSCOPE_*
    value is unusable (the app then stops with the sentence that names it)."""
    from attnscope.hosting import PolicyError, policy_from_env

    try:
        policy = policy_from_env(environ)
    except PolicyError:
        return []
    return [f"--server.maxUploadSize={policy.max_upload_mb}"] if policy.hosted else []


def streamlit_command(*, port: int = 8501, extra: Sequence[str] = ()) -> list[str]:
    """The command that starts the dashboard with this Python: `python -m streamlit run <installed entry script>`,
    the shipped settings as flags, the hosted upload limit when hosted (hosted_flags), then `--server.port`, then
    `extra` (further streamlit options, which win).

    Raises:
        StreamlitMissing: streamlit is not installed.
    """
    if importlib.util.find_spec("streamlit") is None:
        raise StreamlitMissing('The dashboard needs Streamlit, which is not installed: run `pip install '
                               '"attnscope[app]"`.')
    return [sys.executable, "-m", "streamlit", "run", str(SCRIPT), *settings_flags(), *hosted_flags(),
            f"--server.port={port}", *extra]


def run_app(*, port: int = 8501, extra: Sequence[str] = ()) -> int:
    """Run the dashboard until it is stopped (Ctrl+C ends it quietly) and return its exit status.

    On POSIX the launcher becomes Streamlit (os.execv): a service manager's SIGTERM, a container's stop or a test's
    terminate() then reach the server itself. A parent that started Streamlit as a child would die on SIGTERM and
    leave the server running, holding its port. Elsewhere Streamlit runs as a child until it exits.

    Raises:
        StreamlitMissing: streamlit is not installed.
    """
    command = streamlit_command(port=port, extra=extra)
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)
    with subprocess.Popen(command) as server:
        try:
            return server.wait()
        except KeyboardInterrupt:  # the terminal sent Ctrl+C to Streamlit too, which then shuts down by itself
            server.wait()
            return 0
