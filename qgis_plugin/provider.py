from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .runner import SETTING_PYTHON

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class SegUnifyProvider(QgsProcessingProvider):
    def id(self):
        return "segunify"

    def name(self):
        return "SegUnify"

    def longName(self):  # noqa: N802 - QGIS API
        return "SegUnify: unsupervised segmentation of orthophotos"

    def icon(self):
        return QIcon(ICON)

    def load(self):
        from processing.core.ProcessingConfig import ProcessingConfig, Setting

        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(
            self.name(), SETTING_PYTHON,
            "Python executable of the SegUnify environment (set by Install environment; empty: SEGUNIFY_PYTHON, "
            "then segunify on PATH)",
            "", valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.removeSetting(SETTING_PYTHON)

    def loadAlgorithms(self):  # noqa: N802 - QGIS API
        from .algorithms import (
            CheckEnvironmentAlgorithm,
            ClassesAlgorithm,
            DistillAlgorithm,
            InstallEnvironmentAlgorithm,
            SegmentAlgorithm,
            TrainAlgorithm,
            VectorizeAlgorithm,
        )

        for alg in (SegmentAlgorithm(), TrainAlgorithm(), DistillAlgorithm(), VectorizeAlgorithm(), ClassesAlgorithm(),
                    CheckEnvironmentAlgorithm(), InstallEnvironmentAlgorithm()):
            self.addAlgorithm(alg)

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802 - QGIS API
        return ["gpkg"]

    def defaultVectorFileExtension(self, has_geometry=True):  # noqa: N802 - QGIS API
        return "gpkg"

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 - QGIS API
        return ["tif"]

    def defaultRasterFileExtension(self):  # noqa: N802 - QGIS API
        return "tif"
