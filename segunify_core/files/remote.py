"""Data where it lives: inputs and outputs given as URLs (https://, s3://, GDAL's /vsi... paths).

Reading goes through GDAL (range requests on Cloud-Optimised GeoTIFFs); the GDAL settings for
cloud reads are set here and only here, in `gdal_env`. Writing objects and listing prefixes goes
through fsspec (s3fs for s3://). Credentials are never handled here: GDAL and botocore read the
usual variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
AWS_NO_SIGN_REQUEST) and profiles themselves; only the endpoint (AWS_ENDPOINT_URL, for
S3-compatible stores) is passed on, through `settings.s3_endpoint()`.

A location is a local `Path` or a URL kept as text (Path("s3://b/k") would fold the "//"): the
helpers below accept both and treat local paths exactly as before.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import rasterio

from .. import settings
from ..errors import SegUnifyError

Location = str | Path
URL_PREFIXES = ("http://", "https://", "s3://", "/vsi")
OBJECT_STORE_PREFIXES = ("s3://",)  # where outputs and job folders may go
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or AWS_NO_SIGN_REQUEST=YES "
                    "for a public bucket")


def is_url(path: Location | os.PathLike) -> bool:
    """A remote input (or a GDAL virtual path), not a local file."""
    return isinstance(path, str) and path.startswith(URL_PREFIXES)


def is_object_store(path: Location | os.PathLike) -> bool:
    """A location in an object store (writable through fsspec)."""
    return isinstance(path, str) and path.startswith(OBJECT_STORE_PREFIXES)


def location(path: Location) -> Location:
    """URLs stay text, local paths become `Path`."""
    return path if is_url(str(path)) else Path(path)


def gdal_path(path: Location) -> str:
    """The name GDAL opens: s3://b/k -> /vsis3/b/k, https://... -> /vsicurl/https://..."""
    text = str(path)
    if text.startswith("s3://"):
        return "/vsis3/" + text[len("s3://"):]
    if text.startswith(("http://", "https://")):
        return "/vsicurl/" + text
    return text


def gdal_env(fresh: Location | None = None) -> rasterio.Env:
    """The one GDAL configuration of SegUnify, for local and cloud reads alike:
    - a bounded block cache (GDAL's default is 5 % of RAM and fills with a large raster's blocks;
      GDAL_CACHEMAX in the environment still wins; rasterio hands an integer to GDALSetCacheMax,
      which takes bytes);
    - GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR: opening a COG by URL lists no folder and probes no
      sidecar files (one request for the header, then range requests for the blocks read);
    - retries with a delay on transient HTTP errors (429, 5xx), and connect/read timeouts so that
      an unreachable host fails instead of hanging;
    - the S3 endpoint of an S3-compatible store, from AWS_ENDPOINT_URL (settings.s3_endpoint).
    CPL_VSIL_CURL_ALLOWED_EXTENSIONS is left unset: STAC asset and signed URLs often end in no
    extension at all, and EMPTY_DIR already stops the sidecar probing it would limit.
    fresh: a prefix whose objects GDAL must not serve from its cache (a job folder, whose keys a
    later job in the same process may write again with other bytes)."""
    options: dict[str, Any] = {
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MAX_RETRY": settings.HTTP_RETRIES,
        "GDAL_HTTP_RETRY_DELAY": settings.HTTP_RETRY_DELAY_S,
        "GDAL_HTTP_CONNECTTIMEOUT": settings.HTTP_CONNECT_TIMEOUT_S,
        "GDAL_HTTP_TIMEOUT": settings.HTTP_TIMEOUT_S,
    }
    if settings.environment().gdal_cachemax is None:
        options["GDAL_CACHEMAX"] = settings.GDAL_CACHE_MB * 1024 * 1024
    if fresh is not None and is_object_store(fresh):
        options["CPL_VSIL_CURL_NON_CACHED"] = gdal_path(fresh)
    endpoint = settings.s3_endpoint()
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(AWS_S3_ENDPOINT=parts.netloc, AWS_HTTPS="NO" if parts.scheme == "http" else "YES",
                       AWS_VIRTUAL_HOSTING="FALSE")
    return rasterio.Env(**options)


