"""QGIS 4 (Qt6) readiness of the plugin's source: Qt only through qgis.PyQt, scoped enums only,
the QGIS enums that QGIS 4 renamed only through qgis_plugin/compat.py. Runs without QGIS."""

from __future__ import annotations

import re
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[2] / "qgis_plugin"

# (pattern, why) - each names a construct that works on Qt5 / QGIS 3 only.
RULES = [
    (re.compile(r"^\s*(from|import)\s+(PyQt5|PyQt6|sip)\b", re.M), "import Qt through qgis.PyQt"),
    (re.compile(r"\bPyQt5\b"), "PyQt5 does not exist on QGIS 4"),
    (re.compile(r"\bQt\.(?!Q)[A-Z]\w*\b(?!\s*\.)"), "unscoped Qt enum (Qt6 needs Qt.EnumName.Value)"),
    (re.compile(r"\bQ(?!gs|t\b)[A-Z]?[a-z]\w*\.(?!Q)[A-Z]\w*\b(?!\s*[.(])"),
     "unscoped Qt enum (Qt6 needs QClass.EnumName.Value)"),
    (re.compile(r"\.exec_\("), "exec_() is gone in Qt6; use exec()"),
    (re.compile(r"\bQgs\w+\.(Flag\w+|Type\w+|Integer|Double|Folder|File)\b"),
     "QGIS 3-only enum name; use qgis_plugin/compat.py"),
]


def qt5_only_usage(source: str) -> list[str]:
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        code = line.split("#", 1)[0]
        for pattern, why in RULES:
            for match in pattern.finditer(code):
                found.append(f"{number}: {match.group(0).strip()} ({why})")
    return found


def test_scanner_catches_qt5_only_code():
    bad = ("from PyQt5.QtWidgets import QFrame\nline.setFrameShape(QFrame.HLine)\nlabel.setAlignment(Qt.AlignLeft)\n"
           "dialog.exec_()\np = QgsProcessingParameterNumber('N', 'n', QgsProcessingParameterNumber.Integer)\n")
    assert len(qt5_only_usage(bad)) == 6
    good = ("from qgis.PyQt.QtWidgets import QFrame\nline.setFrameShape(QFrame.Shape.HLine)\n"
            "label.setAlignment(Qt.AlignmentFlag.AlignLeft)\ndialog.exec()\nfrom qgis.PyQt.QtGui import QIcon\n"
            "x = QgsProcessing.TEMPORARY_OUTPUT\n")
    assert qt5_only_usage(good) == []


def test_plugin_has_no_qt5_only_usage():
    problems = {}
    for path in sorted(PLUGIN.rglob("*.py")):
        if path.name == "compat.py":  # the one place that names both spellings
            continue
        found = qt5_only_usage(path.read_text(encoding="utf-8"))
        if found:
            problems[path.name] = found
    assert problems == {}
