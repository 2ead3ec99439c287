"""STAC inputs: an item (a file or a URL) names the raster to segment by one of its assets; an
ItemCollection (a saved search result) names one raster per item. Read with pystac.

The output is written on the asset's own grid, which is the item's (its proj:transform and
proj:shape describe that raster), so an item in gives a class raster aligned with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .. import settings
from ..errors import SegUnifyError

STAC_SUFFIXES = (".json", ".geojson")
GEOTIFF_TYPES = ("image/tiff", "image/vnd.stac.geotiff")


@dataclass(frozen=True)
class StacRaster:
    item: str  # the item's id
    href: str  # the chosen asset's absolute href


def is_stac(path: str) -> bool:
    """A STAC item or item collection: by its name (.json / .geojson), or a STAC API item URL
    (.../collections/ID/items/ID, the API's path for one item)."""
    text = str(path).split("?", 1)[0]
    if text.lower().endswith(STAC_SUFFIXES):
        return True
    segments = urlsplit(text).path.rstrip("/").split("/") if text.startswith(("http://", "https://")) else []
    return len(segments) >= 4 and segments[-2] == "items" and segments[-4] == "collections"


def _pystac() -> Any:
    try:
        import pystac
    except ImportError:
        raise SegUnifyError('STAC inputs need the cloud extra; install it with pip install "segunify[cloud]".') from None
    return pystac


def choose_asset(item: Any, asset: str | None) -> str:
    """The href of the asset to segment: `asset` by key, else the default (settings.STAC_ASSETS, then
    the asset with the "visual" role, then the item's only GeoTIFF asset)."""
    assets = item.assets
    if asset is not None:
        if asset not in assets:
            raise SegUnifyError(f"STAC item '{item.id}' has no asset '{asset}'; choose one of {', '.join(sorted(assets))} "
                                "(--asset).")
        return str(assets[asset].get_absolute_href())
    for key in settings.STAC_ASSETS:
        if key in assets:
            return str(assets[key].get_absolute_href())
    visual = [a for a in assets.values() if "visual" in (a.roles or [])]
    tiffs = [a for a in assets.values() if (a.media_type or "").split(";")[0] in GEOTIFF_TYPES]
    for candidates in (visual, tiffs):
        if len(candidates) == 1:
            return str(candidates[0].get_absolute_href())
    raise SegUnifyError(f"STAC item '{item.id}' has no visual (RGB) asset; choose one of {', '.join(sorted(assets))} "
                        "(--asset).")


def _read(path: str) -> Any:
    pystac = _pystac()
    try:
        return pystac.read_file(path)
    except (OSError, ValueError) as exc:  # unreadable file or URL, not JSON, not STAC
        raise SegUnifyError(f"'{path}' is not a STAC item or item collection pystac can read ({type(exc).__name__}); "
                            "check the path or URL.") from None
    except Exception as exc:  # pystac's own errors (STACTypeError, ...)
        raise SegUnifyError(f"'{path}' is not a STAC item or item collection ({type(exc).__name__}); pass a STAC "
                            "item or a saved search result (ItemCollection).") from None


def item_raster(path: str, asset: str | None = None) -> StacRaster:
    """The raster of one STAC item (file or URL)."""
    pystac = _pystac()
    try:
        item = pystac.Item.from_file(path)
    except Exception:
        if _is_collection(path):
            raise SegUnifyError(f"'{path}' is a STAC item collection, not an item; segment its items with "
                                "`segunify batch`.") from None
        obj = _read(path)
        if not isinstance(obj, pystac.Item):
            raise SegUnifyError(f"'{path}' is a STAC {type(obj).__name__}, not an item; pass one item.") from None
        item = obj
    return StacRaster(item.id, choose_asset(item, asset))


def _is_collection(path: str) -> bool:
    try:
        _pystac().ItemCollection.from_file(path)
    except Exception:
        return False
    return True


def collection_rasters(path: str, asset: str | None = None) -> list[StacRaster]:
    """The rasters of an ItemCollection (a search result saved as JSON), or of a single item."""
    pystac = _pystac()
    try:
        items = list(pystac.ItemCollection.from_file(path))
    except Exception:
        return [item_raster(path, asset)]
    if not items:
        raise SegUnifyError(f"The STAC item collection '{path}' holds no items; save a search with results.")
    return [StacRaster(item.id, choose_asset(item, asset)) for item in items]
