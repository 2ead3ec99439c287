"""Every user-facing setting's default, choices and range, defined once.

The API's dataclasses (TrainConfig, ModelConfig, SelfFitOptions, SegmentOptions), the CLI's click
options and the QGIS plugin's Processing parameters all read their values from here.

Standard library only: the QGIS plugin loads this very file by path in QGIS's own Python (from the
repository checkout, or from the copy scripts/build_plugin.py puts in the plugin), where torch and
the rest of segunify_core must never be imported. (No `from __future__ import annotations` either:
the dataclasses below are built while the plugin loads the file outside sys.modules.)

Environment variables are read here too, by `environment()` only (nowhere else in the core or the CLI).
"""

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

DINOV3_LICENCE = "DINOv3 License"  # must be accepted to download the weights; SegUnify never redistributes them
# Backbones: the short names users know from the DINO papers -> timm's published copy of the weights,
# patch size, feature channels, description, licence of the weights. registry.BACKBONES is built from
# these rows; any timm ViT or Eva name is accepted too. The normalisation (mean, std) is the one of the
# weights' pretrained config in timm (the part of the timm name after the dot names the weights).
BACKBONES = (
    ("dino_vits8", "vit_small_patch8_224.dino", 8, 384, "DINO ViT-S/8 (default)", "Apache-2.0"),
    ("dino_vits16", "vit_small_patch16_224.dino", 16, 384, "DINO ViT-S/16", "Apache-2.0"),
    ("dino_vitb8", "vit_base_patch8_224.dino", 8, 768, "DINO ViT-B/8 (Potsdam reference)", "Apache-2.0"),
    ("dino_vitb16", "vit_base_patch16_224.dino", 16, 768, "DINO ViT-B/16", "Apache-2.0"),
    ("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", 14, 384, "DINOv2 ViT-S/14", "Apache-2.0"),
    ("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", 14, 768, "DINOv2 ViT-B/14", "Apache-2.0"),
    ("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2.lvd142m", 14, 384, "DINOv2 ViT-S/14, 4 registers",
     "Apache-2.0"),
    ("dinov2_vitb14_reg", "vit_base_patch14_reg4_dinov2.lvd142m", 14, 768, "DINOv2 ViT-B/14, 4 registers",
     "Apache-2.0"),
    ("dinov3_vits16", "vit_small_patch16_dinov3.lvd1689m", 16, 384, "DINOv3 ViT-S/16 (web images)", DINOV3_LICENCE),
    ("dinov3_vits16plus", "vit_small_plus_patch16_dinov3.lvd1689m", 16, 384, "DINOv3 ViT-S+/16 (web images)",
     DINOV3_LICENCE),
    ("dinov3_vitb16", "vit_base_patch16_dinov3.lvd1689m", 16, 768, "DINOv3 ViT-B/16 (web images)", DINOV3_LICENCE),
    ("dinov3_vitl16", "vit_large_patch16_dinov3.lvd1689m", 16, 1024, "DINOv3 ViT-L/16 (web images)", DINOV3_LICENCE),
    ("dinov3_vitl16_sat", "vit_large_patch16_dinov3.sat493m", 16, 1024, "DINOv3 ViT-L/16 (satellite images, "
     "SAT-493M)", DINOV3_LICENCE),
)
BACKBONE = "dino_vits8"
BACKBONE_NAMES = tuple(row[0] for row in BACKBONES)

# Where and how the model runs.
DEVICES = ("auto", "cpu", "cuda")
DEVICE = "auto"
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bfloat16 where the hardware runs it natively
PRECISION = "auto"
CRF_BACKENDS = ("none", "auto", "pydensecrf", "torch")  # the plugin's list shows them in this order
CRF = "none"
FLIP = True  # average each window's codes with its horizontal mirror

# Classes. Two defaults on purpose: CLASSES is the method's K (Potsdam-3, the benchmark it is measured
# on), the default of `segunify train` and of the API's TrainConfig. MAP_CLASSES is where self-fit
# (`tile-segment` without --model, SelfFitOptions, Segment raster), Train model and scripts/demo.sh
# start an analyst mapping an unknown orthophoto: a couple more clusters than the usual land-cover
# classes, to be named and merged into a legend (Name and merge classes).
CLASSES = 3
MAP_CLASSES = 5
MIN_CLASSES = 2
MAX_CLASSES = 255  # class rasters are uint8 with 0 = nodata
EXTRA_CLUSTERS = 0
LOCAL_SETS = 1  # local prototype sets learning against the one global set (1: the published model)

