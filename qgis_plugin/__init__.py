"""SegUnify QGIS plugin: a Processing provider whose algorithms run the SegUnify CLI of a
separate Python environment."""


def classFactory(iface):  # noqa: N802 - QGIS's required entry point name
    from .plugin import SegUnifyPlugin

    return SegUnifyPlugin(iface)
