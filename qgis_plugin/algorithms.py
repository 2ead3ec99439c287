"""The SegUnify Processing algorithms: segment, train, distill, vectorize, classes, check_environment,
install_environment.

Each algorithm only turns its parameters into `segunify` CLI arguments; the work happens in the
child process (see runner.py). install_environment drives installer.py.
"""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputBoolean,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMatrix,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProviderRegistry,
    QgsSettings,
)
from qgis.PyQt.QtGui import QIcon

from . import installer, runner
from .child import Cancelled
from .compat import FILE_FOLDER, FLAG_ADVANCED, NUMBER_DOUBLE, NUMBER_INTEGER, VECTOR_POLYGON
from .core_settings import settings

SPEED_NOTE = ("Speed: on a 2-core CPU the default backbone (DINO ViT-S/8) with flip averaging takes about 7 s per "
              "megapixel where the CPU computes bfloat16 natively (AVX-512 BF16, AMX) and about 40 s per megapixel "
              "in float32 on other CPUs (2 to 11 minutes for a 4000 x 4000 px orthophoto); a CUDA GPU is tens of "
              "times faster. The CRF adds 0.1-0.4 s per 320 px window.")
BACKBONE_HELP = (f"Backbone is {settings.BACKBONE} (default), "
                 f"{', '.join(n for n in settings.BACKBONE_NAMES if n != settings.BACKBONE)} (the list), or any "
                 "timm ViT or Eva name from the command line. DINOv3 weights are under the DINOv3 License (accept "
                 "it to download them); dinov3_vitl16_sat was trained on satellite images. "
                 "Backbone weights file: a local checkpoint (official DINO/DINOv2/DINOv3 .pth or timm "
                 ".safetensors/.pth, of the backbone chosen) for machines without internet; empty downloads the "
                 "weights once. Device: auto uses a CUDA GPU when PyTorch sees one.")

OUTPUT_SUFFIX = "_segunify"  # Segment's default output: <input name>_segunify.tif beside the input