# Compressor and Labeler.
CODE_DIM = 64
DROPOUT = 0.2
# How training perturbs the features: "independent" draws three Dropout2d masks per step (the linear
# branch's input, the nonlinear branch's input, the features the affinities use), as the reference
# ran; "shared" draws one mask for all three.
DROPOUT_MASKS_CHOICES = ("independent", "shared")
DROPOUT_MASKS = "independent"
NONLINEAR = True
OUTER_SILU = False
POINTWISE = True  # pointwise centring of the feature affinities
TEMPERATURE = 0.1  # soft-assignment temperature tau
ALPHA = 0.998  # EMA momentum of the global prototypes
SHIFT_INTRA = 0.1  # closeness smoothness shift b1
SHIFT_INTER = 0.5  # cross-image smoothness shift b2
SEED = 0

# Training (`segunify train`, Train model).
TRAIN_WINDOW = 224  # px, the published training resolution
MIN_TRAIN_WINDOW = 32
STEPS = 3000
MIN_STEPS = 1
BATCH_SIZE = 32
MIN_BATCH_SIZE = 2  # cross-image smoothness pairs different images
MAX_WINDOWS = 2000
MIN_MAX_WINDOWS = 2
LR_COMPRESSOR = 1e-4
LR_LABELER = 5e-4
WEIGHT_DECAY = 1e-5  # Adam
# poly-step: lr * (1 - step/steps)^power at every step (the method's text); poly-epoch: the same factor
# advanced once per epoch, as the reference's framework stepped it; constant: no decay.
LR_SCHEDULES = ("poly-step", "poly-epoch", "constant")
LR_SCHEDULE = "poly-step"
POLY_POWER = 2.0
EMA_ORDERS = ("after", "before")  # global-prototype EMA after the optimiser step, or before backward
EMA_ORDER = "after"
PAIRINGS = ("derangement", "reference")  # cross-image partners (losses.PAIRINGS holds the functions)
PAIRING = "derangement"
# Which windows a step trains on. epoch: a new permutation of all windows each epoch, consecutive
# batches take consecutive slices, the last incomplete batch is dropped (the reference's
# DataLoader(shuffle=True, drop_last=True)); step: every step draws its batch independently.
SAMPLINGS = ("epoch", "step")
SAMPLING = "epoch"
# How training windows are resampled to the window size: "nearest" is the reference's Potsdam
# preprocessing (PIL nearest, pixel centres), "bilinear" is antialiased bilinear.
RESIZE_MODES = ("bilinear", "nearest")
RESIZE = "bilinear"
FIVE_CROP = False  # cut each image into four corners and the centre instead of random windows
CROP_RATIO = 0.5  # five-crop regions: this share of the shorter side
AMP = False  # float16 mixed precision on CUDA
CHECKPOINT_EVERY = 400  # steps between resumable training states
VAL_EVERY = 400  # steps between validation scores (with validation data)
MIN_INTERVAL = 1  # the least --checkpoint-every and --val-every
# Potsdam (STEGO/IIC layout) splits: test = labelled_test.txt, train = labelled_train.txt, val = the
# fixed validation subset of labelled_train that `train --val` uses, all = all.txt.
POTSDAM_SPLITS = ("test", "train", "unlabelled_train", "all_train", "all", "val")
POTSDAM_TRAIN_SPLITS = ("train", "unlabelled_train", "all_train")  # what training may read
POTSDAM_TRAIN_SPLIT = "all_train"

# Self-fit (a model fitted on the input itself): a short run on a few windows.
FIT_STEPS = 300
FIT_BATCH_SIZE = 16
FIT_WINDOWS = 64
MIN_FIT_WINDOWS = 1  # one window fits too: its mirror and random crops of it form the pairs
FIT_FEATURE_CROP = 28  # patches; random crops of the cached window grids keep steps cheap

