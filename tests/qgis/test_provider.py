"""The SegUnify Processing provider inside a headless QGIS, and through qgis_process.bin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import processing
import pytest
from conftest import REPO, CancelAt
from qgis.core import QgsApplication, QgsProcessingException, QgsRasterLayer

from qgis_plugin.core_settings import settings
from tests.helpers import wait_gone, with_made_up_setting

QGIS_PROCESS = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"


def test_provider_has_seven_algorithms():
    provider = QgsApplication.processingRegistry().providerById("segunify")
    assert provider is not None
    ids = sorted(a.id() for a in provider.algorithms())
    assert ids == ["segunify:check_environment", "segunify:classes", "segunify:distill",
                   "segunify:install_environment", "segunify:segment", "segunify:train",
                   "segunify:vectorize"]
    for alg in provider.algorithms():  # the help explains every parameter the dialog shows, by its label
        help_text = alg.shortHelpString().lower()
        for param in alg.parameterDefinitions():
            label = param.description().split(" (")[0]
            assert label.lower() in help_text, f"{alg.id()}: help does not explain '{label}'"


# Plugin parameter -> the CLI command and flag it becomes (processAlgorithm builds the same flags).
CLI_COMMAND = {"segunify:segment": "tile-segment", "segunify:train": "train", "segunify:vectorize": "vectorize",
               "segunify:distill": "distill"}
CLI_ARGUMENTS = {("segunify:distill", "MODEL"), ("segunify:distill", "FOLDER")}  # distill's MODEL and DATA
CLI_FLAG_ELSEWHERE = {("segunify:segment", "MIN_AREA"): ("vectorize", "--min-area")}  # Segment's polygons step
NOT_OPTIONS = {"INPUT", "OUTPUT", "OUTPUT_VECTOR"}  # CLI arguments (and train's -o/--output), not options
# The one deliberate difference (segunify_core/settings.py): the dialogs start analysts at MAP_CLASSES.
PLUGIN_DEFAULTS = {("segunify:segment", "CLASSES"): settings.MAP_CLASSES,
                   ("segunify:train", "CLASSES"): settings.MAP_CLASSES}
DUMP_CLI = '''
import json, click
from segunify_cli.main import cli
out = {}
for name, command in cli.commands.items():
    ctx = click.Context(command)
    out[name] = {max(p.opts, key=len): {"default": p.get_default(ctx), "flag": p.is_flag or bool(p.secondary_opts),
                                        "choices": list(getattr(p.type, "choices", None) or []) or None,
                                        "min": getattr(p.type, "min", None), "max": getattr(p.type, "max", None)}
                 for p in command.params if isinstance(p, click.Option)}
print(json.dumps(out, default=lambda unset: None))  # required options: click's 'no default' marker
'''


def _bound(value):
    """A QGIS number bound, None where QGIS means unbounded (+-DBL_MAX / int limits)."""
    return None if value is None or abs(value) > 2**31 - 2 else value


def test_plugin_parameters_match_the_cli():
    """Every parameter the Segment, Train and Vectorize dialogs show becomes a CLI flag the `segunify`
    command accepts, with the CLI's default, choices and range (the CLI's, read from the click options)."""
    from conftest import VENV_PYTHON
    from qgis.core import QgsProcessingParameterBoolean, QgsProcessingParameterEnum, QgsProcessingParameterNumber

    dump = subprocess.run([str(VENV_PYTHON), "-c", DUMP_CLI], capture_output=True, text=True, timeout=300)
    assert dump.returncode == 0, dump.stderr
    cli = json.loads(dump.stdout)
    compared = 0
    for alg_id, command in CLI_COMMAND.items():
        alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
        for param in alg.parameterDefinitions():
            name = param.name()
            if name in NOT_OPTIONS or (alg_id, name) in CLI_ARGUMENTS:
                continue
            where, flag = CLI_FLAG_ELSEWHERE.get((alg_id, name), (command, "--" + name.lower().replace("_", "-")))
            option = cli[where].get(flag)
            assert option is not None, f"{alg_id} {name}: `segunify {where}` has no {flag}"
            default = param.defaultValue()
            if isinstance(param, QgsProcessingParameterEnum):
                assert param.options() == option["choices"], f"{alg_id} {name}"
                assert param.options()[default] == option["default"], f"{alg_id} {name}"
            elif isinstance(param, QgsProcessingParameterBoolean):
                assert option["flag"] and default == option["default"], f"{alg_id} {name}"
            elif isinstance(param, QgsProcessingParameterNumber):
                expected = PLUGIN_DEFAULTS.get((alg_id, name), option["default"])
                assert default == expected, f"{alg_id} {name}: plugin {default}, expected {expected}"
                assert (_bound(param.minimum()), _bound(param.maximum())) == (option["min"], option["max"]), \
                    f"{alg_id} {name}: plugin range {param.minimum()}..{param.maximum()}, CLI {option['min']}..{option['max']}"
            elif default is not None:  # strings (BACKBONE)
                assert default == option["default"], f"{alg_id} {name}"
            else:  # optional files and bands: the CLI leaves them unset too
                assert option["default"] is None and param.flags() & param.FlagOptional, f"{alg_id} {name}"
            compared += 1
    assert compared == 42  # 13 Segment + 16 Train + 2 Vectorize + 11 Distil parameters
    tile = cli["tile-segment"]["--classes"]  # the dialogs' class count is one the CLI accepts
    assert tile["min"] <= settings.MAP_CLASSES <= tile["max"] and cli["train"]["--classes"]["default"] == settings.CLASSES


def test_a_declared_setting_reaches_the_segment_dialog(monkeypatch):
    """A setting added to settings.SegmentOptions alone is a Segment raster parameter (label and
    default from its declaration) and becomes its CLI flag."""
    from qgis.core import QgsProcessingContext, QgsProcessingParameterBoolean

    from qgis_plugin.algorithms import SegmentAlgorithm, declared_arguments

    monkeypatch.setattr(settings, "SegmentOptions", with_made_up_setting(settings))
    alg = SegmentAlgorithm()
    alg.initAlgorithm()
    param = alg.parameterDefinition("MADE_UP")
    assert isinstance(param, QgsProcessingParameterBoolean)
    assert param.description() == "Made up" and param.defaultValue() is False
    context = QgsProcessingContext()
    assert "--made-up" in declared_arguments(alg, settings.SegmentOptions, {"MADE_UP": True}, context)
    assert "--made-up" not in declared_arguments(alg, settings.SegmentOptions, {"MADE_UP": False}, context)


def test_segment_with_processing_run(samples, tiny_weights, tmp_path):
    out = tmp_path / "dir with spaces 'quotes' é" / "classes.tif"
    out.parent.mkdir()
    src = tmp_path / "ortho ü.tif"
    shutil.copy(samples / "rasterio/cogeo.tif", src)
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import QgsPalettedRasterRenderer, QgsProcessingContext, QgsProcessingOutputLayerDefinition, QgsProject

    project = QgsProject()
    context = QgsProcessingContext()
    context.setProject(project)
    loaded = []

    def on_finish(alg, context, feedback):
        """As the dialog does: load the output into the project; SegUnify's post-processor (_ApplyStyle)
        then applies the .qml beside the file. The test first renames class 2 in that .qml, so the
        layer's labels show whether the style was applied."""
        qml = out.with_suffix(".qml")
        qml.write_text(qml.read_text().replace('label="class 2"', 'label="class two"'))
        loaded.append(handleAlgorithmResults(alg, context, feedback, showResults=False))

    result = processing.run("segunify:segment", {
        "INPUT": str(src), "CLASSES": 3, "BACKBONE": "deit_tiny_patch16_224", "BACKBONE_WEIGHTS": str(tiny_weights),
        "WINDOW": 224, "STRIDE": 160, "OUTPUT": QgsProcessingOutputLayerDefinition(str(out), project),
        "OUTPUT_VECTOR": str(tmp_path / "polys.gpkg"), "MIN_AREA": 50.0}, onFinish=on_finish, context=context)
    assert result["OUTPUT"] == str(out)
    assert loaded == [True]
    styled = [layer for layer in project.mapLayers().values() if layer.source() == str(out)]
    assert len(styled) == 1 and isinstance(styled[0].renderer(), QgsPalettedRasterRenderer)
    assert [c.label for c in styled[0].renderer().classes()] == ["class 1", "class two", "class 3"]
    layer, source = QgsRasterLayer(str(out), "out"), QgsRasterLayer(str(src), "in")
    assert layer.isValid()
    assert layer.crs() == source.crs() and layer.extent() == source.extent()
    assert (layer.width(), layer.height()) == (source.width(), source.height())
    assert out.with_suffix(".qml").exists()
    from qgis.core import QgsVectorLayer, QgsWkbTypes

    polygons = QgsVectorLayer(result["OUTPUT_VECTOR"], "polys", "ogr")
    assert polygons.isValid() and polygons.geometryType() == QgsWkbTypes.PolygonGeometry
    assert polygons.crs() == source.crs()
    features = list(polygons.getFeatures())
    assert features, "the segmentation's classes became polygons"
    names = {f["class_id"]: f["class_name"] for f in features}
    assert set(names) <= {1, 2, 3} and len(names) >= 2, names
    assert all(names[i] == f"class {i}" for i in names), "the model's class names (the default legend)"
    assert min(f["area_m2"] for f in features) >= 50.0, "polygons under MIN_AREA (50 m2) are dropped"
    areas = [f.geometry().area() for f in features]
    extent = source.extent()
    assert all(extent.contains(f.geometry().boundingBox()) for f in features)
    assert sum(areas) > 0.9 * extent.area(), "the polygons cover the raster (but for dropped specks)"


