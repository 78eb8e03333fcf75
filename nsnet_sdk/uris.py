"""Inputs named by URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``): listing a prefix and
reading one object with the same byte limit as a local file, each failure a typed error naming
the URI.

Object stores are reached through ``pyarrow.fs`` (installed with the [ray] extra), which takes
credentials, region and endpoint from the standard environment and config of each store
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ``GOOGLE_APPLICATION_CREDENTIALS``…),
never from the URI or the listing. A ``file://`` URI is a local path read through
`nsnet_sdk.pipeline.read`, so the guards of ``nsnet detect`` apply to it unchanged.
"""
from __future__ import annotations

import threading
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

from .errors import ImageDecodeError, ImageTooLargeError
from .pipeline.scan import _looks_like_image
from .pipeline.read import read_image_file

__all__ = ["has_scheme", "local_path", "read_uri", "list_prefix"]

_lock = threading.Lock()
_filesystems: dict[tuple[str, str], Any] = {}


def has_scheme(s: str) -> bool:
    """Whether ``s`` is a URI (``scheme://…``) rather than a local path."""
    head, sep, _ = s.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


def local_path(uri: str) -> str | None:
    """The local path of a ``file://`` URI (percent-escapes decoded), None for other schemes."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != "file":
        return None
    return unquote(parts.path, errors="surrogateescape")


def _filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it); one filesystem per scheme and bucket, reused."""
    import pyarrow.fs as pafs

    parts = urlsplit(uri)
    key = (parts.scheme.lower(), parts.netloc)
    with _lock:
        fs = _filesystems.get(key)
    if fs is None:
        fs, path = pafs.FileSystem.from_uri(uri)
        with _lock:
            _filesystems[key] = fs
        return fs, path
    return fs, (parts.netloc + parts.path) if key[0] in ("s3", "gs", "gcs") else parts.path


def read_uri(uri: str, limit: int) -> bytes:
    """The bytes of the object at ``uri``, at most ``limit``: its size is asked for before any byte
    is read. Raises `ImageDecodeError` (missing, a prefix, unreachable, refused) or
    `ImageTooLargeError` naming ``uri``."""
    path = local_path(uri)
    if path is not None:
        return read_image_file(path, limit, uri)
    try:
        import pyarrow.fs as pafs

        fs, inner = _filesystem(uri)
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise ImageDecodeError(f"{uri}: no such object", uri)
        if info.type != pafs.FileType.File:
            raise ImageDecodeError(f"{uri}: not an object (a prefix or directory); end a prefix "
                                   "with / to score what it holds", uri)
        if info.size is not None and info.size > limit:
            raise ImageTooLargeError(f"{uri}: object is {info.size:,} bytes, over the limit of "
                                     f"{limit:,} (raise max_pixels to accept it)", uri)
        with fs.open_input_stream(inner) as f:
            data = f.read(limit + 1)
    except (ImageDecodeError, ImageTooLargeError):
        raise
    except ImportError:
        raise ImageDecodeError(f"{uri}: reading URIs needs pyarrow: pip install 'nsnet-sdk[ray]'",
                               uri) from None
    except Exception as e:  # network, credentials, permissions: this input's row, not the job
        raise ImageDecodeError(f"{uri}: cannot read: {type(e).__name__}: {e}", uri) from None
    if len(data) > limit:
        raise ImageTooLargeError(f"{uri}: object grew past the limit of {limit:,} bytes while read",
                                 uri)
    return data


def list_prefix(uri: str) -> Iterator[str]:
    """The image objects (by name, as a folder scan picks files) under the prefix ``uri`` (which
    ends with ``/``), recursively, in key order, as URIs with the scheme and bucket of ``uri``.
    Raises `OSError` naming ``uri`` when the prefix cannot be listed (possibly after the first
    names, since a listing is read as it is used).

    ``s3://`` prefixes are listed a page (1,000 keys) at a time through boto3 when it is installed,
    so a prefix of millions of objects is never held whole; other stores, through ``pyarrow.fs``,
    are listed whole and sorted before the first name is given."""
    scheme = urlsplit(uri).scheme.lower()
    try:
        if scheme == "s3" and _has_boto3():
            yield from _list_s3(uri)
            return
        names = sorted(_list_pyarrow(uri))
    except Exception as e:
        raise OSError(f"{uri}: cannot list: {type(e).__name__}: {e}") from None
    yield from names


def _picked(rel: str) -> bool:
    # hidden names (files or folders) are skipped, as the local folder scan skips them
    return (_looks_like_image(rel.rsplit("/", 1)[-1])
            and not any(part.startswith(".") for part in rel.split("/")))


def _has_boto3() -> bool:
    import importlib.util

    return importlib.util.find_spec("boto3") is not None


def _s3_client() -> Any:
    """An S3 client configured by the standard AWS environment and config (credentials, region,
    ``AWS_ENDPOINT_URL``, profiles), as pyarrow's is for reading."""
    import boto3

    return boto3.client("s3")


def _list_s3(uri: str) -> Iterator[str]:
    # S3 gives keys in UTF-8 byte order, which is the code-point order sorted() gives the others
    parts = urlsplit(uri)
    prefix = parts.path.lstrip("/")
    pages = _s3_client().get_paginator("list_objects_v2").paginate(Bucket=parts.netloc, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", ()):
            rel = obj["Key"][len(prefix):]
            if _picked(rel):
                yield uri.rstrip("/") + "/" + rel


def _list_pyarrow(uri: str) -> Iterator[str]:
    import pyarrow.fs as pafs

    fs, inner = _filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(inner.rstrip("/"), recursive=True, allow_not_found=True))
    base = inner.rstrip("/") + "/"
    for info in infos:
        rel = info.path[len(base):] if info.path.startswith(base) else info.path
        if info.type == pafs.FileType.File and _picked(rel):
            yield uri.rstrip("/") + "/" + rel
