"""
Turning an image file into the PNG a Visionect display expects.

The geometry rule: C{DISPLAY_WIDTH} x C{DISPLAY_HEIGHT} is the size of the
PNG the device is sent, that is the panel's own (native) size, whatever way
up it hangs on the wall.  The source image is first turned upright (its EXIF
orientation), then rotated clockwise by C{DISPLAY_ROTATE} degrees, then
scaled so that it covers the whole W x H box and cropped to it around its
centre.  Nothing is letterboxed and nothing is stretched: whatever does not
fit the panel's proportions is cut off equally on both sides.  Transparent
pixels become white, the colour of blank paper.

For speed the work is done in the other order with the same result: the
source is cropped and scaled to the box as it looks before the rotation
(H x W for 90 and 270 degrees), and only the small result is rotated.

Decoding is the costly part, so a large source is decoded at reduced size
where the format allows it (JPEG decodes directly at 1/2, 1/4 or 1/8 scale),
and the final resize first shrinks by whole factors before it filters.  A
source with more pixels than Pillow's decompression-bomb limit is refused
rather than decoded.

L{convert_image} is plain blocking code.  L{ImageConverter} runs it in a
worker thread, shares one conversion between callers that want the same
file at the same time, and keeps the results in an L{ImageCache}.
"""

from __future__ import annotations

import errno
import io
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "CACHE_BYTES",
    "CacheKey",
    "Geometry",
    "ImageCache",
    "ImageConverter",
    "ImageUnavailable",
    "UnreadableImage",
    "convert_image",
    "decode_for",
]

CACHE_BYTES = 64 * 1024 * 1024

# The final resize shrinks by whole factors until it is within this factor
# of the target, then filters; 3 is indistinguishable from a full filter.
REDUCING_GAP = 3.0

# Fast PNG compression: the PNG only crosses the local network to VSS, and
# level 1 encodes a full panel several times faster than the default.
PNG_COMPRESS_LEVEL = 1

# Errors that mean the file itself is missing or forbidden: retrying cannot
# help.  Any other file-system error (a share that hangs, an I/O error) may
# pass, so it is reported as L{ImageUnavailable}.
_PERMANENT_ERRNOS = frozenset(
    {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM}
)

_CLOCKWISE = {
    90: Image.Transpose.ROTATE_270,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_90,
}


