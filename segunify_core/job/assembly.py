"""Assembly: the final rasters built from the part files.

Once every part of a raster is recorded in the manifest, its part files are mosaicked through a GDAL VRT on the input's exact grid
and copied to the tiled GeoTIFF (or COG), then the QGIS style and the preview are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from .. import settings
from ..files.atomic import atomic_path
from ..files.outputs import copy_raster, probability_storage, write_class_style
from ..files.preview import write_preview_png
from ..files.raster_io import RasterReader
from ..method.legend import Legend
from .parts import part_files
from .planning import Part, RasterJob


def vrt_xml(raster: RasterJob, parts: Sequence[Part], folder: Path, kind: str, bands: int, dtype: str,
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
            name = part_files(folder, part)[kind].name
            body.append(
                f'    <SimpleSource><SourceFilename relativeToVRT="1">{escape(name)}</SourceFilename>'
                f"<SourceBand>{band}</SourceBand>"
                f'<SrcRect xOff="0" yOff="0" xSize="{part.width}" ySize="{part.height}"/>'
                f'<DstRect xOff="{part.col0}" yOff="{part.row0}" xSize="{part.width}" ySize="{part.height}"/>'
                "</SimpleSource>")
        body.append("  </VRTRasterBand>")
    return "\n".join([*head, *body, "</VRTDataset>"]) + "\n"


def assemble(raster: RasterJob, parts: Sequence[Part], folder: Path, legend: Legend, cog: bool = False,
             probabilities_dtype: str = settings.PROBABILITIES_DTYPES[0], preview: str | Path | None = None) -> None:
    """Build the raster's outputs from its recorded parts: class raster (+ its legend: QML and GDAL
    category names), probabilities, preview."""
    with RasterReader.open(raster.input, raster.bands, raster.stats) as reader:
        ds = reader.ds
        crs = ds.crs.to_wkt() if ds.crs else None
        transform = None if ds.transform.is_identity else ds.transform.to_gdal()
        outputs: list[tuple[str, Path, int, str, int | None]] = [("labels", Path(raster.output), 1, "uint8", None)]
        if raster.probabilities:
            dtype, nbits = probability_storage(probabilities_dtype)
            outputs.append(("probabilities", Path(raster.probabilities), legend.n_classes, dtype, nbits))
        for kind, target, bands, dtype, nbits in outputs:
            with atomic_path(folder / f"{raster.index:05d}.{kind}.vrt") as vrt:
                vrt.write_text(vrt_xml(raster, parts, folder, kind, bands, dtype, crs, transform, legend))
                copy_raster(vrt, target, cog, nbits)
        write_class_style(raster.output, legend)
        if preview:
            write_preview_png(reader, Path(raster.output), Path(preview), legend)
