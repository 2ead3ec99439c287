#!/usr/bin/env python3
"""Render a SegUnify algorithm dialog offscreen to a PNG (default: 'Segment raster' to
docs/segment_dialog.png).

Run with Debian's QGIS Python:
    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/dialog_screenshot.py [ALGORITHM [PNG [WIDTH HEIGHT]]]
    e.g. scripts/dialog_screenshot.py install_environment docs/install_dialog.png 900 560
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QGIS_CUSTOM_CONFIG_PATH", tempfile.mkdtemp(prefix="segunify-shot-"))
sys.path.insert(0, "/usr/share/qgis/python/plugins")
sys.path.insert(0, str(REPO))

from qgis.core import QgsApplication  # noqa: E402

app = QgsApplication([], True)
app.initQgis()
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
from qgis_plugin.provider import SegUnifyProvider  # noqa: E402

provider = SegUnifyProvider()
QgsApplication.processingRegistry().addProvider(provider)
from processing.gui.AlgorithmDialog import AlgorithmDialog  # noqa: E402
from qgis.PyQt.QtCore import QSize  # noqa: E402

args = sys.argv[1:]
name = args[0] if args else "segment"
out = Path(args[1]) if len(args) > 1 else REPO / "docs" / "segment_dialog.png"
size = QSize(int(args[2]), int(args[3])) if len(args) > 3 else QSize(1000, 760)
alg = QgsApplication.processingRegistry().createAlgorithmById(f"segunify:{name}")
dialog = AlgorithmDialog(alg)
dialog.resize(size)
dialog.show()
for _ in range(20):
    app.processEvents()
out.parent.mkdir(exist_ok=True)
dialog.grab().save(str(out))
print(out)
