"""attnscope: see what attention really does in real pretrained transformers.

The package is this folder, core/, installed under the name attnscope (with kernels/ as attnscope.kernels and app/
as attnscope.app); it never imports streamlit. The public entry points (attnscope.api) are loaded on first use, so
`import attnscope` is quick and `import attnscope.kernels` does not pull in transformers. The studies they run are
declared in attnscope.catalog, their settings in attnscope.settings.
"""

from __future__ import annotations

import importlib

__all__ = ["PACKAGED_MODELS", "Model", "ModelLoadError", "ModelSpec", "Result", "Source", "ablate", "atlas", "batch",
           "collapse", "compare", "contributions", "generate", "load", "maps", "open", "run", "source", "stats",
           "taylor"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("attnscope.api"), name)
    raise AttributeError(f"module 'attnscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
