"""Every user-facing setting's default, choices and range, defined once.

The API's dataclasses (TrainConfig, ModelConfig, SelfFitOptions, SegmentOptions), the CLI's click
options and the QGIS plugin's Processing parameters all read their values from here.

Standard library only, and no module-level imports: the QGIS plugin loads this very file by path in
QGIS's own Python (from the repository checkout, or from the copy scripts/build_plugin.py puts in
the plugin), where torch and the rest of segunify_core must never be imported.

Environment variables are read here too, by `environment()` only (nowhere else in the core or the CLI).
"""

# Backbones: the short names users know from the DINO papers -> timm's published copy of the weights,
# patch size, feature channels, description. backbone.BACKBONES is built from these rows; any timm
# ViT name is accepted too.
BACKBONES = (
    ("dino_vits8", "vit_small_patch8_224.dino", 8, 384, "DINO ViT-S/8 (default)"),
    ("dino_vits16", "vit_small_patch16_224.dino", 16, 384, "DINO ViT-S/16"),
    ("dino_vitb8", "vit_base_patch8_224.dino", 8, 768, "DINO ViT-B/8 (Potsdam reference)"),
    ("dino_vitb16", "vit_base_patch16_224.dino", 16, 768, "DINO ViT-B/16"),
    ("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m", 14, 384, "DINOv2 ViT-S/14"),
    ("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m", 14, 768, "DINOv2 ViT-B/14"),
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
# on), the default of `segunify train` and of the API. MAP_CLASSES is where the QGIS dialogs (self-fit
# in Segment raster, Train model) and scripts/demo.sh start an analyst mapping an unknown orthophoto:
# a couple more clusters than the usual land-cover classes, to be named and merged into a legend
# (Name and merge classes). The CLI's self-fit has no default: --classes K is what asks for it.
CLASSES = 3
MAP_CLASSES = 5
MIN_CLASSES = 2
MAX_CLASSES = 255  # class rasters are uint8 with 0 = nodata
EXTRA_CLUSTERS = 0
LOCAL_SETS = 1  # local prototype sets learning against the one global set (1: the published model)

# Compressor and Labeler.
CODE_DIM = 64
DROPOUT = 0.2
NONLINEAR = True
OUTER_SILU = False
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

# Polygons (`segunify vectorize`, Vectorize classes).
MIN_AREA = 0.0  # square metres; 0 keeps every region
SIMPLIFY = 0.0  # CRS units; 0 keeps the pixel outlines

# Scoring (`segunify evaluate`).
EVAL_SPLIT = "test"  # Potsdam's labelled_test.txt
EVAL_RESOLUTIONS = (224, 320)  # px: resize the shorter side, centre crop; 224 is SegUnify's, 320 STEGO's
EVAL_RESOLUTION = 224
EVAL_BATCH_SIZE = 8

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