def test_cancel_kills_child_and_leaves_no_output(sample_copy, tiny_weights, tmp_path):
    out = tmp_path / "classes.tif"
    feedback = CancelAt(60.0)  # self-fit phases take 0-50 %; 60 % is inside the segmentation
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        processing.run("segunify:segment", {
            "INPUT": str(sample_copy("rasterio/cogeo.tif")), "CLASSES": 3, "BACKBONE": "deit_tiny_patch16_224",
            "BACKBONE_WEIGHTS": str(tiny_weights), "WINDOW": 224, "STRIDE": 96, "BATCH_SIZE": 1,
            "OUTPUT": str(out)}, feedback=feedback)
    assert feedback.cancelled_at is not None
    assert wait_gone(feedback.child_pid()), "the SegUnify child process must be gone"
    assert not out.exists()
    assert os.listdir(tmp_path) == [], "no partial files either"


def test_check_environment_reports(set_python):
    ok = processing.run("segunify:check_environment", {})
    assert ok["OK"] is True and "SegUnify" in ok["REPORT"] and "Device" in ok["REPORT"]
    set_python("/usr/bin/python3")  # QGIS's own Python: no SegUnify there
    missing = processing.run("segunify:check_environment", {})
    assert missing["OK"] is False
    assert "has no SegUnify installed" in missing["REPORT"] and "Install environment" in missing["REPORT"]
    assert "Processing > Options > Providers > SegUnify" in missing["REPORT"]
    set_python("")
    os.environ["SEGUNIFY_PYTHON"] = "/nonexistent/python"  # QGIS refuses such a path in the setting itself
    try:
        assert "does not exist" in processing.run("segunify:check_environment", {})["REPORT"]
    finally:
        os.environ["SEGUNIFY_PYTHON"] = str(runner_python())