class _ApplyStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies the class style written beside a class raster (the GeoTIFF's colour table as QML).

    It holds no state (the style is found from the layer's own file), so one instance serves every run:
    QGIS calls it after the algorithm object is gone and does not own it, so it must outlive the run."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
        qml = os.path.splitext(path)[0] + ".qml"
        if os.path.exists(qml):
            layer.loadNamedStyle(qml)
            layer.triggerRepaint()


APPLY_STYLE = _ApplyStyle()


def _file_path(layer, raw=None) -> str:
    """The file behind a raster layer, or a clear error for layers that are not files. A path QGIS
    could not open is passed on as is, so the user gets SegUnify's explanation of what is wrong."""
    if layer is None:
        if isinstance(raw, str) and os.path.isfile(raw):
            return raw
        raise QgsProcessingException("No input raster layer given; choose a raster layer or file.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(f"Layer '{layer.name()}' is not a file-backed raster (provider "
                                     f"{layer.providerType()}); save it as a GeoTIFF first (Export > Save As).")
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
    if not os.path.isfile(path):
        raise QgsProcessingException(f"Layer '{layer.name()}' does not point to a local file ({path}); save it "
                                     "as a GeoTIFF first (Export > Save As).")
    return path


def _requested_output(alg, parameters, name, context) -> str | None:
    """The output path the user asked for, or None when left empty or set to a temporary file."""
    raw = parameters.get(name)
    if isinstance(raw, QgsProcessingOutputLayerDefinition):
        raw = raw.sink.staticValue()
    if raw is None or str(raw).strip() in ("", QgsProcessing.TEMPORARY_OUTPUT):
        return None
    return alg.parameterAsOutputLayer(parameters, name, context)


def _advanced(param):
    param.setFlags(param.flags() | FLAG_ADVANCED)
    return param


# Segment raster's settings come from their declarations in settings.py (SelfFitOptions,
# SegmentOptions): every tile-segment setting with a dialog label is a parameter, named after its
# CLI flag, with the declared label, default, range or choices, and becomes that flag again.
def _offered(cls, command=settings.TILE_SEGMENT):
    return [(field, meta) for field, meta in settings.declared(cls)
            if meta["label"] is not None and command in meta["commands"]]


def _parameter_name(field) -> str:
    return settings.flag_name(field)[2:].replace("-", "_").upper()


def declared_parameters(cls, command=settings.TILE_SEGMENT) -> list:
    """The dialog parameters of the declared settings of `cls` (after INPUT, the bands' layer) that
    `command` offers."""
    params = []
    for field, meta in _offered(cls, command):
        name, label = _parameter_name(field), meta["label"]
        default = meta["plugin_default"] if meta["plugin_default"] is not None else field.default
        if meta["kind"] == "bands":
            param = QgsProcessingParameterBand(name, label, parentLayerParameterName="INPUT", optional=True,
                                               allowMultiple=True)
        elif meta["choices"]:
            param = QgsProcessingParameterEnum(name, label, options=list(meta["choices"]),
                                               defaultValue=list(meta["choices"]).index(default))
        elif field.type is bool:
            param = QgsProcessingParameterBoolean(name, label, defaultValue=default)
        else:
            bounds = {key: meta[bound] for key, bound in (("minValue", "minimum"), ("maxValue", "maximum"))
                      if meta[bound] is not None}
            param = QgsProcessingParameterNumber(name, label, NUMBER_INTEGER if field.type is int else NUMBER_DOUBLE,
                                                 default, **bounds)
        params.append(_advanced(param) if meta["advanced"] else param)
    return params


def declared_arguments(alg, cls, parameters, context, command=settings.TILE_SEGMENT) -> list:
    """The CLI arguments of the dialog's values for the declared settings of `cls` (of `command`)."""
    args = []
    for field, meta in _offered(cls, command):
        name, flag = _parameter_name(field), settings.flag_name(field)
        if meta["kind"] == "bands":
            bands = [b for b in alg.parameterAsInts(parameters, name, context) if b > 0]
            args += [flag, ",".join(map(str, bands))] if bands else []
        elif meta["choices"]:
            args += [flag, meta["choices"][alg.parameterAsEnum(parameters, name, context)]]
        elif field.type is bool:
            value = alg.parameterAsBoolean(parameters, name, context)
            args += [flag] if value else ([f"--no-{flag[2:]}"] if meta["negatable"] else [])
        elif field.type is int:
            args += [flag, alg.parameterAsInt(parameters, name, context)]
        else:
            args += [flag, alg.parameterAsDouble(parameters, name, context)]
    return args


def _with_model_suffix(path: str) -> str:
    return path if path.endswith(".safetensors") else path + ".safetensors"


class _Base(QgsProcessingAlgorithm):
    NAME: str  # the algorithm's id in the provider
    TITLE: str  # its name in the Processing toolbox
    HELP: str  # the dialog's help panel

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802 - QGIS API
        return self.TITLE

    def shortHelpString(self):  # noqa: N802 - QGIS API
        return self.HELP

    def group(self):
        return None

    def groupId(self):  # noqa: N802 - QGIS API
        return None

    def icon(self):
        return QIcon(os.path.join(os.path.dirname(__file__), "icon.svg"))

    def createInstance(self):  # noqa: N802 - QGIS API
        return type(self)()

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API
        """An INPUT file that exists but that QGIS cannot open goes on to SegUnify, whose message says
        what is wrong with it (QGIS would only say 'not found')."""
        raw = parameters.get("INPUT")
        if not (isinstance(raw, str) and os.path.isfile(raw) and self.parameterDefinition("INPUT") is not None
                and self.parameterDefinition("INPUT").type() == "raster"):
            return super().checkParameterValues(parameters, context)
        for definition in self.parameterDefinitions():
            if definition.name() != "INPUT" and not definition.checkValueIsAcceptable(
                    parameters.get(definition.name()), context):
                return False, f"Incorrect parameter value for {definition.name()}"
        return True, ""

    def _run(self, args, feedback, phases=None, outputs=None):
        try:
            return runner.run_cli(args, feedback, phases, outputs)
        except Cancelled:
            raise QgsProcessingException("Cancelled; no output was written.") from None
        except (runner.EnvironmentMissing, runner.ChildFailed) as exc:
            raise QgsProcessingException(str(exc)) from None

    def _backbone_params(self):
        backbone = QgsProcessingParameterString("BACKBONE", "Backbone", defaultValue=settings.BACKBONE)
        backbone.setMetadata({"widget_wrapper": {"value_hints": list(settings.BACKBONE_NAMES)}})  # the registry's names
        self.addParameter(_advanced(backbone))
        self.addParameter(_advanced(QgsProcessingParameterFile("BACKBONE_WEIGHTS", "Backbone weights file (offline)",
                                                               optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterEnum("DEVICE", "Device", options=list(settings.DEVICES),
                                                               defaultValue=settings.DEVICES.index(settings.DEVICE))))

    def _backbone_args(self, parameters, context):
        args = ["--device", settings.DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]]
        weights = self.parameterAsFile(parameters, "BACKBONE_WEIGHTS", context)
        if weights:
            args += ["--backbone-weights", weights]
        return args


class SegmentAlgorithm(_Base):
    NAME = "segment"
    TITLE = "Segment raster"
    HELP = (
        "Segments an orthophoto into classes without any labels and writes a class raster (classes 1..K, "
        "0 = nodata) on exactly the input's grid, styled with one colour per class.\n\n"
        "Input raster: a file-backed raster layer (GeoTIFF, JPEG, PNG, ...); alpha, nodata and masks are "
        "honoured.\nBands: three bands to use as RGB, or one band (used as grey); empty = the first three.\n"
        "Model file: a model from 'Train model' (labels then mean the same thing in every raster; names and "
        "colours set with 'Name and merge classes' label the layer). Empty: "
        "a model with 'Number of classes' is fitted on this raster itself (self-fit).\n"
        f"Number of classes: for self-fit only ({settings.MAP_CLASSES} to start; name and merge them later).\n"
        "Window size / Stride: tile size and step in model pixels (the raster resampled to the model's ground "
        "resolution, or its own pixels with Keep native resolution); windows overlap by window - stride and are "
        "blended without seams.\nCRF refinement: refines class edges along image edges (auto uses pydensecrf "
        "if installed).\nFlip averaging: also looks at each window mirrored (better, twice the time).\n"
        f"Class raster: the output GeoTIFF; empty writes <input name>{OUTPUT_SUFFIX}.tif beside the input.\n"
        "Polygons: optional GeoPackage of the classes; Minimum polygon area: regions smaller than this many "
        "square metres are merged into their neighbours.\n\nAdvanced: Windows per batch: windows per backbone "
        "call (more is faster on a GPU and needs more memory). Keep native resolution: segment at the input's "
        "own pixel size instead of resampling it to the model's ground sampling distance. "
        + BACKBONE_HELP + "\n\n" + SPEED_NOTE)

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file (empty: fit on this raster)",
                                                     extension="safetensors", optional=True))
        for param in declared_parameters(settings.SelfFitOptions) + declared_parameters(settings.SegmentOptions):
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterEnum("CRF", "CRF refinement", options=list(settings.CRF_BACKENDS),
                                                     defaultValue=settings.CRF_BACKENDS.index(settings.CRF)))
        self._backbone_params()
        self.addParameter(QgsProcessingParameterRasterDestination(
            "OUTPUT", f"Class raster (empty: <input name>{OUTPUT_SUFFIX}.tif beside the input)", optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT_VECTOR", "Polygons (optional)",
                                                                  VECTOR_POLYGON, optional=True,
                                                                  createByDefault=False))
        self.addParameter(QgsProcessingParameterNumber("MIN_AREA", "Minimum polygon area (m2)",
                                                       NUMBER_DOUBLE, settings.MIN_AREA, minValue=0.0))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        src = _file_path(self.parameterAsRasterLayer(parameters, "INPUT", context), parameters.get("INPUT"))
        out = _requested_output(self, parameters, "OUTPUT", context)
        if out is None:  # never only a temporary layer: the result lands beside the input
            out = os.path.splitext(src)[0] + OUTPUT_SUFFIX + ".tif"
            context.addLayerToLoadOnCompletion(out, QgsProcessingContext.LayerDetails(
                os.path.basename(os.path.splitext(out)[0]), context.project(), "OUTPUT"))
        model = self.parameterAsFile(parameters, "MODEL", context)
        args = ["tile-segment", src, out, "--overwrite",
                "--crf", settings.CRF_BACKENDS[self.parameterAsEnum(parameters, "CRF", context)],
                *declared_arguments(self, settings.SegmentOptions, parameters, context)]
        if model:
            args += ["--model", model]
            phases = {"segment": (0.0, 100.0)}
        else:
            args += [*declared_arguments(self, settings.SelfFitOptions, parameters, context),
                     "--backbone", self.parameterAsString(parameters, "BACKBONE", context) or settings.BACKBONE]
            phases = {"features": (0.0, 30.0), "fit": (30.0, 50.0), "segment": (50.0, 100.0)}
        args += self._backbone_args(parameters, context)
        vector = self.parameterAsOutputLayer(parameters, "OUTPUT_VECTOR", context) if parameters.get("OUTPUT_VECTOR") else None
        if vector:
            phases = {k: (a * 0.9, b * 0.9) for k, (a, b) in phases.items()}
        self._run(args, feedback, phases, [out])
        results = {"OUTPUT": out}
        if vector:
            self._run(["vectorize", out, vector, "--overwrite", "--min-area",
                       self.parameterAsDouble(parameters, "MIN_AREA", context)], feedback, {}, [vector])
            feedback.setProgress(100)
            results["OUTPUT_VECTOR"] = vector
        if context.willLoadLayerOnCompletion(out):
            context.layerToLoadOnCompletionDetails(out).setPostProcessor(APPLY_STYLE)
        return results


