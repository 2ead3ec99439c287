from __future__ import annotations

from qgis.core import QgsApplication

from .provider import SegUnifyProvider


class SegUnifyPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider: SegUnifyProvider | None = None

    def initProcessing(self):  # noqa: N802 - QGIS API
        self.provider = SegUnifyProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
