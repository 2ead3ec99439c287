"""Image sources for training and evaluation: rasters, the Potsdam (STEGO/IIC) layout, and
folders of images with label rasters; and the training windows sampled from the training images
(where they lie, and reading them at the window size)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.windows import Window

from .. import settings
from ..errors import SegUnifyError
from ..files.raster_io import IMAGE_SUFFIXES, RasterReader, list_images
from ..files.remote import Location, gdal_env, gdal_path, is_object_store, is_url, list_objects, name_of, stem_of

POTSDAM_SPLITS = {  # settings.POTSDAM_SPLITS -> the list files each reads
    "test": ("labelled_test.txt",),
    "train": ("labelled_train.txt",),
    "unlabelled_train": ("unlabelled_train.txt",),
    "all_train": ("labelled_train.txt", "unlabelled_train.txt"),
    "all": ("all.txt",),
    "val": ("labelled_train.txt",),  # every POTSDAM_VAL_STRIDE-th id of labelled_train.txt
}
POTSDAM_TRAIN_SPLITS = settings.POTSDAM_TRAIN_SPLITS  # what training may read
# The Potsdam validation subset: ids 0, 20, 40, ... of labelled_train.txt in file order (228 of
# the 4545 images). Training on a Potsdam folder that is also the --val data leaves them out.
POTSDAM_VAL_STRIDE = 20
RESIZE_MODES = settings.RESIZE_MODES  # how training windows are resampled to the window size
CROP_RATIO = settings.CROP_RATIO  # five-crop regions: this share of the shorter side
# ISPRS six classes -> three: roads+cars, buildings+clutter, low vegetation+trees; 255 ignored.
POTSDAM_FINE_TO_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2}
POTSDAM_CLASS_NAMES = ("roads and cars", "buildings and clutter", "vegetation and trees")
IGNORE = -1


class ArrayImage:
    """An in-memory RGB image with the same read interface as RasterReader."""

    def __init__(self, rgb: np.ndarray, name: str):
        self.rgb = rgb.astype(np.float32)  # (3, H, W), 0..255
        self.name = name
        self.gsd: float | None = None

    @property
    def height(self) -> int:
        return self.rgb.shape[1]

    @property
    def width(self) -> int:
        return self.rgb.shape[2]

    def read(self, window: Window, out_shape: tuple[int, int] | None = None,
             resampling=None) -> tuple[np.ndarray, np.ndarray]:
        """resampling: rasterio's Resampling.nearest for nearest, else bilinear (as RasterReader)."""
        r0, c0 = int(window.row_off), int(window.col_off)
        crop = self.rgb[:, r0:r0 + int(window.height), c0:c0 + int(window.width)]
        if out_shape and tuple(out_shape) != crop.shape[1:]:
            crop = resize_image(crop, out_shape, "nearest" if resampling == Resampling.nearest else "bilinear")
        return crop, np.ones(crop.shape[1:], bool)

    def close(self) -> None:
        pass


def resize_image(rgb: np.ndarray, size: tuple[int, int], mode: str = settings.RESIZE) -> np.ndarray:
    """Resize (C, H, W) to `size`: antialiased bilinear, or nearest at pixel centres (PIL's rule)."""
    t = torch.from_numpy(np.ascontiguousarray(rgb))[None]
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")[0].numpy()
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[0].numpy()


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(labels.astype(np.int64)))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].long().numpy()


def _mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(str(path))[key])
    except Exception:
        raise SegUnifyError(f"Cannot read '{path}' as a Potsdam .mat file with key '{key}'; check the "
                            "download (STEGO's potsdam.zip).") from None


def potsdam_root(path: str | Path) -> Path | None:
    """The folder holding imgs/, gt/ and the split lists, given it or its parent; else None."""
    path = Path(path)
    for candidate in (path, path / "potsdam"):
        if (candidate / "imgs").is_dir() and any((candidate / f).is_file()
                                                 for files in POTSDAM_SPLITS.values() for f in files):
            return candidate
    return None