class TrainAlgorithm(_Base):
    NAME = "train"
    TITLE = "Train model"
    HELP = (
        "Trains a SegUnify model on a folder of orthophotos (GeoTIFF, PNG, JPEG, any size) without labels, "
        "for use in 'Segment raster'.\n\nFolder: searched recursively for images.\nModel file: the output "
        "(.safetensors).\nNumber of classes: K, the classes the model separates ("
        f"{settings.MAP_CLASSES} to start; name and merge them later).\nSteps / Batch size: "
        f"training length (the defaults, {settings.STEPS} x {settings.BATCH_SIZE}, are the published setting).\n"
        f"Window size: training windows in pixels ({settings.TRAIN_WINDOW}).\nMaximum windows: windows sampled "
        "from the data; their features are computed once and cached on disk, so later steps are fast.\n\n"
        "Advanced: extra clusters, the Adam learning rates (Learning rate, Compressor / Learning rate, "
        "prototypes), EMA momentum alpha, temperature, the smoothness shifts (Closeness shift b1 and Cross-image shift b2) that tune "
        "how eagerly similar patches are grouped, and the random seed (same seed and data give the same model). "
        + BACKBONE_HELP + "\n\nSpeed: on a 2-core CPU the first pass computes "
        "about 1000 windows per 10 minutes (ViT-S/8, with flips); training steps then take well under a "
        "second each.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFile("INPUT", "Folder of orthophotos",
                                                     behavior=FILE_FOLDER))
        self.addParameter(QgsProcessingParameterNumber("CLASSES", "Number of classes", NUMBER_INTEGER,
                                                       settings.MAP_CLASSES, minValue=settings.MIN_CLASSES,
                                                       maxValue=settings.MAX_CLASSES))
        for name, label, default, minimum in (
                ("STEPS", "Steps", settings.STEPS, settings.MIN_STEPS),
                ("BATCH_SIZE", "Batch size", settings.BATCH_SIZE, settings.MIN_BATCH_SIZE),
                ("WINDOW", "Window size (px)", settings.TRAIN_WINDOW, settings.MIN_TRAIN_WINDOW),
                ("MAX_WINDOWS", "Maximum windows", settings.MAX_WINDOWS, settings.MIN_MAX_WINDOWS)):
            self.addParameter(QgsProcessingParameterNumber(name, label, NUMBER_INTEGER, default, minValue=minimum))
        for name, label, default in (("EXTRA_CLUSTERS", "Extra clusters", settings.EXTRA_CLUSTERS),
                                     ("SEED", "Random seed", settings.SEED)):
            self.addParameter(_advanced(QgsProcessingParameterNumber(name, label, NUMBER_INTEGER,
                                                                     default, minValue=0)))
        for name, label, default in (("LR_COMPRESSOR", "Learning rate, Compressor", settings.LR_COMPRESSOR),
                                     ("LR_LABELER", "Learning rate, prototypes", settings.LR_LABELER),
                                     ("ALPHA", "EMA momentum alpha", settings.ALPHA),
                                     ("TEMPERATURE", "Temperature", settings.TEMPERATURE),
                                     ("SHIFT_INTRA", "Closeness shift b1", settings.SHIFT_INTRA),
                                     ("SHIFT_INTER", "Cross-image shift b2", settings.SHIFT_INTER)):
            param = QgsProcessingParameterNumber(name, label, NUMBER_DOUBLE, default)
            param.setMetadata({"widget_wrapper": {"decimals": 6}})
            self.addParameter(_advanced(param))
        self._backbone_params()
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Model file", "SegUnify model (*.safetensors)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        folder = self.parameterAsFile(parameters, "INPUT", context)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        out = _with_model_suffix(out)
        args = ["train", folder, "-o", out,
                "--backbone", self.parameterAsString(parameters, "BACKBONE", context) or settings.BACKBONE]
        for name in ("CLASSES", "STEPS", "BATCH_SIZE", "WINDOW", "MAX_WINDOWS", "EXTRA_CLUSTERS", "SEED"):
            args += ["--" + name.lower().replace("_", "-"), self.parameterAsInt(parameters, name, context)]
        for name in ("LR_COMPRESSOR", "LR_LABELER", "ALPHA", "TEMPERATURE", "SHIFT_INTRA", "SHIFT_INTER"):
            args += ["--" + name.lower().replace("_", "-"), repr(self.parameterAsDouble(parameters, name, context))]
        args += self._backbone_args(parameters, context)
        self._run(args, feedback, {"features": (0.0, 40.0), "train": (40.0, 100.0)}, [out])
        return {"OUTPUT": out}


