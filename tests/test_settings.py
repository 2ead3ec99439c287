"""segunify_core/settings.py is the one source of every default, choice list and range: the API's
dataclasses and functions, the CLI's options, the QGIS plugin's parameters and the benchmarks read
it, and a default named like a setting is never typed again as a literal."""

import ast
import dataclasses
from pathlib import Path

import click
import torch

from segunify_core import settings

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("segunify_core", "cli", "qgis_plugin", "bench")
# A parameter whose name differs from its setting's.
ALIASES = {"potsdam_split": "POTSDAM_TRAIN_SPLIT", "masks": "DROPOUT_MASKS"}
# Parameters named like a setting that are another quantity (file, function or option: why).
NOT_THE_SETTING = {
    ("segunify_core/method/crf.py", "__init__", "stride"): "the CRF's kernel subsampling, not the window stride",
    ("segunify_core/training/trainer.py", "train", "resume"): "the training checkpoint (train --resume), not a job's parts",
    ("segunify_core/training/distill.py", "distill", "resume"): "the distillation state (distill --resume), not a job's parts",
    ("bench/local_sets.py", "--batch_size", "batch_size"): "the benchmark's batch",
    ("bench/run.py", "--device", "device"): "which family of figures runs (the CPU suite or bench/gpu.py)",
    ("bench/gpu.py", "run", "device"): "the GPU figures (cpu only for their dry run)",
    ("segunify_core/training/feature_cache.py", "build_cache", "batch_size"): "windows per backbone call while caching",
    ("segunify_core/training/feature_cache.py", "compute_shard", "batch_size"): "windows per backbone call while caching",
    ("segunify_core/training/trainer.py", "cluster_shares", "batch_size"): "windows per labelling call",
    ("segunify_core/training/evaluation.py", "score", "batch_size"): "validation images per backbone call",
    ("segunify_core/synthetic.py", "make_scene", "seed"): "synthetic test scenes, not training",
    ("segunify_core/synthetic.py", "make_blobs", "seed"): "synthetic test scenes, not training",
    ("bench/common.py", "blob_tile", "seed"): "generated benchmark rasters",
    ("bench/local_sets.py", "--steps", "steps"): "steps per paired round of the benchmark",
    ("bench/local_sets.py", "paired_cost", "steps"): "steps per paired round of the benchmark",
    ("bench/train_cache.py", "--steps", "steps"): "steps timed by the benchmark",
    ("bench/scale.py", "--block", "block"): "the part side of the speed-up run",
    ("bench/scale.py", "run", "block"): "the part side of the speed-up run",
}


def _literal(node: ast.AST) -> bool:
    """A number, string or bool typed in place (None, names and attributes are not)."""
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return isinstance(node, ast.Constant) and node.value is not None


def _option_name(call: ast.Call) -> str | None:
    for arg in call.args:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
            return arg.value.split("/")[0][2:].replace("-", "_")
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.isupper():
            return arg.value.lower()  # a QGIS parameter's name
    return None


