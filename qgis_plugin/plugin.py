from __future__ import annotations

import os

from qgis.core import QgsApplication
from qgis.PyQt.QtGui import QIcon

try:  # Qt6 (QGIS 4) moved QAction to QtGui
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction

from .provider import SegUnifyProvider

MENU = "&SegUnify"
# Menu entries: (label, algorithm). Install environment is the first thing a new user needs.
ACTIONS = (("Install environment…", "segunify:install_environment"),
           ("Check environment…", "segunify:check_environment"),
           ("Segment raster…", "segunify:segment"))


class SegUnifyPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider: SegUnifyProvider | None = None
        self.actions: list = []

    def initProcessing(self):  # noqa: N802 - QGIS API
        self.provider = SegUnifyProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API
        self.initProcessing()
        if self.iface is None:
            return
        icon = QIcon(os.path.join(os.path.dirname(__file__), "icon.svg"))
        for label, alg_id in ACTIONS:
            action = QAction(icon, label, self.iface.mainWindow())
            action.triggered.connect(lambda _checked=False, a=alg_id: self.open_dialog(a))
            self.iface.addPluginToMenu(MENU, action)
            self.actions.append(action)

    @staticmethod
    def open_dialog(alg_id: str) -> None:
        import processing

        processing.execAlgorithmDialog(alg_id, {})

    def unload(self):
        for action in self.actions:
            if self.iface is not None:
                self.iface.removePluginMenu(MENU, action)
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