class DistillAlgorithm(_Base):
    """Distil a fast model: `segunify distill MODEL DATA -o FAST`, its options declared in settings.py."""

    NAME = "distill"
    TITLE = "Distil a fast model"
    HELP = (
        "Distils a trained model into a fast model: a small convolutional network that reproduces the model's "
        "classes at a fraction of the cost, for large areas or repeated runs. The fast model file is used in "
        "'Segment raster' like any model (same legend, colours, resolution and bands).\n\n"
        "Model file: the teacher, from 'Train model' (or a self-fit saved from the command line).\n"
        "Input raster / Folder of orthophotos: the data to distil on (one raster, or a folder searched for images).\n"
        "Student encoder: the network (mobilenetv3_large_100 is the fastest, resnet18 the most faithful).\n"
        "Steps: distillation steps (more: closer to the teacher). Teacher windows: windows sampled from the "
        "data; the teacher's probabilities on them are computed once and cached.\nFast model file: the output "
        "(.safetensors).\n\nAdvanced: Crops per step, Crop (model px), Learning rate, Seed, Teacher flip "
        "averaging and Teacher CRF (the teacher's pipeline: keep what you segment with). Backbone weights file: "
        "the teacher's local checkpoint for machines without internet. Device: auto uses a CUDA GPU when "
        "PyTorch sees one.\n\nSpeed: on a 2-core CPU the teacher pass takes about 1 s per window; each step "
        "about a second.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file", extension="safetensors"))
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster", optional=True))
        self.addParameter(QgsProcessingParameterFile("FOLDER", "Folder of orthophotos", behavior=FILE_FOLDER,
                                                     optional=True))
        for param in declared_parameters(settings.DistillOptions, settings.DISTILL):
            self.addParameter(param)
        self.addParameter(_advanced(QgsProcessingParameterFile("BACKBONE_WEIGHTS", "Backbone weights file (offline)",
                                                               optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterEnum("DEVICE", "Device", options=list(settings.DEVICES),
                                                               defaultValue=settings.DEVICES.index(settings.DEVICE))))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Fast model file",
                                                                "SegUnify model (*.safetensors)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        model = self.parameterAsFile(parameters, "MODEL", context)
        folder = self.parameterAsFile(parameters, "FOLDER", context)
        data = folder or (_file_path(self.parameterAsRasterLayer(parameters, "INPUT", context), parameters.get("INPUT"))
                          if parameters.get("INPUT") else None)
        if not data:
            raise QgsProcessingException("No data to distil on; choose an input raster or a folder of orthophotos.")
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        out = _with_model_suffix(out)
        args = ["distill", model, data, "-o", out,
                *declared_arguments(self, settings.DistillOptions, parameters, context, settings.DISTILL),
                *self._backbone_args(parameters, context)]
        self._run(args, feedback, {"teacher": (0.0, 40.0), "distill": (40.0, 100.0)}, [out])
        return {"OUTPUT": out}


class VectorizeAlgorithm(_Base):
    NAME = "vectorize"
    TITLE = "Vectorize classes"
    HELP = ("Turns a class raster into polygons: regions smaller than the minimum area are merged into their "
            "neighbours (sieve), then each region becomes a polygon with its class id, class name and area in "
            "square metres, written to a GeoPackage in the raster's CRS.\n\nClass raster: output of 'Segment raster'.\n"
            "Minimum area: the minimum mapping unit in square metres (0 keeps every region).\nSimplify tolerance: "
            "tolerance in CRS units (0 keeps the pixel outlines).\n\nSpeed: a few seconds per 10 megapixels.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.addParameter(QgsProcessingParameterNumber("MIN_AREA", "Minimum area (m2)",
                                                       NUMBER_DOUBLE, settings.MIN_AREA, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber("SIMPLIFY", "Simplify tolerance (CRS units)",
                                                       NUMBER_DOUBLE, settings.SIMPLIFY, minValue=0.0))
        self.addParameter(QgsProcessingParameterVectorDestination("OUTPUT", "Polygons", VECTOR_POLYGON))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        src = _file_path(self.parameterAsRasterLayer(parameters, "INPUT", context), parameters.get("INPUT"))
        out = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        self._run(["vectorize", src, out, "--overwrite", "--min-area", self.parameterAsDouble(parameters, "MIN_AREA", context),
                   "--simplify", self.parameterAsDouble(parameters, "SIMPLIFY", context)], feedback, {}, [out])
        return {"OUTPUT": out}


TABLE_HEADERS = ["id", "name", "colour", "merge into"]


def _class_id(text: str) -> int:
    """A class id from a table cell (QGIS hands numbers over as '3' or '3.0')."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 1 or not value.is_integer():
        raise QgsProcessingException(f"Class ids in the table must be whole numbers from 1 (got '{text}'); use the "
                                     "ids of the class raster.")
    return int(value)


def legend_arguments(table) -> list[str]:
    """The CLI's --name/--colour/--merge arguments for the rows (id, name, colour, merge into) of the
    table parameter; a row that merges into another class lends it its pixels, the target row's name
    and colour are the merged class's."""
    cells = ["" if v is None else str(v).strip() for v in (table or [])]
    if len(cells) % len(TABLE_HEADERS):
        raise QgsProcessingException(f"The class table needs {len(TABLE_HEADERS)} columns per row "
                                     f"({', '.join(TABLE_HEADERS)}); fill in or remove the incomplete row.")
    rows = [cells[i:i + len(TABLE_HEADERS)] for i in range(0, len(cells), len(TABLE_HEADERS))]
    parsed, into = [], {}
    for row_id, name, colour, target in rows:
        if not row_id and not (name or colour or target):
            continue  # an empty row
        number, target_number = _class_id(row_id), _class_id(target) if target else None
        parsed.append((number, name, colour, target_number))
        if target_number is not None and target_number != number:
            into.setdefault(target_number, [target_number]).append(number)
    merged = {i for members in into.values() for i in members[1:]}
    args = []
    for row_id, name, colour, _ in parsed:
        if row_id in into and row_id in merged:
            raise QgsProcessingException(f"Class {row_id} is merged into another class and has classes merged "
                                         "into it; merge all of them into one class.")
        if row_id in merged:
            if name:
                raise QgsProcessingException(f"Class {row_id} is merged into another class, so it keeps no name "
                                             f"of its own; name the class it merges into instead.")
        elif name and row_id not in into:
            args += ["--name", f"{row_id}={name}"]
        if colour:
            args += ["--colour", f"{row_id}={colour}"]
    names = {row_id: name for row_id, name, _, _ in parsed}
    for target, members in into.items():
        label = names.get(target, "")
        args += ["--merge", ",".join(map(str, members)) + (f"={label}" if label else "")]
    return args


class ClassesAlgorithm(_Base):
    NAME = "classes"
    TITLE = "Name and merge classes"
    HELP = (
        "Turns a model's numbered clusters into a map legend: gives classes names and colours and merges "
        "several clusters into one class, and writes a new model file (the original is kept). Everything "
        "segmented with the new model carries the legend: the class raster's colours and category names, the "
        "layer's style in QGIS, the polygons' class_name and the preview.\n\n"
        "Model file: a model from 'Train model' or saved by 'Segment raster'.\n"
        "Classes table: one row per class to change. id: the class number (as in the class raster). name: the "
        "new name (empty keeps it). colour: a hex colour such as #c0392b (empty keeps it). merge into: the id of "
        "another class this one becomes part of; their probabilities add up and the merged class takes the "
        "name and colour of the class merged into.\n"
        "After merging, classes are numbered 1, 2, ... in their original order: a merged class takes the place "
        "of its lowest id. Classes not in the table stay as they are.\n\nSpeed: instant (no image is read).")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model file", extension="safetensors"))
        self.addParameter(QgsProcessingParameterMatrix("TABLE", "Classes", numberRows=1, hasFixedNumberRows=False,
                                                       headers=TABLE_HEADERS))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "New model file",
                                                                "SegUnify model (*.safetensors)"))
        self.addOutput(QgsProcessingOutputString("LEGEND", "Classes of the new model (JSON)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        import json

        model = self.parameterAsFile(parameters, "MODEL", context)
        out = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        out = _with_model_suffix(out)
        args = legend_arguments(self.parameterAsMatrix(parameters, "TABLE", context))
        events = self._run(["classes", model, "-o", out, "--overwrite", "--json", *args], feedback, {}, [out])
        legend = next((e["classes"] for e in events if "classes" in e), [])
        for row in legend:
            feedback.pushInfo(f"{row['id']}: {row['name']} {row['colour']} (clusters "
                              f"{','.join(map(str, row['clusters']))})")
        return {"OUTPUT": out, "LEGEND": json.dumps(legend)}


class CheckEnvironmentAlgorithm(_Base):
    NAME = "check_environment"
    TITLE = "Check environment"
    HELP = ("Reports what the SegUnify algorithms will run with: the Python environment (from the provider "
            "setting, the SEGUNIFY_PYTHON variable or segunify on PATH), the SegUnify and PyTorch versions, "
            "the device (CPU with or without native bfloat16, or the GPU's name and memory), the CRF backend "
            "and whether the backbone weights are cached or will be downloaded, and how to fix what is missing. "
            "Takes a few seconds.")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addOutput(QgsProcessingOutputBoolean("OK", "Environment usable"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Report"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        try:
            info = runner.probe()
        except runner.EnvironmentMissing as exc:
            feedback.reportError(str(exc))
            return {"OK": False, "REPORT": str(exc)}
        cached = [name for name, ok in info.get("weights_cached", {}).items() if ok]
        weights = ("cached" if info.get("backbone_weights") == "cached" else
                   "to be downloaded on first use (needs internet; offline, give a Backbone weights file)")
        lines = [f"Environment: {info['origin']}", f"Python {info['python_version']}", f"SegUnify {info['segunify']}",
                 f"PyTorch {info['torch']}" + (f" (CUDA {info['torch_cuda']})" if info.get("torch_cuda") else ""),
                 f"Device: {info['device']}", f"CRF backend: {info['crf_backend']}",
                 f"Backbone {info.get('backbone', settings.BACKBONE)} weights: {weights}",
                 "Backbone weights cached: " + (", ".join(cached) if cached else "none")]
        if info["crf_backend"] == "torch":
            lines.append("For the reference CRF install pydensecrf2 in that environment "
                         "(pip install cython==0.29.36 && pip install --no-build-isolation pydensecrf2).")
        report = "\n".join(lines)
        for line in lines:
            feedback.pushInfo(line)
        return {"OK": True, "REPORT": report}


class InstallEnvironmentAlgorithm(_Base):
    MODES = ["Install (does nothing if already installed)", "Upgrade SegUnify (keeps PyTorch)"]

    NAME = "install_environment"
    TITLE = "Install environment"
    HELP = (
        "Creates SegUnify's own Python environment and sets it in Processing > Options > Providers > "
        "SegUnify; run it once after installing the plugin. QGIS's own Python is never changed.\n\n"
        "Environment folder: where the environment goes (any path, spaces and accents are fine; about 1 GB "
        "with the CPU build of PyTorch, 5-6 GB with the CUDA build). The default is a per-user folder; the "
        f"SEGUNIFY_ENV_DIR variable moves it.\nMode: Install does nothing when the folder already holds this "
        "plugin's SegUnify; Upgrade SegUnify replaces SegUnify only (after updating the plugin).\n"
        "Offline: folder of wheels: wheels made by scripts/build_offline_bundle.py on a machine with internet; "
        "nothing is then downloaded.\n\nAdvanced: Torch source: empty or auto picks the CUDA build of "
        "PyTorch when nvidia-smi reports an NVIDIA GPU and the CPU build otherwise; cpu, registry (pip's "
        f"configured index), an index URL (e.g. https://download.pytorch.org/whl/cu126 for older drivers) "
        f"or a folder of wheels; the {installer.ENV_TORCH_SOURCE} variable sets the same. Base Python: the "
        "Python the environment is made from (default: QGIS's own; on Windows the one beside QGIS or on "
        "PATH).\n\nProxies: HTTPS_PROXY / PIP_CERT and QGIS's proxy (Settings > Options > Network) are "
        "used. Cancel removes the unfinished environment. Takes 2-10 minutes (downloads 0.3-3 GB).")

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API
        self.addParameter(QgsProcessingParameterFile("TARGET", "Environment folder", behavior=FILE_FOLDER,
                                                     defaultValue=installer.default_target()))
        self.addParameter(QgsProcessingParameterEnum("MODE", "Mode", options=self.MODES, defaultValue=0))
        self.addParameter(QgsProcessingParameterFile("WHEELS", "Offline: folder of wheels (empty: download)",
                                                     behavior=FILE_FOLDER, optional=True))
        self.addParameter(_advanced(QgsProcessingParameterString("TORCH_SOURCE", "Torch source (empty: auto)",
                                                                 defaultValue="", optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterFile("PYTHON", "Base Python (empty: QGIS's own)",
                                                               optional=True)))
        self.addOutput(QgsProcessingOutputString("PYTHON", "Python of the environment"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API
        mode = ("install", "upgrade")[self.parameterAsEnum(parameters, "MODE", context)]
        try:
            python = installer.Installer(
                self.parameterAsFile(parameters, "TARGET", context), feedback, mode=mode,
                wheels=self.parameterAsFile(parameters, "WHEELS", context),
                torch_choice=self.parameterAsString(parameters, "TORCH_SOURCE", context),
                base_python=self.parameterAsFile(parameters, "PYTHON", context), extra_env=_qgis_proxy()).run()
        except Cancelled:
            raise QgsProcessingException("Cancelled; the unfinished environment was removed.") from None
        except (installer.InstallError, runner.EnvironmentMissing) as exc:
            raise QgsProcessingException(str(exc)) from None
        from processing.core.ProcessingConfig import ProcessingConfig

        ProcessingConfig.setSettingValue(runner.SETTING_PYTHON, python)
        feedback.pushInfo(f"Set Processing > Options > Providers > SegUnify > Python executable to {python}")
        return {"PYTHON": python}


def _qgis_proxy() -> dict:
    """QGIS's HTTP proxy (Settings > Options > Network) for pip, unless the environment sets one."""
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return {}
    settings = QgsSettings()
    if str(settings.value("proxy/proxyEnabled", False)).lower() not in ("true", "1"):
        return {}
    host, port = settings.value("proxy/proxyHost", ""), settings.value("proxy/proxyPort", "")
    if not host or "Socks" in str(settings.value("proxy/proxyType", "")):
        return {}
    user, password = settings.value("proxy/proxyUser", ""), settings.value("proxy/proxyPassword", "")
    auth = f"{user}:{password}@" if user else ""
    url = f"http://{auth}{host}" + (f":{port}" if port else "")
    return {"HTTPS_PROXY": url, "HTTP_PROXY": url}
