"""The preview PNG: the image, its class map in the legend's colours and their overlay side by side,
with the legend (swatches and class names) drawn below."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..method.legend import Legend, hex_colour
from .atomic import atomic_path
from .raster_io import RasterReader
from .remote import Location, gdal_path


def write_preview_png(reader: RasterReader, classes: Location, path: Location, legend: Legend,
                      max_side: int = 1024) -> None:
    """A PNG of image, classes and overlay, at most `max_side` px on its longer side."""
    scale = max(1.0, max(reader.width, reader.height) / max_side)
    shape = (max(1, round(reader.height / scale)), max(1, round(reader.width / scale)))
    rgb, valid = reader.read(Window(0, 0, reader.width, reader.height), out_shape=shape,
                             resampling=Resampling.average)
    with rasterio.open(gdal_path(classes)) as ds:
        labels = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    with atomic_path(path) as tmp:
        write_preview(tmp, rgb, labels, valid, max_side, legend)


def write_preview(path: str | Path, rgb: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None,
                  max_side: int = 1024, legend: Legend | None = None) -> None:
    """A PNG of the image, the class map and their overlay side by side, and the legend below.

    rgb (3, H, W) 0..255; labels (H, W) with classes 1..K and 0 = nodata. The legend (default:
    "class i" in the standard colours) is drawn as swatches with names and also stored as the
    PNG's "legend" text entry (one "id<TAB>name<TAB>#colour" line per class).
    """
    from PIL import Image, ImageDraw, ImageFont
    from PIL.PngImagePlugin import PngInfo

    image = np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if legend is None:
        legend = Legend.default(max(int(labels.max()) if labels.size else 0, 1))
    palette = legend.palette()
    classes = palette[np.minimum(labels, len(palette) - 1)]
    overlay = (0.5 * image + 0.5 * classes).astype(np.uint8)
    if valid is not None:
        overlay[~valid] = image[~valid]
    strip = np.concatenate([image, classes, overlay], axis=1)
    pil = Image.fromarray(strip)
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        pil = pil.resize((int(strip.shape[1] * scale), int(strip.shape[0] * scale)), Image.Resampling.NEAREST)
    # The legend: rows of a colour swatch and the class name, in columns under the strip.
    size = max(14, pil.height // 40)  # legible next to the strip at any preview size
    font = ImageFont.load_default(size=size)
    row_h, swatch, pad = round(size * 1.5), size, size // 2
    col_w = 4 * pad + swatch + max(int(font.getlength(f"{i} {n}")) for i, n in enumerate(legend.names, 1))
    per_col = max(1, -(-legend.n_classes // max(1, pil.width // col_w)))
    columns = -(-legend.n_classes // per_col)
    canvas = Image.new("RGB", (max(pil.width, columns * col_w), pil.height + per_col * row_h + 2 * pad),
                       (255, 255, 255))
    canvas.paste(pil, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, c in enumerate(legend.classes):
        x = pad + (i // per_col) * col_w
        y = pil.height + pad + (i % per_col) * row_h
        draw.rectangle([x, y, x + swatch, y + swatch], fill=c.colour, outline=(0, 0, 0))
        draw.text((x + swatch + pad, y), f"{i + 1} {c.name}", fill=(0, 0, 0), font=font)
    info = PngInfo()
    info.add_text("legend", "\n".join(f"{i}\t{c.name}\t{hex_colour(c.colour)}"
                                       for i, c in enumerate(legend.classes, 1)))
    canvas.save(path, pnginfo=info)