def runner_python():
    from conftest import VENV_PYTHON

    return VENV_PYTHON


def test_missing_environment_is_one_clear_error(set_python, tmp_path, monkeypatch):
    set_python("")
    monkeypatch.setenv("SEGUNIFY_PYTHON", "/nonexistent/python")
    (tmp_path / "x.tif").write_bytes(b"whatever")
    with pytest.raises(QgsProcessingException, match="does not exist or is not executable"):
        processing.run("segunify:vectorize", {"INPUT": str(tmp_path / "x.tif"), "OUTPUT": str(tmp_path / "v.gpkg")})
    assert not (tmp_path / "v.gpkg").exists()


def qgis_process(plugin_dir, *args, timeout=900):
    env = {**os.environ, "QGIS_PLUGINPATH": str(plugin_dir)}
    subprocess.run([QGIS_PROCESS, "plugins", "enable", "segunify"], env=env, capture_output=True, timeout=300)
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_qgis_process_list_and_help(plugin_dir):
    listed = qgis_process(plugin_dir, "list")
    for alg in ("segunify:segment", "segunify:train", "segunify:vectorize", "segunify:check_environment"):
        assert alg in listed.stdout
    helped = qgis_process(plugin_dir, "help", "segunify:segment")
    assert helped.returncode == 0
    for param in ("INPUT", "BANDS", "MODEL", "CLASSES", "WINDOW", "STRIDE", "CRF", "FLIP", "BATCH_SIZE",
                  "NATIVE_RESOLUTION", "BACKBONE", "BACKBONE_WEIGHTS", "DEVICE", "OUTPUT", "OUTPUT_VECTOR", "MIN_AREA"):
        assert f"{param}:" in helped.stdout, param
    assert "Speed:" in helped.stdout


