"""Enum values that moved between QGIS 3.22 and QGIS 4.

QGIS 3.36+ has scoped enums in `Qgis` (Qgis.ProcessingNumberParameterType.Integer); QGIS 4 drops the
old class-level names (QgsProcessingParameterNumber.Integer) that QGIS 3.22 only has. Every use in
the plugin goes through this module, and tests/qgis/test_qt6_ready.py checks that no other file
names the old ones.
"""

from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
)


def _pick(scoped: str, value: str, legacy_owner, legacy: str):
    owner = getattr(Qgis, scoped, None)
    return getattr(owner, value) if owner is not None and hasattr(owner, value) else getattr(legacy_owner, legacy)


NUMBER_INTEGER = _pick("ProcessingNumberParameterType", "Integer", QgsProcessingParameterNumber, "Integer")
NUMBER_DOUBLE = _pick("ProcessingNumberParameterType", "Double", QgsProcessingParameterNumber, "Double")
FILE_FOLDER = _pick("ProcessingFileParameterBehavior", "Folder", QgsProcessingParameterFile, "Folder")
FLAG_ADVANCED = _pick("ProcessingParameterFlag", "Advanced", QgsProcessingParameterDefinition, "FlagAdvanced")
FLAG_NO_THREADING = _pick("ProcessingAlgorithmFlag", "NoThreading", QgsProcessingAlgorithm, "FlagNoThreading")
VECTOR_POLYGON = _pick("ProcessingSourceType", "VectorPolygon", QgsProcessing, "TypeVectorPolygon")
