"""Assembly: the final rasters built from the part files.

Once every part of a raster is recorded in the manifest, its part files are mosaicked through a GDAL VRT on the input's exact grid
and copied to the tiled GeoTIFF (or COG), then the QGIS style and the preview are written.
With the job folder in an object store, the VRT (a local temporary file) names the part objects
by their GDAL paths (/vsis3/...), GDAL reads them by range requests, and the finished raster is
uploaded to the output URL as one object.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from .. import settings
from ..files.atomic import atomic_path
from ..files.outputs import copy_raster, probability_storage, write_class_style
from ..files.preview import write_preview_png
from ..files.raster_io import RasterReader
from ..files.remote import Location, gdal_env, gdal_path, is_object_store, location
from ..method.legend import Legend
from .parts import part_files
from .planning import Part, RasterJob


def vrt_xml(raster: RasterJob, parts: Sequence[Part], folder: Location, kind: str, bands: int, dtype: str,
            crs_wkt: str | None, transform: tuple[float, ...] | None, legend: Legend) -> str:
    """A VRT mosaic of the parts' files on the input's grid. Written by hand: rasterio has no
    BuildVRT, and the mosaic is a plain list of pixel-aligned sources."""
    gdal_type = {"uint8": "Byte", "float32": "Float32"}[dtype]
    head = [f'<VRTDataset rasterXSize="{raster.width}" rasterYSize="{raster.height}">']
    if crs_wkt:
        head.append(f"  <SRS>{escape(crs_wkt)}</SRS>")
    if transform:
        head.append(f"  <GeoTransform>{', '.join(repr(v) for v in transform)}</GeoTransform>")
    body = []
    for band in range(1, bands + 1):
        body.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{band}">')
        if kind == "labels":
            body.append("    <NoDataValue>0</NoDataValue>\n    <ColorInterp>Palette</ColorInterp>\n    <ColorTable>")
            body.extend(f'      <Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'
                        for _, (r, g, b, a) in sorted(legend.colormap().items()))
            body.append("    </ColorTable>")
        for part in parts:
            source = part_files(folder, part)[kind]
            relative = isinstance(source, Path)  # local parts sit beside the VRT; objects by their GDAL path
            name = source.name if isinstance(source, Path) else gdal_path(source)
            body.append(
                f'    <SimpleSource><SourceFilename relativeToVRT="{int(relative)}">{escape(name)}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{part.width}" ySize="{part.height}"/>'
                f'<DstRect xOff="{part.col0}" yOff="{part.row0}" xSize="{part.width}" ySize="{part.height}"/>'
                "</SimpleSource>")
        body.append("  </VRTRasterBand>")
    return "\n".join([*head, *body, "</VRTDataset>"]) + "\n"


@contextlib.contextmanager
def _vrt_path(folder: Location, name: str) -> Iterator[Path]:
    """Where the mosaic VRT is written: in a local job folder (atomically), else a local temporary file."""
    if not is_object_store(folder):
        with atomic_path(Path(folder) / name) as vrt:
            yield vrt
        return
    with tempfile.TemporaryDirectory(prefix="segunify-vrt-") as tmp:
        yield Path(tmp) / name


def assemble(raster: RasterJob, parts: Sequence[Part], folder: Location, legend: Legend, cog: bool = False,
             probabilities_dtype: str = settings.PROBABILITIES_DTYPES[0], preview: str | Path | None = None) -> None:
    """Build the raster's outputs from its recorded parts: class raster (+ its legend: QML and GDAL
    category names), probabilities, preview."""
    with gdal_env(fresh=folder), RasterReader.open(raster.input, raster.bands, raster.stats) as reader:
        ds = reader.ds
        crs = ds.crs.to_wkt() if ds.crs else None
        transform = None if ds.transform.is_identity else ds.transform.to_gdal()
        outputs: list[tuple[str, Location, int, str, int | None]] = [
            ("labels", location(raster.output), 1, "uint8", None)]
        if raster.probabilities:
            dtype, nbits = probability_storage(probabilities_dtype)
            outputs.append(("probabilities", location(raster.probabilities), legend.n_classes, dtype, nbits))
        for kind, target, bands, dtype, nbits in outputs:
            with _vrt_path(folder, f"{raster.index:05d}.{kind}.vrt") as vrt:
                vrt.write_text(vrt_xml(raster, parts, folder, kind, bands, dtype, crs, transform, legend))
                copy_raster(vrt, target, cog, nbits)
        write_class_style(location(raster.output), legend)
        if preview:
            write_preview_png(reader, location(raster.output), location(preview), legend)