def test_qgis_process_segment(plugin_dir, sample_copy, tiny_weights, tmp_path):
    out = tmp_path / "classes.tif"
    src = sample_copy("rasterio/cogeo.tif")
    run = qgis_process(plugin_dir, "run", "segunify:segment", "--", f"INPUT={src}",
                       "CLASSES=3", "BACKBONE=deit_tiny_patch16_224", f"BACKBONE_WEIGHTS={tiny_weights}",
                       "WINDOW=224", "STRIDE=160", f"OUTPUT={out}")
    assert run.returncode == 0, run.stdout + run.stderr
    layer = QgsRasterLayer(str(out), "out")
    source = QgsRasterLayer(str(src), "in")
    assert layer.crs() == source.crs() and layer.extent() == source.extent()
    assert (layer.width(), layer.height()) == (source.width(), source.height())


def test_qgis_process_bad_input(plugin_dir, tiny_weights, tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("this is a text file, not a raster\n")
    out = tmp_path / "classes.tif"
    run = qgis_process(plugin_dir, "run", "segunify:segment", "--", f"INPUT={bad}", "CLASSES=3",
                       "BACKBONE=deit_tiny_patch16_224", f"BACKBONE_WEIGHTS={tiny_weights}", f"OUTPUT={out}")
    assert run.returncode != 0
    assert "is not a raster GDAL can read" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["notes.tif"]


# The dialogs in docs/, as scripts/dialog_screenshot.py renders them (its sizes) and the README shows them.
SCREENSHOTS = {"segment": ("segment_dialog.png", 1000, 760), "install_environment": ("install_dialog.png", 900, 560)}


def test_screenshot_of_dialog_is_in_docs(tmp_path):
    """docs/*_dialog.png are today's dialogs: a fresh rendering by scripts/dialog_screenshot.py (at its
    sizes) matches each committed one, and the README shows them."""
    from qgis.PyQt.QtGui import QImage

    readme = (REPO / "README.md").read_text()
    for name, (png, width, height) in SCREENSHOTS.items():
        image = QImage(str(REPO / "docs" / png))
        assert (image.width(), image.height()) == (width, height), png
        fresh_png = tmp_path / png
        subprocess.run([sys.executable, str(REPO / "scripts" / "dialog_screenshot.py"), name, str(fresh_png),
                        str(width), str(height)], check=True, capture_output=True, timeout=300,
                       env={**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / f"profile-{name}")})
        fresh = QImage(str(fresh_png))
        assert (fresh.width(), fresh.height()) == (width, height), png
        differ = sum(image.pixel(x, y) != fresh.pixel(x, y) for x in range(0, width, 2) for y in range(0, height, 2))
        share = differ / ((width + 1) // 2 * ((height + 1) // 2))
        assert share < 0.02, (f"{png} is stale: {share:.1%} of its pixels differ from today's dialog; rerender it "
                              f"with scripts/dialog_screenshot.py {name} docs/{png} {width} {height}")
        assert f"docs/{png}" in readme
    # The QGIS install section is three steps: the zip, Install environment, Segment.
    steps = readme.split("### Install in three steps", 1)[1].split("![", 1)[0]
    numbered = [line for line in steps.splitlines() if line[:3] in ("1. ", "2. ", "3. ", "4. ")]
    assert [line[:30] for line in numbered] == ["1. **Install the zip**: *Plugi", "2. **Run Install environment**",
                                                "3. **Run Segment raster** on a"]


def test_segment_dialog_shows_every_parameter_with_its_default():
    """The dialog the screenshot shows: a widget per parameter, holding the settings' defaults and ranges."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    alg = QgsApplication.processingRegistry().createAlgorithmById("segunify:segment")
    dialog = AlgorithmDialog(alg)
    dialog.show()
    QgsApplication.processEvents()
    try:
        wrappers = dialog.mainWidget().wrappers
        assert sorted(wrappers) == sorted(p.name() for p in alg.parameterDefinitions())
        widget = {name: wrapper.wrappedWidget() for name, wrapper in wrappers.items()}
        assert (widget["CLASSES"].value(), widget["CLASSES"].minimum(), widget["CLASSES"].maximum()) == (
            settings.MAP_CLASSES, settings.MIN_CLASSES, settings.MAX_CLASSES)
        assert (widget["WINDOW"].value(), widget["STRIDE"].value()) == (settings.WINDOW, settings.STRIDE)
        assert widget["CRF"].currentText() == settings.CRF and widget["DEVICE"].currentText() == settings.DEVICE
        assert [widget["CRF"].itemText(i) for i in range(widget["CRF"].count())] == list(settings.CRF_BACKENDS)
        assert widget["FLIP"].isChecked() is settings.FLIP and widget["BACKBONE"].currentText() == settings.BACKBONE
    finally:
        dialog.close()


def test_train_then_segment_with_model_then_vectorize(samples, sample_copy, tiny_weights, tmp_path):
    folder = tmp_path / "orthos"
    folder.mkdir()
    for name in ("rgb1.tif", "rgb2.tif"):
        shutil.copy(samples / "rasterio" / name, folder / name)
    model = tmp_path / "model.safetensors"
    trained = processing.run("segunify:train", {
        "INPUT": str(folder), "CLASSES": 3, "STEPS": 5, "BATCH_SIZE": 4, "WINDOW": 224, "MAX_WINDOWS": 8,
        "BACKBONE": "deit_tiny_patch16_224", "BACKBONE_WEIGHTS": str(tiny_weights), "OUTPUT": str(model)})
    assert trained["OUTPUT"] == str(model) and model.stat().st_size > 0
    classes = tmp_path / "classes.tif"
    processing.run("segunify:segment", {"INPUT": str(sample_copy("rasterio/rgb3.tif")), "MODEL": str(model),
                                        "BACKBONE_WEIGHTS": str(tiny_weights), "OUTPUT": str(classes)})
    assert QgsRasterLayer(str(classes), "c").isValid()
    polygons = processing.run("segunify:vectorize", {"INPUT": str(classes), "MIN_AREA": 0.0,
                                                     "OUTPUT": str(tmp_path / "polys.gpkg")})
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(polygons["OUTPUT"], "p", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    assert "class_id" in layer.fields().names() and "area_m2" in layer.fields().names()


def test_class_table_becomes_cli_arguments():
    from qgis_plugin.algorithms import legend_arguments

    table = ["1", "road", "", "", "2", "roof", "", "", "3", "", "", "2", "4", "vegetation", "#00ff00", "",
             "5", "", "", "4", "6", "water", "#c0392b", "", "", "", "", ""]
    assert legend_arguments(table) == ["--name", "1=road", "--colour", "4=#00ff00", "--name", "6=water", "--colour",
                                       "6=#c0392b", "--merge", "2,3=roof", "--merge", "4,5=vegetation"]
    with pytest.raises(QgsProcessingException, match="whole numbers"):
        legend_arguments(["x", "road", "", ""])
    with pytest.raises(QgsProcessingException, match="4 columns per row"):
        legend_arguments(["1", "road", ""])
    with pytest.raises(QgsProcessingException, match="keeps no name"):
        legend_arguments(["3", "trees", "", "2"])


def test_qgis_process_name_and_merge_then_segment(plugin_dir, sample_copy, tiny_weights, tmp_path):
    """A self-fitted 6-cluster model merged to 4 named classes through qgis_process.bin; the segmented
    layer and the polygons carry the names."""
    from conftest import VENV_PYTHON
    from qgis.core import QgsVectorLayer

    src = sample_copy("rasterio/cogeo.tif")
    six = tmp_path / "six.safetensors"
    fit = subprocess.run([str(VENV_PYTHON), "-m", "segunify_cli", "tile-segment", str(src), str(tmp_path / "fit.tif"),
                          "--classes", "6", "--fit-steps", "20", "--fit-windows", "8", "--no-flip", "--window", "224",
                          "--stride", "224", "--backbone", "deit_tiny_patch16_224", "--backbone-weights",
                          str(tiny_weights), "--device", "cpu", "--save-model", str(six), "--quiet"],
                         capture_output=True, text=True, timeout=900)
    assert fit.returncode == 0, fit.stderr
    before = six.read_bytes()
    four = tmp_path / "four.safetensors"
    table = "1,road,,,2,roof,,,3,,,2,4,vegetation,,,5,,,4,6,water,#c0392b,"
    run = qgis_process(plugin_dir, "run", "segunify:classes", "--", f"MODEL={six}", f"TABLE={table}",
                       f"OUTPUT={four}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "vegetation" in run.stdout and four.is_file() and six.read_bytes() == before
    names = ["road", "roof", "vegetation", "water"]
    out, vector = tmp_path / "classes.tif", tmp_path / "polys.gpkg"
    run = qgis_process(plugin_dir, "run", "segunify:segment", "--", f"INPUT={src}", f"MODEL={four}",
                       f"BACKBONE_WEIGHTS={tiny_weights}", "WINDOW=224", "STRIDE=224", "FLIP=false", f"OUTPUT={out}",
                       f"OUTPUT_VECTOR={vector}")
    assert run.returncode == 0, run.stdout + run.stderr
    layer = QgsRasterLayer(str(out), "classes")  # names come with the raster itself (GDAL category names)
    assert [label for label, _ in layer.renderer().legendSymbologyItems()] == names
    assert layer.renderer().legendSymbologyItems()[3][1].name() == "#c0392b"
    layer.loadNamedStyle(str(out.with_suffix(".qml")))  # what Segment applies to the loaded layer
    assert [c.label for c in layer.renderer().classes()] == names
    polygons = QgsVectorLayer(str(vector), "p", "ogr")
    assert polygons.isValid() and "class_name" in polygons.fields().names()
    found = {f["class_name"] for f in polygons.getFeatures()}
    assert found <= set(names) and len(found) >= 2


def test_distil_on_a_sample_then_segment_with_the_fast_model(sample_copy, tiny_weights, tmp_path):
    """Train a tiny teacher, name its classes, distil it on a sample raster, segment with the fast model:
    the class raster carries the teacher's legend names."""
    src = sample_copy("rasterio/rgb1.tif")
    teacher, named, fast = tmp_path / "teacher.safetensors", tmp_path / "named.safetensors", tmp_path / "fast.safetensors"
    processing.run("segunify:train", {
        "INPUT": str(src.parent), "CLASSES": 3, "STEPS": 5, "BATCH_SIZE": 4, "WINDOW": 224, "MAX_WINDOWS": 4,
        "BACKBONE": "deit_tiny_patch16_224", "BACKBONE_WEIGHTS": str(tiny_weights), "OUTPUT": str(teacher)})
    processing.run("segunify:classes", {"MODEL": str(teacher), "TABLE": ["1", "roofs", "", "", "2", "fields", "", "",
                                                                           "3", "water", "", ""],
                                        "OUTPUT": str(named)})
    result = processing.run("segunify:distill", {
        "MODEL": str(named), "INPUT": str(src), "STUDENT": 0, "STEPS": 4, "BATCH_SIZE": 2, "MAX_WINDOWS": 2,
        "CROP": 96, "BACKBONE_WEIGHTS": str(tiny_weights), "OUTPUT": str(fast)})
    assert result["OUTPUT"] == str(fast) and fast.stat().st_size > 0
    classes = tmp_path / "fast_classes.tif"
    processing.run("segunify:segment", {"INPUT": str(src), "MODEL": str(fast), "OUTPUT": str(classes)})
    layer = QgsRasterLayer(str(classes), "c")  # names come with the raster itself (GDAL category names)
    assert layer.isValid()
    assert [label for label, _ in layer.renderer().legendSymbologyItems()] == ["roofs", "fields", "water"]