def _defaults(tree: ast.AST):
    """(context, name, default expression) for every default in a module: function parameters,
    dataclass fields, click/argparse options (default=) and QGIS parameters (defaultValue= or the
    fourth positional argument of a number parameter)."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            for arg, default in pairs:
                yield node.name, arg.arg, default
        elif isinstance(node, ast.ClassDef):
            for statement in node.body:
                if isinstance(statement, ast.AnnAssign) and statement.value is not None \
                        and isinstance(statement.target, ast.Name):
                    yield node.name, statement.target.id, statement.value
        elif isinstance(node, ast.Call):
            name = _option_name(node)
            if name is None:
                continue
            for keyword in node.keywords:
                if keyword.arg in ("default", "defaultValue"):
                    yield "--" + name, name, keyword.value
            if ast.unparse(node.func).endswith("QgsProcessingParameterNumber") and len(node.args) >= 4:
                yield "--" + name, name, node.args[3]


def test_no_default_named_like_a_setting_is_typed_again():
    """Every default whose name is a setting's (window, steps, dropout, precision, ...) reads
    settings (or a dataclass that does); a literal there is a second copy that drifts."""
    retyped, excused = [], set()
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.name == "settings.py":
                continue
            rel = path.relative_to(REPO).as_posix()
            for context, name, default in _defaults(ast.parse(path.read_text())):
                setting = ALIASES.get(name, name.upper())
                if not (hasattr(settings, setting) and _literal(default)):
                    continue
                if (rel, context, name) in NOT_THE_SETTING:
                    excused.add((rel, context, name))
                else:
                    retyped.append(f"{rel}: {context} {name} = {ast.unparse(default)} (settings.{setting})")
    assert not retyped, "defaults typed again instead of read from settings:\n" + "\n".join(retyped)
    stale = sorted(set(NOT_THE_SETTING) - excused)  # an exception for code that is gone would hide a new retyping
    assert not stale, f"NOT_THE_SETTING lists defaults that no longer exist: {stale}"


def test_the_scan_finds_a_retyped_default():
    """The scan above is not vacuous: a retyped default of each kind is found."""
    code = ("def f(window: int = 320): ...\n"
            "class C:\n    dropout: float = 0.2\n"
            "opt = click.option('--steps', default=3000)\n"
            "p = QgsProcessingParameterNumber('STRIDE', 'Stride', INT, 256)\n")
    found = {(name, ast.unparse(default)) for _, name, default in _defaults(ast.parse(code))}
    assert {("window", "320"), ("dropout", "0.2"), ("steps", "3000"), ("stride", "256")} <= found


def _field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_every_dataclass_and_constructor_default_is_the_settings_value():
    import inspect

    from segunify_core import SegmentOptions, SelfFitOptions, TrainConfig
    from segunify_core.method.compressor import Compressor
    from segunify_core.method.losses import energy
    from segunify_core.method.model import ModelConfig

    names = {  # dataclass -> field -> setting, where the names differ
        TrainConfig: {"window": "TRAIN_WINDOW", "potsdam_split": "POTSDAM_TRAIN_SPLIT"},
        ModelConfig: {},
        SelfFitOptions: {"steps": "FIT_STEPS", "batch_size": "FIT_BATCH_SIZE", "max_windows": "FIT_WINDOWS",
                         "feature_crop": "FIT_FEATURE_CROP", "classes": "MAP_CLASSES"},  # self-fit maps: MAP_CLASSES
        SegmentOptions: {"batch_size": "SEGMENT_BATCH_SIZE"},
    }
    not_settings = {"bands", "gsd", "feature_crop", "preset", "preset_overrides", "cache_dir", "probabilities",
                    "preview", "device", "overwrite", "cog", "native_resolution", "feature_dim", "patch_size"}
    for cls, renamed in names.items():
        for field, value in _field_defaults(cls).items():
            setting = renamed.get(field, field.upper())
            if field in not_settings and setting not in renamed.values():
                continue
            assert hasattr(settings, setting), f"{cls.__name__}.{field} has no setting {setting}"
            assert value == getattr(settings, setting), f"{cls.__name__}.{field}"
    assert ModelConfig().backbone == settings.BACKBONE
    for func in (Compressor.__init__, energy):
        for name, parameter in inspect.signature(func).parameters.items():
            setting = ALIASES.get(name, name.upper())
            if parameter.default is not inspect.Parameter.empty and parameter.default is not None:
                assert parameter.default == getattr(settings, setting), f"{func.__qualname__}({name})"


def test_choice_lists_are_the_settings_lists():
    from segunify_core.method.losses import PAIRINGS
    from segunify_core.training.datasets import POTSDAM_SPLITS
    from segunify_core.training.trainer import CHOICES, TrainConfig

    assert tuple(POTSDAM_SPLITS) == settings.POTSDAM_SPLITS
    assert set(PAIRINGS) == set(settings.PAIRINGS)
    assert set(settings.POTSDAM_TRAIN_SPLITS) <= set(settings.POTSDAM_SPLITS)
    for field, choices in CHOICES.items():
        assert getattr(TrainConfig(), field) in choices, field
    assert settings.EVAL_SPLIT in settings.POTSDAM_SPLITS and settings.PRECISION in settings.PRECISIONS


def _commands():
    from segunify_cli.main import cli

    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


# command -> option -> the setting it shows, where the name differs from the option's
CLI_NAMES = {
    "train": {"window": "TRAIN_WINDOW", "potsdam_split": "POTSDAM_TRAIN_SPLIT"},
    "tile-segment": {"batch_size": "SEGMENT_BATCH_SIZE", "fit_steps": "FIT_STEPS", "fit_windows": "FIT_WINDOWS"},
    "batch": {"batch_size": "SEGMENT_BATCH_SIZE"},
    "evaluate": {"batch_size": "EVAL_BATCH_SIZE", "split": "EVAL_SPLIT", "resolution": "EVAL_RESOLUTION"},
    "distill": {"steps": "DISTILL_STEPS", "batch_size": "DISTILL_BATCH_SIZE", "max_windows": "DISTILL_WINDOWS",
                "crop": "DISTILL_CROP", "lr": "DISTILL_LR", "checkpoint_every": "DISTILL_CHECKPOINT_EVERY"},
}
CLI_CHOICES = {"split": {"evaluate": "POTSDAM_SPLITS"}, "potsdam_split": "POTSDAM_TRAIN_SPLITS",
               "resolution": {"evaluate": "EVAL_RESOLUTIONS"}, "dropout_masks": {"train": "DROPOUT_MASKS_CHOICES"},
               "crf": "CRF_BACKENDS", "device": "DEVICES", "precision": "PRECISIONS", "lr_schedule": "LR_SCHEDULES",
               "ema_order": "EMA_ORDERS", "pairing": "PAIRINGS", "sampling": "SAMPLINGS", "resize": "RESIZE_MODES",
               "probabilities_dtype": "PROBABILITIES_DTYPES", "preset": None, "student": "STUDENTS"}


def test_every_click_default_and_choice_list_is_the_settings_value():
    """Each option with a default shows the value of the setting it names, each choice option the
    setting's list (`evaluate --split` included)."""
    checked = 0
    for command_name, command in _commands().items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.name is None:
                continue
            name = param.name
            setting = CLI_NAMES.get(command_name, {}).get(name, ALIASES.get(name, name.upper()))
            default = param.get_default(click.Context(command), call=False)
            if hasattr(settings, setting) and default is not None:  # None: no default on purpose
                expected = getattr(settings, setting)
                shown = param.type.convert(default, param, None)
                if isinstance(param.type, click.Choice) and isinstance(expected, int):
                    shown = int(shown)
                assert shown == expected, f"{command_name} --{name}: {default!r} != settings.{setting}"
                checked += 1
            if isinstance(param.type, click.Choice):
                choices = CLI_CHOICES.get(name, "missing")
                if isinstance(choices, dict):
                    choices = choices.get(command_name, "missing")
                if choices is None:
                    continue
                assert choices != "missing", f"{command_name} --{name}: which setting lists its choices?"
                expected = [str(c) for c in getattr(settings, choices)]
                assert list(param.type.choices) == expected, f"{command_name} --{name}"
    assert checked > 40