def potsdam_ids(root: Path, split: str) -> list[str]:
    if split not in POTSDAM_SPLITS:
        raise SegUnifyError(f"Unknown Potsdam split '{split}'; use one of {', '.join(POTSDAM_SPLITS)} (--split).")
    ids: list[str] = []
    for name in POTSDAM_SPLITS[split]:
        path = root / name
        if not path.is_file():
            raise SegUnifyError(f"Potsdam split list '{path}' is missing; the folder must hold the "
                                "IIC split lists (labelled_train.txt, unlabelled_train.txt, "
                                "labelled_test.txt).")
        ids.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
    return ids[::POTSDAM_VAL_STRIDE] if split == "val" else ids


def potsdam_image(root: Path, image_id: str) -> np.ndarray:
    """RGB (3, H, W) float in 0..255; the IR band is dropped."""
    img = _mat(root / "imgs" / f"{image_id}.mat", "img")
    rgb = img[..., :3].astype(np.float32)
    if np.issubdtype(img.dtype, np.floating) and rgb.max() <= 1.0:
        rgb *= 255.0
    return rgb.transpose(2, 0, 1)


def potsdam_labels(root: Path, image_id: str, coarse: bool = True) -> np.ndarray | None:
    """Labels (H, W) int64, 3 coarse classes with -1 ignored; None when the gt file is absent."""
    path = root / "gt" / f"{image_id}.mat"
    if not path.is_file():
        return None
    fine = _mat(path, "gt").astype(np.int64)
    if fine.ndim == 3:
        fine = fine[..., 0]
    if not coarse:
        return np.where(fine == 255, IGNORE, fine)
    out = np.full(fine.shape, IGNORE, np.int64)
    for f, c in POTSDAM_FINE_TO_COARSE.items():
        out[fine == f] = c
    return out


@dataclasses.dataclass
class TrainingImage:
    """A training image opened on demand: a raster file or a Potsdam .mat."""

    path: Location  # a local path, or a URL (https://, s3://)
    potsdam_id: str | None = None

    def open(self, bands: Sequence[int] | None) -> ArrayImage | RasterReader:
        if self.potsdam_id is not None:
            return ArrayImage(potsdam_image(Path(self.path), self.potsdam_id), self.potsdam_id)
        return RasterReader.open(self.path, bands)

    @property
    def label(self) -> str:
        return f"{self.path}:{self.potsdam_id}" if self.potsdam_id else str(self.path)

    @property
    def key(self) -> str:
        """The image's identity for keeping validation images out of training (image_key)."""
        return image_key(self.path, self.potsdam_id)


def image_key(path: Location, potsdam_id: str | None = None) -> str:
    """'potsdam:ID' for a Potsdam image (ids are unique over the data set), else the resolved path (a URL as given)."""
    if potsdam_id is not None:
        return f"potsdam:{potsdam_id}"
    return f"file:{path}" if is_url(str(path)) else f"file:{Path(path).resolve()}"


def training_images(data: Sequence[str | Path], potsdam_split: str = settings.POTSDAM_TRAIN_SPLIT,
                    exclude: Collection[str] = ()) -> list[TrainingImage]:
    """Folders and files of GeoTIFF/PNG/JPEG images, or a Potsdam root (its training splits),
    without the images whose `key` is in `exclude` (the validation images)."""
    images: list[TrainingImage] = []
    plain: list[str | Path] = []
    for entry in data:
        root = None if is_url(str(entry)) else potsdam_root(entry)
        if root is not None:
            images.extend(TrainingImage(root, i) for i in potsdam_ids(root, potsdam_split))
        else:
            plain.append(entry)
    images.extend(TrainingImage(p) for p in list_images(plain))
    if exclude:
        images = [im for im in images if im.key not in exclude]
    if not images:
        raise SegUnifyError(f"No images found in {', '.join(map(str, data))}; pass folders or files "
                            f"of {', '.join(sorted(IMAGE_SUFFIXES))} images.")
    return images


