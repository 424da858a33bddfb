"""The package's layers, read from the source: no import circles, the engine below the analyses, the settings table
light, and the dashboard reaching the library only through its door."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"attnscope": ROOT / "core", "attnscope.kernels": ROOT / "kernels", "attnscope.app": ROOT / "app"}
# What app/ must not import: the machinery below the public door (attnscope, attnscope.catalog, attnscope.settings,
# the result types and figures of attnscope.studies / attnscope.figures, ...).
BELOW_THE_DOOR = ("attnscope.models", "attnscope.capture", "attnscope.kernels", "attnscope.analyses",
                  "attnscope.engine")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in sorted(PACKAGES.items(), key=lambda item: -len(str(item[1]))):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            if package == "attnscope" and parts and parts[0] in ("kernels", "app"):
                continue
            found.setdefault(name, path)
    return found


MODULES = _modules()


def _imports(path: Path, name: str) -> set[str]:
    """Every attnscope module `path` imports, at its top or inside a function (a lazy import closes a circle too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    checking = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                for inner in ast.walk(node)}  # imports for annotations only never run
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            for alias in node.names:  # `from package import module` imports the module (and runs the package)
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    colour, stack = {}, []

    def visit(node: str) -> list[str] | None:
        colour[node] = "grey"
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if target.startswith("attnscope.app") != node.startswith("attnscope.app"):
                continue  # the app sits above the library; the library never imports it (checked below)
            if colour.get(target) == "grey":
                return stack[stack.index(target):] + [target]
            if target not in colour and (found := visit(target)):
                return found
        stack.pop()
        colour[node] = "black"
        return None

    for module in sorted(GRAPH):
        if module not in colour and (found := visit(module)):
            return found
    return None


def test_the_library_has_no_import_circle():
    assert _cycle() is None, " -> ".join(_cycle())


def test_the_library_never_imports_the_dashboard():
    offenders = {name: sorted(m for m in targets if m.startswith("attnscope.app"))
                 for name, targets in GRAPH.items() if not name.startswith("attnscope.app")}
    # the CLI's `attnscope app` starts the dashboard through its launcher, which imports no streamlit at import time
    offenders = {name: found for name, found in offenders.items() if found and found != ["attnscope.app.launch"]}
    assert not offenders


def test_the_engine_stands_below_the_analyses():
    assert not {m for m in GRAPH["attnscope.engine"] if m.startswith(("attnscope.analyses", "attnscope.studies"))}


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("attnscope.app")))
def test_the_dashboard_reaches_the_library_only_through_its_door(name):
    below = sorted(m for m in GRAPH[name] if m.startswith(BELOW_THE_DOOR))
    assert not below, f"{name} imports {below}"


def test_the_settings_table_and_the_catalog_import_nothing_heavy():
    code = ("import sys, attnscope.settings, attnscope.catalog; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pandas') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert shown == "[]"


def test_the_import_graph_sees_a_real_import():
    """The checks above would pass on an empty graph: the graph holds what the code imports."""
    assert "attnscope.settings" in GRAPH["attnscope.catalog"]
    assert "attnscope.capture" in GRAPH["attnscope.engine"]
    assert "attnscope.app.common" in GRAPH["attnscope.app.cached"] or "attnscope.app.cached" in GRAPH[
        "attnscope.app.common"]