class UnreadableImage(Exception):
    """
    The file is not an image that can be shown, and never will be: missing,
    not an image, corrupt, or too large.

    @ivar path: The file.
    @ivar detail: What is wrong, in plain words, without the path.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = path
        self.detail = detail

    def __str__(self) -> str:
        return f"image {self.path!r} cannot be read: {self.detail}"


class ImageUnavailable(UnreadableImage):
    """
    The file could not be read because of a file-system error that may pass
    (a network share that stopped answering, an I/O error).
    """


@dataclass(frozen=True)
class Geometry:
    """
    What the panel expects.

    @ivar width: Width of the PNG sent, in pixels.
    @ivar height: Height of the PNG sent, in pixels.
    @ivar rotation: Degrees the source is turned clockwise: 0, 90, 180 or
        270.
    """

    width: int
    height: int
    rotation: int = 0

    def __post_init__(self) -> None:
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation is {self.rotation}; expected 0, 90, 180 or 270")
        if self.width < 1 or self.height < 1:
            raise ValueError(
                f"size is {self.width}x{self.height}; expected at least 1x1 pixels"
            )

    @property
    def upright_box(self) -> tuple[int, int]:
        """
        The size the source is cropped to before it is rotated.
        """
        if self.rotation in (90, 270):
            return (self.height, self.width)
        return (self.width, self.height)


def _file_error(path: str, error: OSError) -> UnreadableImage:
    """
    The refusal for a file-system error: permanent or passing.
    """
    detail = error.strerror or str(error)
    if error.errno in _PERMANENT_ERRNOS:
        return UnreadableImage(path, detail)
    return ImageUnavailable(path, detail)


def _cover_scale(size: tuple[int, int], box: tuple[int, int]) -> float:
    """
    The factor that makes C{size} just cover C{box}.
    """
    return max(box[0] / size[0], box[1] / size[1])


def _centre_crop(
    size: tuple[int, int], box: tuple[int, int]
) -> tuple[float, float, float, float]:
    """
    The region of an image of C{size} that, scaled, exactly fills C{box}.
    """
    scale = _cover_scale(size, box)
    width, height = box[0] / scale, box[1] / scale
    left, top = (size[0] - width) / 2, (size[1] - height) / 2
    return (left, top, left + width, top + height)


def decode_for(
    path: str, box: tuple[int, int], max_pixels: int | None = None
) -> Image.Image:
    """
    Decode the image at C{path} upright, in RGB or RGBA, at the smallest size
    the format allows that still covers C{box}.

    @param path: The file.
    @param box: The size the image will be cropped and scaled to.
    @param max_pixels: Sources with more pixels are refused; by default
        Pillow's decompression-bomb limit, C{PIL.Image.MAX_IMAGE_PIXELS}.
    @raise UnreadableImage: When the file is not a usable image.
    @raise ImageUnavailable: When the file cannot be read for now.
    """
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        source = open(path, "rb")
    except OSError as error:
        raise _file_error(path, error) from None

    with source:
        try:
            image = Image.open(source)
        except Image.DecompressionBombError:
            # Pillow refuses outright beyond twice its limit.
            beyond = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            raise UnreadableImage(
                path, f"it has more than {beyond} pixels, too many to convert safely"
            ) from None
        except UnidentifiedImageError:
            raise UnreadableImage(
                path, "it is not in an image format the dispatcher can read"
            ) from None
        except OSError as error:
            raise _file_error(path, error) from None

        pixels = image.width * image.height
        if limit is not None and pixels > limit:
            raise UnreadableImage(
                path,
                f"it is {image.width}x{image.height} pixels, more than the"
                f" {limit} pixels the dispatcher converts safely",
            )

        try:
            return _decode_upright(image, box)
        except OSError as error:
            if error.errno is not None:
                raise _file_error(path, error) from None
            raise UnreadableImage(path, str(error) or type(error).__name__) from None
        except Exception as error:
            # Decoders of damaged files raise all sorts of exceptions; each
            # of them means this file cannot be shown.
            raise UnreadableImage(path, str(error) or type(error).__name__) from None


def _decode_upright(image: Image.Image, box: tuple[int, int]) -> Image.Image:
    """
    Decode an opened image as small as C{box} allows, upright, in RGB or
    RGBA.
    """
    orientation = image.getexif().get(0x0112, 1)
    # Orientations 5 to 8 store the picture on its side.
    sideways = orientation in (5, 6, 7, 8)
    upright = (image.height, image.width) if sideways else image.size
    scale = _cover_scale(upright, box)
    if scale < 1:
        # Only JPEG acts on this: it decodes at 1/2, 1/4 or 1/8 scale as
        # long as the result still covers the box.
        image.draft(
            "RGB",
            (
                max(1, math.ceil(image.width * scale)),
                max(1, math.ceil(image.height * scale)),
            ),
        )
    image.load()
    ImageOps.exif_transpose(image, in_place=True)

    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    wanted = "RGBA" if transparent else "RGB"
    if image.mode != wanted:
        image = image.convert(wanted)
    return image


def convert_image(
    path: str, geometry: Geometry, max_pixels: int | None = None
) -> bytes:
    """
    Read the image at C{path} and return the PNG to send to the panel (see
    the module's description for the geometry).  Blocks: call it from a
    worker thread.

    @raise UnreadableImage: When the file is not a usable image.
    @raise ImageUnavailable: When the file cannot be read for now.
    """
    box = geometry.upright_box
    image = decode_for(path, box, max_pixels)

    image = image.resize(
        box,
        Image.Resampling.LANCZOS,
        box=_centre_crop(image.size, box),
        reducing_gap=REDUCING_GAP,
    )
    if image.mode == "RGBA":
        paper = Image.new("RGB", image.size, "white")
        paper.paste(image, mask=image.getchannel("A"))
        image = paper
    if geometry.rotation:
        image = image.transpose(_CLOCKWISE[geometry.rotation])

    encoded = io.BytesIO()
    image.save(encoded, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return encoded.getvalue()


@dataclass(frozen=True)
class CacheKey:
    """
    Identifies one conversion: the file as it was, and the geometry.
    """

    path: str
    size: int
    mtime_ns: int
    width: int
    height: int
    rotation: int


class ImageCache:
    """
    Converted images, least recently used dropped first once their total
    size passes a limit.  Safe to use from several threads.

    @ivar max_bytes: The limit.
    @ivar total_bytes: The size of what is kept.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._entries: OrderedDict[CacheKey, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """
        The number of PNGs kept.
        """
        return len(self._entries)

    def get(self, key: CacheKey) -> bytes | None:
        """
        The PNG for C{key}, or C{None}; a hit makes it the most recent.
        """
        with self._lock:
            png = self._entries.get(key)
            if png is not None:
                self._entries.move_to_end(key)
            return png

    def put(self, key: CacheKey, png: bytes) -> None:
        """
        Keep C{png} for C{key}, dropping the least recently used entries to
        stay under the limit.  A PNG larger than the whole limit is not kept.
        """
        if len(png) > self.max_bytes:
            return
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self.total_bytes -= len(previous)
            self._entries[key] = png
            self.total_bytes += len(png)
            while self.total_bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.total_bytes -= len(dropped)


RunInThread = Callable[..., "Deferred[Any]"]


class ImageConverter:
    """
    Converts images in worker threads, at most once per file version and
    geometry while the cache keeps the result.

    A caller that gives up (cancels) is answered at once; the conversion
    itself cannot be interrupted, so it finishes in its thread and its
    result goes to the cache, where a later request for the same image
    finds it.
    """

    log = Logger()

    def __init__(
        self,
        geometry: Geometry,
        run_in_thread: RunInThread,
        cache: ImageCache | None = None,
        convert: Callable[[str, Geometry], bytes] = convert_image,
    ) -> None:
        """
        @param geometry: What the panel expects.
        @param run_in_thread: Runs C{function(*args)} in a worker thread and
            returns a L{Deferred} of its result, as
            L{twisted.internet.threads.deferToThreadPool} does.
        @param cache: Where results are kept; a new 64 MB cache by default.
        @param convert: Does one conversion; blocking.
        """
        self.geometry = geometry
        self.cache = ImageCache() if cache is None else cache
        self._run_in_thread = run_in_thread
        self._convert = convert
        self._running: dict[str, list[Deferred[bytes]]] = {}

    def png_for(self, path: str) -> Deferred[bytes]:
        """
        The PNG for the image at C{path}.

        @return: A L{Deferred} that fires with the PNG, or fails with
            L{UnreadableImage} or L{ImageUnavailable}.  Cancelling it fails
            it with L{CancelledError} at once.
        """
        waiter: Deferred[bytes] = Deferred()
        waiters = self._running.get(path)
        if waiters is not None:
            waiters.append(waiter)
            return waiter

        self._running[path] = [waiter]
        converting = self._run_in_thread(self._prepare, path)
        converting.addBoth(self._finished, path)
        return waiter

    def _key(self, path: str) -> CacheKey:
        """
        The cache key of the file as it is now.

        @raise UnreadableImage: When it cannot be examined.
        """
        try:
            status = os.stat(path)
        except OSError as error:
            raise _file_error(path, error) from None
        geometry = self.geometry
        return CacheKey(
            path,
            status.st_size,
            status.st_mtime_ns,
            geometry.width,
            geometry.height,
            geometry.rotation,
        )

    def _prepare(self, path: str) -> bytes:
        """
        Find or make the PNG.  Runs in a worker thread.
        """
        key = self._key(path)
        png = self.cache.get(key)
        if png is not None:
            return png

        started = time.perf_counter()
        png = self._convert(path, self.geometry)
        self.log.debug(
            "Converted {path} to a {width}x{height} PNG of {size} bytes"
            " in {seconds:.3f} s",
            path=path,
            width=self.geometry.width,
            height=self.geometry.height,
            size=len(png),
            seconds=time.perf_counter() - started,
        )
        # A file replaced while it was being converted must not leave its
        # new content cached under the old version's key.
        if self._key(path) == key:
            self.cache.put(key, png)
        return png

    def _finished(self, result: bytes | Failure, path: str) -> None:
        """
        Hand a conversion's result to every caller still waiting for it.
        """
        waiters = self._running.pop(path, [])
        live = [waiter for waiter in waiters if not waiter.called]
        if isinstance(result, Failure):
            if not live and not isinstance(result.value, UnreadableImage):
                self.log.failure(
                    "Unexpected error while converting {path}", result, path=path
                )
            for waiter in live:
                waiter.errback(result)
        else:
            for waiter in live:
                waiter.callback(result)
