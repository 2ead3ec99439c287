"""The map legend: which of a model's clusters make up each class, its name and its colour.

An unsupervised model labels K clusters "class 1".."class K". A legend names them, gives them
colours and merges several clusters into one class; the model then labels K' <= K classes and
a merged class's probability is the sum of its clusters' probabilities.

Numbering: classes are numbered 1..K' in the order of their lowest cluster. A merged class
takes the place of its lowest member and the classes after it move up: merging 4 and 5 of six
classes gives 1, 2, 3, 4 (= 4 + 5), 5 (the former 6). Ids given to `Legend.edit` are always
the ids of the legend being edited (what `segunify classes MODEL` prints). A merged class is
named as its merge says; without a name, and for its colour unless one is given, it keeps the
name and colour of the first class listed in the merge.

The legend lives in the model file's JSON metadata under "legend"; a model without one has the
default legend ("class i", the palette of `class_colours`) and labels exactly as before.
Every output carries it: the class raster's colour table, GDAL category names and a raster
attribute table (a PAM .aux.xml sidecar, where GDAL keeps them for GeoTIFF), the .qml style,
the GeoPackage's class_name and the preview's legend.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import SegUnifyError

Colour = tuple[int, int, int]
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


def class_colours(n: int) -> np.ndarray:
    """Distinct RGB colours (n, 3) uint8 for class maps: a fixed qualitative palette, then HSV."""
    base = np.array([
        [228, 26, 28], [55, 126, 184], [77, 175, 74], [152, 78, 163], [255, 127, 0],
        [255, 255, 51], [166, 86, 40], [247, 129, 191], [153, 153, 153], [102, 194, 165],
        [252, 141, 98], [141, 160, 203], [231, 138, 195], [166, 216, 84], [255, 217, 47],
        [229, 196, 148],
    ], np.uint8)
    if n <= len(base):
        return base[:n]
    import colorsys

    extra = [colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9) for i in range(n - len(base))]
    return np.concatenate([base, (np.array(extra) * 255).astype(np.uint8)])


def hex_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def parse_colour(text: str, class_id: int | str) -> Colour:
    match = _HEX.match(text.strip())
    if not match:
        raise SegUnifyError(f"Colour '{text}' for class {class_id} is not a hex colour like #c0392b "
                            f"(--colour {class_id}=#c0392b).")
    value = match.group(1)
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@dataclasses.dataclass(frozen=True)
class LegendClass:
    name: str
    colour: Colour
    clusters: tuple[int, ...]  # 0-based indices of the model's prototypes


@dataclasses.dataclass(frozen=True)
class Legend:
    classes: tuple[LegendClass, ...]
    n_clusters: int

    @classmethod
    def default(cls, n_clusters: int) -> Legend:
        colours = class_colours(n_clusters)
        return cls(tuple(LegendClass(f"class {i + 1}", (int(colours[i, 0]), int(colours[i, 1]), int(colours[i, 2])), (i,))
                         for i in range(n_clusters)), n_clusters)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any] | None, n_clusters: int) -> Legend:
        """The legend stored in a model file's metadata (the default one when there is none)."""
        if not meta:
            return cls.default(n_clusters)
        try:
            classes = tuple(LegendClass(str(c["name"]), parse_colour(c["colour"], i + 1),
                                        tuple(int(k) for k in c["clusters"]))
                            for i, c in enumerate(meta["classes"]))
            legend = cls(classes, n_clusters)
            legend._check()
        except (KeyError, TypeError, ValueError, SegUnifyError):
            raise SegUnifyError("The model file's legend is damaged; rewrite it with `segunify classes MODEL -o "
                                "NEW` from a copy of the original model.") from None
        return legend

    @classmethod
    def of_model_file(cls, meta: dict[str, Any]) -> Legend:
        """The legend of a model file from its whole metadata (`read_model_file`)."""
        config = meta["config"]
        return cls.from_metadata(meta.get("legend"), int(config["classes"]) + int(config.get("extra_clusters", 0)))

    def to_metadata(self) -> dict[str, Any] | None:
        """JSON for the model file, or None for the default legend (the file stays as before)."""
        if self == Legend.default(self.n_clusters):
            return None
        return {"classes": [{"name": c.name, "colour": hex_colour(c.colour), "clusters": list(c.clusters)}
                            for c in self.classes]}

    def _check(self) -> None:
        clusters = sorted(k for c in self.classes for k in c.clusters)
        if clusters != list(range(self.n_clusters)):
            raise ValueError("every cluster must belong to exactly one class")

    # -- what the model and the outputs read
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def is_identity(self) -> bool:
        """True when class i is cluster i (no merges): probabilities pass through unchanged."""
        return all(c.clusters == (i,) for i, c in enumerate(self.classes))

    def merge_matrix(self, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(K, K') 0/1 matrix: class probabilities = cluster probabilities @ matrix."""
        matrix = torch.zeros(self.n_clusters, self.n_classes, dtype=dtype, device=device)
        for j, c in enumerate(self.classes):
            matrix[list(c.clusters), j] = 1.0
        return matrix

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL colour table: 0 (nodata) transparent, class i its colour."""
        return {0: (0, 0, 0, 0), **{i + 1: (*c.colour, 255) for i, c in enumerate(self.classes)}}

    def palette(self) -> np.ndarray:
        """(K' + 1, 3) uint8 RGB indexed by class raster value (0 = nodata, black)."""
        return np.array([(0, 0, 0)] + [c.colour for c in self.classes], np.uint8)

    def shares(self, cluster_shares: Sequence[float] | None) -> list[float | None]:
        """Each class's share of the training pixels (None when the model did not record them)."""
        if not cluster_shares or len(cluster_shares) != self.n_clusters:
            return [None] * self.n_classes
        return [float(sum(cluster_shares[k] for k in c.clusters)) for c in self.classes]

    # -- editing
    def edit(self, names: dict[int, str] | None = None, colours: dict[int, str] | None = None,
             merges: Sequence[tuple[Sequence[int], str | None]] | None = None) -> Legend:
        """A new legend: classes renamed, recoloured and merged (ids are this legend's ids)."""
        names, colours, merges = names or {}, colours or {}, merges or []
        valid = f"1..{self.n_classes}"
        for setting, given in (("class names (--name)", names), ("class colours (--colour)", colours),
                               ("merges (--merge)", [i for ids, _ in merges for i in ids])):
            for i in given:
                if not 1 <= i <= self.n_classes:
                    raise SegUnifyError(f"Class {i} does not exist: this model has classes {valid}; fix the {setting} "
                                        "(see `segunify classes MODEL`).")
        group_of: dict[int, int] = {}
        for g, (ids, _) in enumerate(merges):
            if len(set(ids)) < 2:
                raise SegUnifyError(f"Merging needs at least two different classes, e.g. the merge (--merge) 4,5=vegetation "
                                    f"(got '{','.join(map(str, ids))}').")
            for i in ids:
                if i in group_of:
                    raise SegUnifyError(f"Class {i} is in two merges; put it in one merge (--merge) only.")
                group_of[i] = g
        for i in names:
            if i in group_of:
                raise SegUnifyError(f"Class {i} is merged (--merge); name the merged class there, e.g. the merge "
                                    f"{','.join(map(str, merges[group_of[i]][0]))}=NAME (--merge).")
        parsed = {i: parse_colour(text, i) for i, text in colours.items()}
        for ids, _ in merges:
            if len({parsed[i] for i in ids if i in parsed}) > 1:
                raise SegUnifyError(f"Classes {','.join(map(str, ids))} are merged but were given different "
                                    "colours (--colour); give the merged class one colour.")
        new: list[LegendClass] = []
        for i, c in enumerate(self.classes, start=1):
            if i not in group_of:
                new.append(LegendClass(names.get(i, c.name), parsed.get(i, c.colour), c.clusters))
        for ids, name in merges:
            members = list(dict.fromkeys(ids))  # the first listed class lends its name and colour
            first = self.classes[members[0] - 1]
            colour = next((parsed[i] for i in members if i in parsed), first.colour)
            clusters = tuple(sorted(k for i in members for k in self.classes[i - 1].clusters))
            new.append(LegendClass(name or first.name, colour, clusters))
        for c in new:
            if not c.name.strip() or "\n" in c.name or len(c.name) > 100:
                raise SegUnifyError(f"Class name '{c.name}' is empty, too long or spans lines; use one line of "
                                    "at most 100 characters (--name ID=NAME).")
        seen: set[str] = set()
        for c in new:
            if c.name in seen:
                raise SegUnifyError(f"Two classes would be named '{c.name}'; merge them (--merge) or name one "
                                    "differently (--name).")
            seen.add(c.name)
        new.sort(key=lambda c: min(c.clusters))
        return Legend(tuple(new), self.n_clusters)

    # -- outputs
    def qml(self) -> str:
        """A QGIS style (paletted renderer) with the class names as labels."""
        entries = "\n".join(
            f'          <paletteEntry value="{i + 1}" label="{_xml_attr(c.name)}" alpha="255" '
            f'color="{hex_colour(c.colour)}"/>' for i, c in enumerate(self.classes))
        return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="AllStyleCategories">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""

    def pam_xml(self) -> str:
        """GDAL's PAM sidecar (.aux.xml) for band 1: category names (indexed by pixel value, 0 =
        nodata) and a thematic raster attribute table (Value, Class_Name, Red, Green, Blue)."""
        root = ET.Element("PAMDataset")
        band = ET.SubElement(root, "PAMRasterBand", band="1")
        categories = ET.SubElement(band, "CategoryNames")
        for name in [""] + self.names:
            ET.SubElement(categories, "Category").text = name
        rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
        # GDAL field types: 0 integer, 2 string; usages: 5 MinMax (the value), 2 Name, 6-8 Red/Green/Blue.
        fields = (("Value", 0, 5), ("Class_Name", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8))
        for index, (name, kind, usage) in enumerate(fields):
            defn = ET.SubElement(rat, "FieldDefn", index=str(index))
            ET.SubElement(defn, "Name").text = name
            ET.SubElement(defn, "Type").text = str(kind)
            ET.SubElement(defn, "Usage").text = str(usage)
        for i, c in enumerate(self.classes):
            row = ET.SubElement(rat, "Row", index=str(i))
            for value in (i + 1, c.name, *c.colour):
                ET.SubElement(row, "F").text = str(value)
        ET.indent(root)
        return ET.tostring(root, encoding="unicode") + "\n"


def _xml_attr(text: str) -> str:
    return (text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;"))


def parse_id_value(text: str, option: str) -> tuple[list[int], str]:
    """'3=roof' or '4,5=vegetation' -> ([ids], value); a clear error otherwise."""
    ids_text, sep, value = text.partition("=")
    try:
        ids = [int(part) for part in ids_text.split(",")]
    except ValueError:
        ids = []
    if not ids or (not sep and option != "--merge"):
        example = {"--name": "3=roof", "--colour": "3=#c0392b", "--merge": "4,5=vegetation"}[option]
        setting = {"--name": "class name", "--colour": "class colour", "--merge": "merge"}[option]
        raise SegUnifyError(f"'{text}' is not of the form {example} ({setting}, {option}).")
    return ids, value.strip()


def parse_edits(names: Sequence[str] = (), merges: Sequence[str] = (), colours: Sequence[str] = ()
                ) -> tuple[dict[int, str], list[tuple[list[int], str | None]], dict[int, str]]:
    """The CLI's --name/--merge/--colour texts as arguments of `Legend.edit`."""
    named: dict[int, str] = {}
    for text in names:
        ids, value = parse_id_value(text, "--name")
        if len(ids) != 1:
            raise SegUnifyError(f"'{text}' names several classes; merge them instead (--merge {text}).")
        named[ids[0]] = value
    coloured: dict[int, str] = {}
    for text in colours:
        ids, value = parse_id_value(text, "--colour")
        for i in ids:
            coloured[i] = value
    merged = [(ids, value or None) for ids, value in (parse_id_value(t, "--merge") for t in merges)]
    return named, merged, coloured
