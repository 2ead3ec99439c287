"""Assembly: the manifest of finished parts, and the final rasters built from the part files.

The manifest maps part id -> SHA-256 of each of its files; it is rewritten atomically after every
finished part, so a run killed at any moment leaves a manifest that names only whole files. A
resumed run skips a part only when its files are there and their hashes match. Once every part of
a raster is recorded, its part files are mosaicked through a GDAL VRT on the input's exact grid
and copied to the tiled GeoTIFF (or COG), then the QGIS style and the preview are written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from .atomic import atomic_path, write_text_atomic
from .errors import SegUnifyError
from .outputs import colour_map, copy_raster, probability_storage, write_preview_png, write_qml
from .parts import file_sha256, part_files
from .planning import Part, RasterJob
from .raster_io import RasterReader

MANIFEST = "manifest.json"


class Manifest:
    """Part id -> {file kind: SHA-256}, for one job (named by its fingerprint)."""

    def __init__(self, folder: Path, job: str, parts: dict[str, dict[str, str]] | None = None):
        self.folder, self.job, self.parts = folder, job, parts or {}

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def open(cls, folder: Path, job: str, resume: bool) -> Manifest:
        """The job's manifest: the recorded parts when resuming the same job, else a new one."""
        path = folder / MANIFEST
        if resume and path.is_file():
            data = json.loads(path.read_text())
            if data.get("job") != job:
                raise SegUnifyError(f"The unfinished run in '{folder}' was made with other inputs or settings; "
                                    "rerun with the same ones, or run without resume (--no-resume) to start over.")
            return cls(folder, job, data["parts"])
        return cls(folder, job)

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"job": self.job, "parts": self.parts}, indent=1, sort_keys=True))

    def record(self, part_id: str, hashes: dict[str, str]) -> None:
        self.parts[part_id] = hashes
        self.save()

    def is_done(self, part: Part) -> bool:
        """Recorded, and every file of the part is there with its recorded hash."""
        recorded = self.parts.get(part.id)
        files = part_files(self.folder, part)
        return (recorded is not None and set(recorded) == set(files)
                and all(path.is_file() and file_sha256(path) == recorded[kind] for kind, path in files.items()))


def vrt_xml(raster: RasterJob, parts: Sequence[Part], folder: Path, kind: str, bands: int, dtype: str,
            crs_wkt: str | None, transform: tuple[float, ...] | None, n_clusters: int) -> str:
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
                        for _, (r, g, b, a) in sorted(colour_map(n_clusters).items()))
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


def assemble(raster: RasterJob, parts: Sequence[Part], folder: Path, n_clusters: int, cog: bool = False,
             probabilities_dtype: str = "float16", preview: str | Path | None = None) -> None:
    """Build the raster's outputs from its recorded parts: class raster (+ QML), probabilities, preview."""
    with RasterReader.open(raster.input, raster.bands, raster.stats) as reader:
        ds = reader.ds
        crs = ds.crs.to_wkt() if ds.crs else None
        transform = None if ds.transform.is_identity else ds.transform.to_gdal()
        outputs = [("labels", Path(raster.output), 1, "uint8", None)]
        if raster.probabilities:
            dtype, nbits = probability_storage(probabilities_dtype)
            outputs.append(("probabilities", Path(raster.probabilities), n_clusters, dtype, nbits))
        for kind, target, bands, dtype, nbits in outputs:
            with atomic_path(folder / f"{raster.index:05d}.{kind}.vrt") as vrt:
                vrt.write_text(vrt_xml(raster, parts, folder, kind, bands, dtype, crs, transform, n_clusters))
                copy_raster(vrt, target, cog, nbits)
        write_qml(Path(raster.output).with_suffix(".qml"), n_clusters)
        if preview:
            write_preview_png(reader, Path(raster.output), Path(preview))