# --- training windows: square regions of the training images, resampled to the window size ---

@dataclasses.dataclass(frozen=True)
class TrainWindow:
    image: int  # index into the image list
    col: float
    row: float
    size: float  # side of the square region in source pixels, resampled to the window size


def plan_windows(sizes: Sequence[tuple[int, int]], scales: Sequence[float], window: int,
                 max_windows: int, seed: int, five_crop: bool = settings.FIVE_CROP,
                 crop_ratio: float = CROP_RATIO) -> list[TrainWindow]:
    """Square regions of the images, resampled to `window` px at training time.

    sizes: (width, height) per image; scales: source pixels per training pixel (GSD matching).
    Random mode spreads `max_windows` over the images by area (at least one each while the budget
    lasts) at uniform random positions. Five-crop mode cuts the four corners and the centre at
    `crop_ratio` of the shorter side. Images smaller than a region are used whole, upsampled;
    a square image used whole gets one window only (more would be copies of it).
    """
    rng = np.random.default_rng(seed)
    out: list[TrainWindow] = []
    if five_crop:
        for i, (w, h) in enumerate(sizes):
            side = crop_ratio * min(w, h)
            for col, row in ((0, 0), (w - side, 0), (0, h - side), (w - side, h - side),
                             ((w - side) / 2, (h - side) / 2)):
                out.append(TrainWindow(i, col, row, side))
        if len(out) > max_windows:
            keep = np.sort(rng.choice(len(out), max_windows, replace=False))
            out = [out[k] for k in keep]
        return out
    regions = [min(window * s, w, h) for (w, h), s in zip(sizes, scales, strict=True)]
    areas = np.array([w * h / max(r * r, 1.0) for (w, h), r in zip(sizes, regions, strict=True)])
    whole = np.array([w == h == r for (w, h), r in zip(sizes, regions, strict=True)])
    areas[whole] = 0.0
    counts = np.ones(len(sizes), int) if max_windows >= len(sizes) else np.zeros(len(sizes), int)
    if max_windows < len(sizes):
        counts[rng.choice(len(sizes), max_windows, replace=False)] = 1
    remaining = max_windows - counts.sum()
    if remaining > 0 and areas.sum() > 0:
        counts += rng.multinomial(remaining, areas / areas.sum())
    for i, ((w, h), side, n) in enumerate(zip(sizes, regions, counts, strict=True)):
        for _ in range(n):
            out.append(TrainWindow(i, float(rng.uniform(0, w - side)), float(rng.uniform(0, h - side)), side))
    return out


class TrainWindowReader:
    """Reads training windows in order, keeping one image open at a time."""

    def __init__(self, images: Sequence[TrainingImage], windows: Sequence[TrainWindow], window: int,
                 bands: Sequence[int] | None, resize: str = settings.RESIZE):
        self.images, self.windows, self.window, self.bands = images, windows, window, bands
        self.resampling = Resampling.nearest if resize == "nearest" else Resampling.bilinear
        self.current = -1
        self.source: ArrayImage | RasterReader | None = None

    def __call__(self, k: int) -> np.ndarray:
        w = self.windows[k]
        if self.source is None or w.image != self.current:
            self.close()
            self.source, self.current = self.images[w.image].open(self.bands), w.image
        rgb, _ = self.source.read(Window(w.col, w.row, w.size, w.size), out_shape=(self.window, self.window),
                                  resampling=self.resampling)
        return rgb

    def close(self) -> None:
        if self.source is not None:
            self.source.close()
            self.source, self.current = None, -1


@dataclasses.dataclass
class EvalSample:
    name: str
    rgb: np.ndarray  # (3, H, W) float 0..255
    labels: np.ndarray  # (H, W) int64, -1 ignored


