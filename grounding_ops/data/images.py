"""Safe image resolution inside the images root, and bounded decoding.

An annotation's ``image`` is a path relative to ``--images-root`` (a folder or an
``s3://bucket/prefix``) or an ``s3://`` URI in the images root's bucket (or a bucket
explicitly allowed). ``..`` components, absolute paths outside the root, symlinks
pointing out of it and other buckets are refused before anything is read.

Decoding reads the header first and refuses images over the pixel limit before the
pixels are decompressed (decompression bombs), then decodes fully so truncated or
corrupt files are caught here rather than in the trainer.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from grounding_ops.storage import StorageError, open_store, split_s3_uri

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
# An image file larger than this is refused before it is read (a 16-bit chest X-ray PNG is
# tens of megabytes; a multi-gigabyte "image" would end in MemoryError).
DEFAULT_MAX_IMAGE_BYTES = 256 * 1024 * 1024


class ImageTooLarge(ValueError):
    """The image file is over the byte cap; nothing was read."""


class UnsafeImagePath(ValueError):
    """The image reference points outside the images root."""


@dataclass(frozen=True)
class ImageCheck:
    """What validation needs to know about one image; later checks are None when an
    earlier one failed (so only the first failing reason is reported)."""

    inside_root: bool
    exists: bool | None = None
    decodes: bool | None = None
    within_pixel_limit: bool | None = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    nbytes: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.inside_root and self.exists and self.decodes and self.within_pixel_limit)


@dataclass(frozen=True)
class DecodedSize:
    width: int | None
    height: int | None
    decodes: bool
    within_pixel_limit: bool | None
    detail: str = ""


def decode_image(data: bytes, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> DecodedSize:
    """Decode ``data``, refusing more than ``max_image_pixels`` before decompressing."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            return DecodedSize(None, None, True, False, f"decompression bomb refused by Pillow: {exc}")
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            return DecodedSize(None, None, False, None, f"not a decodable image: {exc}")
        with image:
            width, height = image.size
            if width * height > max_image_pixels:
                return DecodedSize(
                    width,
                    height,
                    True,
                    False,
                    f"{width}x{height} = {width * height} pixels is over the limit of "
                    f"{max_image_pixels} (raise --max-image-pixels if this is a real image)",
                )
            try:
                image.load()
            except Image.DecompressionBombError as exc:
                return DecodedSize(width, height, True, False, f"decompression bomb refused by Pillow: {exc}")
            except (OSError, ValueError, SyntaxError, EOFError) as exc:
                return DecodedSize(width, height, False, None, f"image data does not decode: {exc}")
    if width <= 0 or height <= 0:
        return DecodedSize(width, height, False, None, f"image has an empty size {width}x{height}")
    return DecodedSize(width, height, True, True)


