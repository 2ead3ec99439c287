"""SegUnify's settings (defaults, choices, ranges) for the plugin's parameters: the one file
segunify_core/settings.py, so the dialogs offer exactly what the CLI accepts.

It is loaded by path, not imported as `segunify_core.settings`: QGIS's own Python must not import the
rest of segunify_core (torch). The built plugin carries a copy beside this module (SETTINGS_COPY,
written by scripts/build_plugin.py); a repository checkout (the tests) reads the original.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SETTINGS_COPY = "segunify_settings.py"
_HERE = Path(__file__).resolve().parent


def _load() -> ModuleType:
    for path in (_HERE / SETTINGS_COPY, _HERE.parent / "segunify_core" / "settings.py"):
        if path.is_file():
            name = f"{__package__}.{SETTINGS_COPY[:-3]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # its dataclasses look their module up while they are built
            spec.loader.exec_module(module)
            return module
    raise ImportError(f"SegUnify's settings file is missing: {SETTINGS_COPY} should be in {_HERE}; reinstall the "
                      "plugin from a zip made by scripts/build_plugin.py.")


settings = _load()
