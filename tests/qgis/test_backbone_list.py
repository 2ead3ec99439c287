"""The Segment raster and Train model dialogs list the registry's backbones (DINOv3 and DINOv2 with
registers included), read from the one settings file."""

from __future__ import annotations

import pytest
from qgis.core import QgsApplication, QgsProcessingContext

from qgis_plugin.core_settings import settings

NEW = ("dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vitl16_sat",
       "dinov2_vits14_reg", "dinov2_vitb14_reg")


@pytest.mark.parametrize("alg_id", ["segunify:segment", "segunify:train"])
def test_dialog_lists_the_registered_backbones(alg_id):
    from qgis.gui import QgsGui, QgsProcessingGui
    from qgis.PyQt.QtWidgets import QComboBox

    assert set(NEW) <= set(settings.BACKBONE_NAMES)
    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
    param = alg.parameterDefinition("BACKBONE")
    assert param.defaultValue() == settings.BACKBONE
    assert list(param.metadata()["widget_wrapper"]["value_hints"]) == list(settings.BACKBONE_NAMES)
    # the widget the dialog shows: a list of exactly these names, the default chosen
    wrapper = QgsGui.processingGuiRegistry().createParameterWidgetWrapper(param, QgsProcessingGui.Standard)
    widget = wrapper.createWrappedWidget(QgsProcessingContext())
    combo = widget if isinstance(widget, QComboBox) else widget.findChild(QComboBox)
    assert combo is not None, f"{alg_id}: the backbone is not offered as a list ({type(widget).__name__})"
    items = [combo.itemText(i) for i in range(combo.count())]
    assert [i for i in items if i] == list(settings.BACKBONE_NAMES)
    assert wrapper.parameterValue() == settings.BACKBONE
    help_text = alg.shortHelpString()
    assert all(name in help_text for name in NEW) and "DINOv3 License" in help_text