def test_one_resume_default_for_tile_segment_and_batch():
    from segunify_core import SegmentOptions

    commands = _commands()
    for name in ("tile-segment", "batch"):
        resume = next(p for p in commands[name].params if p.name == "resume")
        assert resume.default is settings.RESUME and resume.secondary_opts == ["--no-resume"], name
    assert SegmentOptions().resume is settings.RESUME


def test_api_precision_default_resolves_per_device(monkeypatch):
    """The API's precision default is the CLI's ("auto"), decided for the device the backbone is on
    when it runs, not fixed to float32 when it is built."""
    import inspect

    from segunify_core.files.model_file import load_model
    from segunify_core.method import backbone as backbone_module
    from segunify_core.method.backbone import choose_precision, create_backbone

    for func in (create_backbone, load_model, backbone_module.Backbone.__init__):
        assert inspect.signature(func).parameters["precision"].default == settings.PRECISION == "auto"
    model = create_backbone("vit_tiny_patch16_224", pretrained=False)
    assert model.requested_precision == "auto"
    for native in (False, True):
        monkeypatch.setattr(backbone_module, "cpu_has_native_bf16", lambda native=native: native)
        assert model.precision == ("bf16" if native else "fp32") == choose_precision("auto", torch.device("cpu"))
    if torch.cuda.is_available():
        assert model.to("cuda").precision == choose_precision("auto", torch.device("cuda")) != "fp32"
    assert create_backbone("vit_tiny_patch16_224", pretrained=False, precision="fp32").precision == "fp32"
    assert model.with_settings(precision="fp32").precision == "fp32"