class ImageResolver:
    """Resolves annotation image references inside one images root and reads them."""

    def __init__(
        self, images_root: str | Path, *, s3_client: Any | None = None, allowed_buckets: tuple[str, ...] = ()
    ) -> None:
        self.root_uri = str(images_root)
        self._s3_client = s3_client
        self._stores: dict[str, Any] = {}
        if self.root_uri.startswith("s3://"):
            bucket, prefix = split_s3_uri(self.root_uri)
            self.root_bucket: str | None = bucket
            self.root_prefix = prefix
            self.root_path: Path | None = None
        else:
            self.root_bucket = None
            self.root_prefix = ""
            self.root_path = Path(self.root_uri.removeprefix("file://")).expanduser().resolve()
        self.allowed_buckets = tuple(b for b in (self.root_bucket, *allowed_buckets) if b)

    def _store(self, uri: str) -> Any:
        if uri not in self._stores:
            self._stores[uri] = open_store(uri, s3_client=self._s3_client)
        return self._stores[uri]

    def locate(self, ref: str) -> tuple[str, str]:
        """``(store_uri, key)`` for ``ref``, or :class:`UnsafeImagePath` saying why not."""
        if "\x00" in ref:
            raise UnsafeImagePath("image path contains a NUL character")
        if ref.startswith("s3://"):
            bucket, key = split_s3_uri(ref)
            if bucket not in self.allowed_buckets:
                allowed = ", ".join(self.allowed_buckets) or "none (the images root is a local folder)"
                raise UnsafeImagePath(f"image {ref!r} is in bucket {bucket!r}; allowed buckets: {allowed}")
            if not key or ".." in PurePosixPath(key).parts:
                raise UnsafeImagePath(f"image {ref!r} has an empty key or a '..' component")
            if bucket == self.root_bucket and self.root_prefix and not key.startswith(self.root_prefix + "/"):
                raise UnsafeImagePath(f"image {ref!r} is outside the images root {self.root_uri}")
            return f"s3://{bucket}", key
        if "://" in ref:
            raise UnsafeImagePath(f"image {ref!r} uses an unsupported scheme; use a path or an s3:// URI")
        posix = PurePosixPath(ref.replace("\\", "/"))
        if ".." in posix.parts:
            raise UnsafeImagePath(f"image path {ref!r} contains '..'; paths must stay inside the images root")
        if self.root_path is None:  # S3 images root
            if posix.is_absolute():
                raise UnsafeImagePath(f"image path {ref!r} is absolute; give it relative to {self.root_uri}")
            return f"s3://{self.root_bucket}", "/".join(p for p in (self.root_prefix, posix.as_posix()) if p)
        candidate = Path(posix) if posix.is_absolute() else self.root_path / posix
        resolved = candidate.resolve()
        if resolved != self.root_path and self.root_path not in resolved.parents:
            raise UnsafeImagePath(f"image path {ref!r} resolves outside the images root")
        return str(self.root_path), resolved.relative_to(self.root_path).as_posix()

    def read(self, ref: str, max_bytes: int | None = None) -> bytes | None:
        """The image bytes, or None when there is no such image (unsafe refs raise, and so
        does a file over ``max_bytes``: :class:`ImageTooLarge`, before reading it)."""
        store_uri, key = self.locate(ref)
        store = self._store(store_uri)
        if self.root_path is not None and store_uri == str(self.root_path):
            path = self.root_path / key
            if not path.is_file():
                return None
            if max_bytes is not None and path.stat().st_size > max_bytes:
                raise ImageTooLarge(
                    f"image file is {path.stat().st_size} bytes, over the cap of {max_bytes} "
                    "(raise --max-image-bytes if this is a real image)"
                )
            return path.read_bytes()
        try:
            if max_bytes is not None and hasattr(store, "client"):
                response = store._call("read", key, store.client.get_object, Bucket=store.bucket, Key=store._key(key))
                length = int(response.get("ContentLength") or 0)
                if length > max_bytes:
                    response["Body"].close()
                    raise ImageTooLarge(
                        f"image object is {length} bytes, over the cap of {max_bytes} "
                        "(raise --max-image-bytes if this is a real image)"
                    )
                return response["Body"].read()
            return store.get_bytes(key)
        except StorageError as exc:
            cause = exc.__cause__
            code = getattr(cause, "response", {}).get("Error", {}).get("Code") if cause is not None else None
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def check(self, ref: str, max_image_pixels: int, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> ImageCheck:
        try:
            data = self.read(ref, max_image_bytes)
        except UnsafeImagePath as exc:
            return ImageCheck(inside_root=False, detail=str(exc))
        except ImageTooLarge as exc:
            return ImageCheck(inside_root=True, exists=True, decodes=True, within_pixel_limit=False, detail=str(exc))
        except ValueError as exc:  # a path the OS refuses (embedded NUL, too long)
            return ImageCheck(inside_root=False, detail=f"unusable image path: {exc}")
        except OSError as exc:
            return ImageCheck(inside_root=True, exists=False, detail=f"cannot read image: {exc.strerror or exc}")
        if data is None:
            return ImageCheck(inside_root=True, exists=False, detail=f"no image at {ref!r} under the images root")
        decoded = decode_image(data, max_image_pixels)
        return ImageCheck(
            inside_root=True,
            exists=True,
            decodes=decoded.decodes,
            within_pixel_limit=decoded.within_pixel_limit if decoded.decodes else None,
            width=decoded.width,
            height=decoded.height,
            sha256=hashlib.sha256(data).hexdigest(),
            nbytes=len(data),
            detail=decoded.detail,
        )


class ImageCheckCache:
    """A bounded LRU of image checks: annotations usually share images."""

    def __init__(
        self,
        resolver: ImageResolver,
        max_image_pixels: int,
        capacity: int = 4096,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        self.resolver = resolver
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes
        self.capacity = capacity
        self._entries: OrderedDict[str, ImageCheck] = OrderedDict()

    def get(self, ref: str) -> ImageCheck:
        entry = self._entries.get(ref)
        if entry is not None:
            self._entries.move_to_end(ref)
            return entry
        entry = self.resolver.check(ref, self.max_image_pixels, self.max_image_bytes)
        self._entries[ref] = entry
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return entry

    def get_many(self, refs: set[str] | list[str], workers: int = 0) -> dict[str, ImageCheck]:
        """Checks of ``refs`` (each distinct image once): cached ones from the LRU, the others
        read and decoded by a thread pool (I/O, hashing and most of the decoding release the
        GIL), ``workers`` threads (0: four per CPU, at most 32)."""
        import os
        from concurrent.futures import ThreadPoolExecutor

        found: dict[str, ImageCheck] = {}
        missing: list[str] = []
        for ref in refs:
            entry = self._entries.get(ref)
            if entry is None:
                missing.append(ref)
            else:
                self._entries.move_to_end(ref)
                found[ref] = entry
        workers = workers or min(32, 4 * (os.cpu_count() or 1))
        if len(missing) > 1 and workers > 1:
            with ThreadPoolExecutor(max_workers=min(workers, len(missing))) as pool:
                results = pool.map(
                    lambda r: self.resolver.check(r, self.max_image_pixels, self.max_image_bytes), missing
                )
                for ref, entry in zip(missing, results):
                    found[ref] = entry
        else:
            for ref in missing:
                found[ref] = self.resolver.check(ref, self.max_image_pixels, self.max_image_bytes)
        for ref in missing:
            self._entries[ref] = found[ref]
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return found
