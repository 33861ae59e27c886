"""One image file read whole: every byte decoded, so a truncated or damaged file is an error that names it.

OpenCV's reader decodes a JPEG cut off halfway without an error (libjpeg fills the rest with gray and
prints a warning without the file's name), and Pillow stays silent on libjpeg's warnings about corrupt data.
So JPEGs are decoded by simplejpeg (libjpeg-turbo) in strict mode, where each of those warnings is an
error, and other formats by Pillow, whose own warnings are collected per file (docs/integrity.md). No Keras
or TensorFlow here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageError", "file_warnings", "read_image", "recording_warnings"]

_local = threading.local()

#: Pillow's transposition for each EXIF orientation (as ``PIL.ImageOps.exif_transpose`` does it).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """An image file that cannot be used: unreadable, not an image, truncated or damaged."""

    def __init__(self, path, detail, unidentified=False):
        super().__init__(f"{path}: {detail}")
        self.path, self.detail, self.unidentified = str(path), detail, unidentified


def read_image(path, *, orient: bool = False, sha256: str | None = None) -> np.ndarray:
    """The whole image at ``path`` as uint8 BGR ``(H, W, 3)`` (OpenCV's order), every byte decoded.

    ``orient`` applies the EXIF orientation (photos from outside the dataset; the dataset's boxes are in raw
    pixels, so its images keep them). ``sha256``: the file must have that digest (a file carclf wrote).
    Raises :class:`ImageError` naming the file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(path, f"cannot be read ({exc.strerror or exc})") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageError(path, f"its content ({len(data)} bytes) does not match the checksum recorded when written")
    image = _jpeg(path, data) if data[:3] == b"\xff\xd8\xff" else None
    if image is None:
        image = _pillow(path, data)
    return _upright(data, image) if orient else image


def _jpeg(path, data):
    """A JPEG decoded strictly (libjpeg's warnings are errors); None for one libjpeg-turbo cannot turn into
    BGR (CMYK), which Pillow decodes."""
    try:
        if simplejpeg.decode_jpeg_header(data)[2] not in ("Gray", "YCbCr", "RGB"):
            return None
        return simplejpeg.decode_jpeg(data, colorspace="BGR", strict=True)
    except ValueError as exc:
        raise ImageError(path, f"damaged JPEG data ({exc})") from None


def _pillow(path, data):
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        return _opencv_only(path, data)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for damaged data
        raise ImageError(path, f"damaged image data ({type(exc).__name__}: {exc})") from None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


def _upright(data, image):
    """``image`` turned as its EXIF orientation says (read by Pillow from the same bytes)."""
    with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as source:
        method = _UPRIGHT.get(source.getexif().get(0x0112))
        if method is not None:
            return np.ascontiguousarray(np.asarray(Image.fromarray(image).transpose(method)))
    return image


def _opencv_only(path, data):
    """A format Pillow does not know may still be one OpenCV reads."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ImageError(path, f"not an image ({len(data)} bytes that neither Pillow nor OpenCV decode)", True)
    return image


@contextlib.contextmanager
def recording_warnings():
    """While the block runs, a warning raised by a thread inside :func:`file_warnings` goes to that file's list
    instead of the console (the decoder's worker threads each decode one file at a time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            caught = getattr(_local, "caught", None)
            if caught is None:
                show(message, category, filename, lineno, file, line)
            else:
                caught.append(f"{category.__name__}: {message}")

        warnings.showwarning = record
        yield


@contextlib.contextmanager
def file_warnings():
    """The warnings this thread raises in the block, as a list of strings (see :func:`recording_warnings`)."""
    _local.caught = caught = []
    try:
        yield caught
    finally:
        _local.caught = None