# Segmenting (`segunify tile-segment` / `batch`, Segment raster).
WINDOW = 320  # model px
MIN_WINDOW = 32
MAX_WINDOW = 2048
STRIDE = 256  # model px
MIN_STRIDE = 8
MAX_STRIDE = 2048
SEGMENT_BATCH_SIZE = 4  # windows per backbone call
MIN_SEGMENT_BATCH_SIZE = 1
PROBABILITIES_DTYPES = ("float16", "uint8")
PROBABILITIES_DTYPE = "float16"
BLOCK = 4096  # source px per part side: a part runs for minutes on a CPU, seconds on a GPU
# Keep the finished parts of an interrupted run (tile-segment and batch alike). Off: an interrupted
# or cancelled run leaves nothing behind, and batch skips finished outputs anyway (--resume opts in).
RESUME = False

# Polygons (`segunify vectorize`, Vectorize classes).
MIN_AREA = 0.0  # square metres; 0 keeps every region
SIMPLIFY = 0.0  # CRS units; 0 keeps the pixel outlines

# Scoring (`segunify evaluate`).
EVAL_SPLIT = "test"  # Potsdam's labelled_test.txt (one of POTSDAM_SPLITS)
EVAL_RESOLUTIONS = (224, 320)  # px: resize the shorter side, centre crop; 224 is SegUnify's, 320 STEGO's
EVAL_RESOLUTION = 224
EVAL_BATCH_SIZE = 8


# Distilling (`segunify distill`, Distil a fast model): a small CNN trained on a model's probabilities.
STUDENTS = ("mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0", "resnet18")  # timm encoders
STUDENT = "mobilenetv3_large_100"
STUDENT_DECODER_DIM = 64
STUDENT_MULTIPLE = 32  # input sides: multiples of the encoders' total stride
STUDENT_WINDOW = 1088  # model px: tiles of 1024 px plus a 32 px halo on each side
STUDENT_STRIDE = 1024
DISTILL_STEPS = 1000
DISTILL_BATCH_SIZE = 8
DISTILL_WINDOWS = 256  # teacher windows sampled from the data (probabilities cached on disk)
DISTILL_CROP = 256  # model px: the student trains on random crops of the teacher's windows
DISTILL_LR = 2e-3
DISTILL_CHECKPOINT_EVERY = 100

# --- The segmentation settings, declared once ------------------------------------------------------
# Each field of SegmentOptions and SelfFitOptions below is the one declaration of a setting: its type,
# default, help sentence, range or choices, and where it shows. The CLI builds its tile-segment and
# batch options from these fields (cli/options.py), the QGIS plugin its Segment raster parameters
# (qgis_plugin/algorithms.py), the core its resume fingerprint (the fields marked `result`) and the
# job spec the workers receive. Adding a setting here is all it takes for all of them to offer it.

TILE_SEGMENT, BATCH = "tile-segment", "batch"
SEGMENT_COMMANDS = (TILE_SEGMENT, BATCH)