# Locations as text: joining and naming without folding "s3://" into "s3:/".
def join(folder: Location, name: str) -> Location:
    return f"{str(folder).rstrip('/')}/{name}" if is_url(str(folder)) else Path(folder) / name


def name_of(path: Location) -> str:
    return posixpath.basename(str(path).rstrip("/")) if is_url(str(path)) else Path(path).name


def parent_of(path: Location) -> Location:
    return posixpath.dirname(str(path).rstrip("/")) if is_url(str(path)) else Path(path).parent


def with_suffix(path: Location, suffix: str) -> Location:
    if not is_url(str(path)):
        return Path(path).with_suffix(suffix)
    stem, _ = posixpath.splitext(str(path))
    return stem + suffix


def stem_of(path: Location) -> str:
    return posixpath.splitext(name_of(path))[0]


# Object stores, through fsspec.
def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec file system of a URL and the path inside it (the S3 endpoint from settings; the
    credentials are botocore's to find)."""
    try:
        import fsspec
    except ImportError:
        raise SegUnifyError(f"Reading or writing '{url}' needs the cloud extra; install it with "
                            'pip install "segunify[cloud]".') from None
    protocol = url.split("://", 1)[0]
    options: dict[str, Any] = {}
    if protocol == "s3":
        endpoint = settings.s3_endpoint()
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        if settings.s3_anonymous():
            options["anon"] = True
    try:
        fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
    except ImportError:
        raise SegUnifyError(f"Reading or writing '{url}' needs the cloud extra; install it with "
                            'pip install "segunify[cloud]".') from None
    return fs, url.split("://", 1)[1] if protocol == "s3" else url


def _object_error(url: str, exc: BaseException, writing: bool) -> SegUnifyError:
    """One sentence for a failed object-store operation."""
    name = type(exc).__name__
    text = str(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError") or "Unable to locate credentials" in text:
        return SegUnifyError(f"No AWS credentials were found for '{url}'; {CREDENTIALS_HINT}.")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text or "403" in text:
        if writing:
            return SegUnifyError(f"The bucket refused writing '{url}' (access denied); give the credentials write "
                                 "access to it, or choose another output.")
        return SegUnifyError(f"Access to '{url}' was denied (HTTP 403); check that the credentials ({CREDENTIALS_HINT}) "
                             "may read it.")
    if isinstance(exc, FileNotFoundError) or "NoSuchBucket" in text or "NoSuchKey" in text:
        what = "its bucket does not exist" if writing or "NoSuchBucket" in text else "no such bucket or key"
        return SegUnifyError(f"'{url}' was not found ({what}); check the URL.")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or isinstance(exc, OSError):
        return SegUnifyError(f"Cannot reach the storage host of '{url}' ({name}); check the address "
                             "(AWS_ENDPOINT_URL) and the network connection.")
    verb = "Writing" if writing else "Reading"
    return SegUnifyError(f"{verb} '{url}' failed ({name}: {text.splitlines()[0][:120] if text else ''}); check the "
                         "URL and the credentials.")


def _on_object(url: str, operation: Callable[[Any, str], Any], writing: bool = False) -> Any:
    """operation(filesystem, key) on the object at `url`; its failure as one sentence."""
    fs, key = filesystem(url)
    try:
        return operation(fs, key)
    except SegUnifyError:
        raise
    except Exception as exc:
        raise _object_error(url, exc, writing=writing) from None


def upload(local: Path, url: str) -> None:
    """Put a finished local file at `url` as one object (it appears whole when its upload completes;
    a failed upload leaves no object)."""
    _on_object(url, lambda fs, key: fs.put_file(str(local), key), writing=True)


def exists(path: Location) -> bool:
    if not is_object_store(path):
        return Path(path).exists()
    return bool(_on_object(str(path), lambda fs, key: fs.exists(key)))


def is_file(path: Location) -> bool:
    if not is_object_store(path):
        return Path(path).is_file()
    return bool(_on_object(str(path), lambda fs, key: fs.isfile(key)))


def read_bytes(path: Location) -> bytes:
    if not is_object_store(path):
        return Path(path).read_bytes()
    return bytes(_on_object(str(path), lambda fs, key: fs.cat_file(key)))


def download(url: str, local: Path) -> None:
    _on_object(url, lambda fs, key: fs.get_file(key, str(local)))


def sha256(path: Location) -> str:
    """SHA-256 of a local file or an object."""
    digest = hashlib.sha256()
    if is_object_store(path):
        fs, inner = filesystem(str(path))
        opener: Any = fs.open(inner, "rb")
    else:
        opener = open(path, "rb")
    with opener as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_folder(folder: Location) -> None:
    """A local folder is created; an object store has no folders (keys carry the prefix)."""
    if not is_object_store(folder):
        Path(folder).mkdir(parents=True, exist_ok=True)


def remove_tree(folder: Location) -> None:
    """Remove a folder, or every object under a prefix; quietly when there is none."""
    if not is_object_store(folder):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return
    fs, inner = filesystem(str(folder))
    try:
        if fs.exists(inner):
            fs.rm(inner, recursive=True)
    except FileNotFoundError:
        pass


def list_objects(prefix: str, suffixes: set[str]) -> list[str]:
    """The objects under an s3:// prefix whose names end in one of `suffixes` (sorted URLs)."""
    found = _on_object(prefix, lambda fs, key: fs.find(key.rstrip("/")))
    scheme = prefix.split("://", 1)[0]
    return sorted(f"{scheme}://{key}" for key in found
                  if posixpath.splitext(key)[1].lower() in suffixes and not posixpath.basename(key).startswith("."))


def stat_key(path: Location) -> tuple[Any, ...]:
    """What identifies an input's content for the resume fingerprint: size and mtime of a file;
    size and ETag/Last-Modified of an object or a URL; the name itself for other GDAL paths."""
    text = str(path)
    if is_object_store(text):
        fs, inner = filesystem(text)
        try:
            info = fs.info(inner)
        except Exception:  # unreadable inputs are reported by planning
            return (text,)
        return (info.get("size"), str(info.get("ETag") or info.get("LastModified") or ""))
    if text.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(urllib.request.Request(text, method="HEAD"),
                                        timeout=settings.HTTP_TIMEOUT_S) as response:
                headers = response.headers
                return (headers.get("Content-Length"), headers.get("ETag") or headers.get("Last-Modified"))
        except (OSError, ValueError):
            return (text,)
    if is_url(text):
        return (text,)
    st = Path(text).stat()
    return st.st_size, st.st_mtime_ns


def describe_open_failure(url: str) -> SegUnifyError:
    """Why GDAL could not open a URL, in one sentence: the host, the status, the credentials, or
    the content (not a raster). Asked only after a failed open, so it costs nothing otherwise."""
    if url.startswith(("http://", "https://")):
        request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
        try:
            with urllib.request.urlopen(request, timeout=settings.HTTP_TIMEOUT_S):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return SegUnifyError(f"Input '{url}' was not found on the server (HTTP 404); check the URL.")
            if exc.code in (401, 403):
                return SegUnifyError(f"Input '{url}' was refused by the server (HTTP {exc.code}); the URL needs "
                                     "access rights (a signed URL or a token): check it.")
            return SegUnifyError(f"Input '{url}': the server answered HTTP {exc.code}; check the URL or try again later.")
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return SegUnifyError(f"Cannot reach the host of '{url}' ({reason}); check the address and the network "
                                 "connection.")
    elif url.startswith("s3://"):
        fs, inner = filesystem(url)
        try:
            fs.info(inner)
        except Exception as exc:
            return _object_error(url, exc, writing=False)
    return SegUnifyError(f"Input '{url}' is not a raster GDAL can read; give the URL of a GeoTIFF/COG (or a STAC "
                         "item, choosing its asset with --asset).")