def centre_crop_resize(rgb: np.ndarray, labels: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize the shorter side to `resolution` (labels nearest), then centre-crop a square."""
    h, w = labels.shape
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    rgb, labels = resize_image(rgb, size), resize_labels(labels, size)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return (rgb[:, top:top + resolution, left:left + resolution],
            labels[top:top + resolution, left:left + resolution])


def folder_eval_sample(image: Location, label: Location, bands) -> EvalSample:
    """One image of an images/ + labels/ folder at native size; pixels outside its data ignored."""
    with RasterReader.open(image, bands) as reader:
        rgb, valid = reader.read(Window(0, 0, reader.width, reader.height))
    labels = read_label_raster(label)
    if labels.shape != valid.shape:
        raise SegUnifyError(f"Label raster '{label}' is {labels.shape[1]} x {labels.shape[0]} px "
                            f"but its image is {valid.shape[1]} x {valid.shape[0]}; they must match.")
    labels[~valid] = IGNORE
    return EvalSample(name_of(image), rgb, labels)


def potsdam_eval_sample(root: Path, image_id: str, resolution: int) -> EvalSample | None:
    """One Potsdam image and its labels at the evaluation resolution; None when unlabelled."""
    labels = potsdam_labels(root, image_id)
    if labels is None:
        return None
    rgb, labels = centre_crop_resize(potsdam_image(root, image_id), labels, resolution)
    return EvalSample(image_id, rgb, labels)


def potsdam_eval_samples(root: Path, split: str, resolution: int) -> Iterator[EvalSample]:
    for image_id in potsdam_ids(root, split):
        sample = potsdam_eval_sample(root, image_id, resolution)
        if sample is not None:  # unlabelled images do not count
            yield sample


def folder_pairs(root: Location) -> list[tuple[Location, Location]]:
    """(image, label raster) of an images/ + labels/ folder (or s3:// prefix), matched by name."""
    if is_object_store(root):
        return _object_pairs(str(root))
    root = Path(root)
    images, labels = root / "images", root / "labels"
    pairs: list[tuple[Location, Location]] = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        candidates = [labels / image.name] + sorted(labels.glob(image.stem + ".*"))
        label = next((c for c in candidates if c.is_file()), None)
        if label is None:
            raise SegUnifyError(f"No label raster for '{image.name}' in '{labels}'; every image needs "
                                "a label raster of the same name.")
        pairs.append((image, label))
    if not pairs:
        raise SegUnifyError(f"No images in '{images}'; the folder needs images/ and labels/.")
    return pairs


def _object_pairs(root: str) -> list[tuple[Location, Location]]:
    """folder_pairs of an s3:// prefix: images/KEY and labels/KEY (any raster suffix) by name."""
    prefix = root.rstrip("/")
    images = list_objects(f"{prefix}/images/", IMAGE_SUFFIXES)
    labels = {stem_of(url): url for url in list_objects(f"{prefix}/labels/", IMAGE_SUFFIXES)}
    if not images:
        raise SegUnifyError(f"No images under '{prefix}/images/'; the prefix needs images/ and labels/.")
    pairs: list[tuple[Location, Location]] = []
    for image in images:
        label = labels.get(stem_of(image))
        if label is None:
            raise SegUnifyError(f"No label raster for '{name_of(image)}' under '{prefix}/labels/'; every image needs "
                                "a label raster of the same name.")
        pairs.append((image, label))
    return pairs


def read_label_raster(path: Location) -> np.ndarray:
    """Integer labels (H, W) with nodata, 255 and negative values set to -1 (ignored)."""
    import rasterio

    with gdal_env(), rasterio.open(gdal_path(path)) as ds:
        data = ds.read(1).astype(np.int64)
        valid = ds.read_masks(1) > 0
    data[~valid | (data == 255) | (data < 0)] = IGNORE
    return data