def option(default: Any = dataclasses.MISSING, help: str | Mapping[str, str] = "", *, label: str | None = None,
           minimum: float | None = None, maximum: float | None = None, choices: Sequence[str] | None = None,
           result: bool = False, advanced: bool = False, commands: Sequence[str] = SEGMENT_COMMANDS,
           flag: str | None = None, negatable: bool = False, unset_on_cli: bool = False,
           plugin_default: Any = None, kind: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field that declares one setting.

    help: the --help sentence (or {command: sentence} where commands word it differently).
    label: the QGIS dialog's label; None keeps the setting out of the dialog. advanced: in the
    dialog's Advanced group. minimum/maximum/choices: the accepted values everywhere.
    result: the setting changes the output, so it is part of the resume fingerprint.
    commands: the CLI commands that offer it (empty: API only). flag: the CLI flag when it is not
    --field-name. negatable: a boolean with --x/--no-x (else a plain --x flag).
    unset_on_cli: the CLI option defaults to None, so the command sees whether it was given.
    plugin_default: the dialog's default where it deliberately differs. kind: "bands", "path" (a file)
    or "folder" for values the CLI parses or checks specially.
    """
    meta = {"help": help, "label": label, "minimum": minimum, "maximum": maximum,
            "choices": tuple(choices) if choices else None, "result": result, "advanced": advanced,
            "commands": tuple(commands), "flag": flag, "negatable": negatable, "unset_on_cli": unset_on_cli,
            "plugin_default": plugin_default, "kind": kind, "metavar": metavar}
    return dataclasses.field(default=default, metadata={"segunify": meta})


def declared(cls: type) -> list[tuple[dataclasses.Field, dict[str, Any]]]:
    """The declared settings of an options class: (field, metadata) in declaration order."""
    return [(f, f.metadata["segunify"]) for f in dataclasses.fields(cls) if "segunify" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
    meta = field.metadata["segunify"]
    return meta["flag"] or "--" + field.name.replace("_", "-")


def help_for(field: dataclasses.Field, command: str) -> str:
    text = field.metadata["segunify"]["help"]
    return text if isinstance(text, str) else text.get(command, "")


def result_values(options: Any) -> dict[str, Any]:
    """The values of the settings that define the result: what the resume fingerprint covers."""
    return {f.name: getattr(options, f.name) for f, meta in declared(type(options)) if meta["result"]}


def as_json_dict(options: Any) -> dict[str, Any]:
    return {f.name: list(v) if isinstance(v := getattr(options, f.name), tuple) else v
            for f in dataclasses.fields(options)}


class Declared:
    """Shared behaviour of the declared options: paths kept as text and sequences as tuples, so the
    options are frozen, hashable and JSON-serialisable."""

    def __post_init__(self) -> None:
        for f, _ in declared(type(self)):
            value = getattr(self, f.name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, f.name, os.fspath(value))
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        klass: Any = cls  # a dataclass: every subclass below is one
        return klass(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(klass)}})


@dataclasses.dataclass(frozen=True)
class SegmentOptions(Declared):
    """How a raster is segmented, and which outputs beside the class raster are written."""

    window: int = option(WINDOW, "Window size in model pixels.", label="Window size (model px)",
                         minimum=MIN_WINDOW, maximum=MAX_WINDOW, result=True)
    stride: int = option(STRIDE, "Window stride in model pixels.", label="Stride (model px)", minimum=MIN_STRIDE,
                         maximum=MAX_STRIDE, result=True)
    batch_size: int = option(SEGMENT_BATCH_SIZE, "Windows per backbone call.", label="Windows per batch",
                             minimum=MIN_SEGMENT_BATCH_SIZE, advanced=True)
    flip: bool = option(FLIP, "Average the codes of each window and its horizontal flip.", label="Flip averaging",
                        negatable=True, result=True)
    native_resolution: bool = option(
        False, "Do not resample the input to the model's GSD.", result=True, advanced=True,
        label="Keep native resolution (do not resample to the model's GSD)")
    bands: tuple[int, ...] | None = option(
        None, "Bands to use, e.g. 1,2,3 or 1 (repeated as grey). Default: the first three, or the single band.",
        label="Bands (one or three)", kind="bands", result=True)
    probabilities: str | None = option(None, "Also write the blended class probabilities to this GeoTIFF.",
                                       commands=(TILE_SEGMENT,), kind="path", result=True)
    probabilities_dtype: str = option(PROBABILITIES_DTYPE, "Storage of the probabilities (uint8: 0..255 scaled).",
                                      choices=PROBABILITIES_DTYPES, commands=(TILE_SEGMENT,), result=True)
    cog: bool = option(False, "Write a Cloud Optimized GeoTIFF (NEAREST/MODE overviews).", result=True)
    overwrite: bool = option(False, {TILE_SEGMENT: "Replace an existing OUTPUT.",
                                     BATCH: "Redo files whose output exists (default: skip them)."})
    preview: str | None = option(None, "Write a PNG of image, classes and overlay.", commands=(TILE_SEGMENT,),
                                 kind="path")
    device: str = option(DEVICE, "The device the job runs on (auto: a CUDA GPU if there is one, else the CPU).",
                         commands=(), result=True)
    block: int = option(BLOCK, "Side of one part in source pixels.", minimum=1, result=True)
    resume: bool = option(RESUME, "Keep finished parts of an interrupted run and reuse them.", commands=())


@dataclasses.dataclass(frozen=True)
class SelfFitOptions(Declared):
    """Fit a model on windows of the input itself (no model file given); tile-segment's self-fit."""

    classes: int = option(MAP_CLASSES, "Without --model: fit K classes on the input itself "
                          f"(default without --model: {MAP_CLASSES}).", label="Number of classes (self-fit)",
                          minimum=MIN_CLASSES, maximum=MAX_CLASSES, commands=(TILE_SEGMENT,), unset_on_cli=True,
                          plugin_default=MAP_CLASSES, result=True)
    extra_clusters: int = option(EXTRA_CLUSTERS, "Self-fit: prototypes beyond K.", minimum=0,
                                 commands=(TILE_SEGMENT,), result=True)
    steps: int = option(FIT_STEPS, "Self-fit: training steps.", minimum=MIN_STEPS, flag="--fit-steps",
                        commands=(TILE_SEGMENT,), result=True)
    batch_size: int = option(FIT_BATCH_SIZE, commands=(), result=True)
    max_windows: int = option(FIT_WINDOWS, "Self-fit: windows sampled from the input.", minimum=MIN_FIT_WINDOWS,
                              flag="--fit-windows", commands=(TILE_SEGMENT,), result=True)
    feature_crop: int = option(FIT_FEATURE_CROP, commands=(), result=True)
    seed: int = option(SEED, "Self-fit: random seed.", minimum=0, commands=(TILE_SEGMENT,), result=True)
    shift_intra: float = option(SHIFT_INTRA, "Self-fit: closeness shift b1.", commands=(TILE_SEGMENT,), result=True)
    shift_inter: float = option(SHIFT_INTER, "Self-fit: cross-image shift b2.", commands=(TILE_SEGMENT,),
                                result=True)
    temperature: float = option(TEMPERATURE, commands=(), result=True)
    alpha: float = option(ALPHA, commands=(), result=True)
    local_sets: int = option(LOCAL_SETS, "Self-fit: local prototype sets learning against the one global set.",
                             minimum=1, commands=(TILE_SEGMENT,), result=True)
    cache_dir: str | None = option(None, commands=(), kind="path")


DISTILL = "distill"


@dataclasses.dataclass(frozen=True)
class DistillOptions(Declared):
    """How a fast model is distilled from a SegUnify model (`segunify distill`, Distil a fast model)."""

    student: str = option(STUDENT, "The student's timm encoder (random initialisation unless --student-weights).",
                          label="Student encoder", choices=STUDENTS, commands=(DISTILL,))
    steps: int = option(DISTILL_STEPS, "Distillation steps.", label="Steps", minimum=MIN_STEPS, commands=(DISTILL,))
    batch_size: int = option(DISTILL_BATCH_SIZE, "Crops per step.", label="Crops per step", minimum=1,
                             advanced=True, commands=(DISTILL,))
    max_windows: int = option(DISTILL_WINDOWS, "Teacher windows sampled from the data (their probabilities are "
                              "cached).", label="Teacher windows", minimum=1, commands=(DISTILL,))
    crop: int = option(DISTILL_CROP, "Side of the student's training crops in model pixels (a multiple of 32).",
                       label="Crop (model px)", minimum=STUDENT_MULTIPLE, maximum=WINDOW, advanced=True,
                       commands=(DISTILL,))
    lr: float = option(DISTILL_LR, "Learning rate (AdamW, cosine decay).", label="Learning rate", minimum=0.0,
                       advanced=True, commands=(DISTILL,))
    seed: int = option(SEED, "Random seed.", label="Seed", minimum=0, advanced=True, commands=(DISTILL,))
    flip: bool = option(FLIP, "Teacher: average the codes of each window and its horizontal flip.",
                        label="Teacher flip averaging", negatable=True, advanced=True, commands=(DISTILL,))
    crf: str = option(CRF, "Teacher: dense CRF refinement of its probabilities.", label="Teacher CRF",
                      choices=CRF_BACKENDS, advanced=True, commands=(DISTILL,))
    student_weights: str | None = option(None, "A local checkpoint of the student encoder (timm weights) to start "
                                         "from instead of random initialisation.", kind="path", commands=(DISTILL,))
    checkpoint_every: int = option(DISTILL_CHECKPOINT_EVERY, "Steps between resumable states.", minimum=MIN_INTERVAL,
                                   commands=(DISTILL,))
    cache_dir: str | None = option(None, "Teacher probability cache folder (default: the cache folder's teacher/).",
                                   kind="folder", commands=(DISTILL,))


# Environment switches: read only through `environment()`, each time it is called (a command reads
# them when it starts; nothing is cached in the process).
ENV_EAGER = "SEGUNIFY_EAGER"  # 1: run the backbone eagerly, no fused CPU graph (debugging; features match to 1e-4)
ENV_CACHE = "SEGUNIFY_CACHE"  # folder of SegUnify's caches (default: ~/.cache/segunify)
ENV_GDAL_CACHEMAX = "GDAL_CACHEMAX"  # GDAL's own block-cache size; when set, SegUnify's 128 MB cap is not applied


class Environment:
    """The environment switches SegUnify reads (see `environment`)."""

    __slots__ = ("eager", "cache_dir", "gdal_cachemax")

    def __init__(self, eager: bool, cache_dir: str | None, gdal_cachemax: str | None):
        self.eager = eager  # SEGUNIFY_EAGER set to anything but "" or "0"
        self.cache_dir = cache_dir  # SEGUNIFY_CACHE, None when unset or empty
        self.gdal_cachemax = gdal_cachemax  # GDAL_CACHEMAX as given, None when unset

    def __repr__(self) -> str:
        return f"Environment(eager={self.eager}, cache_dir={self.cache_dir!r}, gdal_cachemax={self.gdal_cachemax!r})"


def environment() -> Environment:
    """The environment switches now: SEGUNIFY_EAGER, SEGUNIFY_CACHE and GDAL_CACHEMAX (the variables
    named by ENV_EAGER, ENV_CACHE, ENV_GDAL_CACHEMAX above). The one place SegUnify reads os.environ."""
    import os

    env = os.environ
    return Environment(eager=env.get(ENV_EAGER, "") not in ("", "0"), cache_dir=env.get(ENV_CACHE) or None,
                       gdal_cachemax=env.get(ENV_GDAL_CACHEMAX))


# Remote data (https://, s3://, GDAL /vsi paths; segunify_core.files.remote). GDAL's settings for cloud
# reads are built from these in one place, files.remote.gdal_env.
GDAL_CACHE_MB = 128  # GDAL block cache cap (MB), unless GDAL_CACHEMAX is set in the environment
HTTP_RETRIES = 3  # GDAL_HTTP_MAX_RETRY: retries of a read that got HTTP 429/5xx
HTTP_RETRY_DELAY_S = 1  # GDAL_HTTP_RETRY_DELAY: seconds before the first retry (doubled each time)
HTTP_CONNECT_TIMEOUT_S = 10  # GDAL_HTTP_CONNECTTIMEOUT: an unreachable host fails after this long
HTTP_TIMEOUT_S = 60  # GDAL_HTTP_TIMEOUT: a stalled request fails after this long
STAC_ASSETS = ("visual", "rgb", "image")  # --asset default: the first of these keys an item has, else its asset
# with the "visual" role, else its only GeoTIFF asset
STAC_ASSET_HELP = "STAC item input: the asset to segment (default: the visual/RGB asset)."
# --scheduler-file that does not exist yet: wait this long for the scheduler to write it, then fail
# (dask's own client would wait forever).
SCHEDULER_FILE_WAIT_S = 60
ENV_S3_ENDPOINT = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # an S3-compatible store's endpoint (botocore's names)
ENV_S3_ANONYMOUS = "AWS_NO_SIGN_REQUEST"  # YES: public bucket, no credentials (GDAL's and the AWS CLI's name)


def s3_endpoint() -> "str | None":
    """The S3 endpoint from the environment (AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL), None for AWS itself.
    Credentials are not read here: GDAL and botocore find them (variables, profiles, instance roles)."""
    import os

    return next((os.environ[name] for name in ENV_S3_ENDPOINT if os.environ.get(name)), None)


def s3_anonymous() -> bool:
    import os

    return os.environ.get(ENV_S3_ANONYMOUS, "").upper() in ("YES", "TRUE", "1")
