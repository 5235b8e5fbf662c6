"""
Tests for L{vss_dispatcher.imaging}: the geometry of the PNG sent to the
panel, reduced decoding of large sources, refusals of unusable files, the
cache, and the sharing of conversions between callers.

Every image is drawn by the test itself in a temporary directory.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

from PIL import Image
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.imaging import (
    CacheKey,
    Geometry,
    ImageCache,
    ImageConverter,
    ImageUnavailable,
    UnreadableImage,
    _file_error,
    convert_image,
    decode_for,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)

# Sample points of a 160x90 output, well inside each quadrant.
TOP_LEFT, TOP_RIGHT = (20, 20), (140, 20)
BOTTOM_LEFT, BOTTOM_RIGHT = (20, 70), (140, 70)


def quadrants(size: tuple[int, int]) -> Image.Image:
    """
    An image whose top-left quarter is red, top-right green, bottom-left
    blue and bottom-right white, so any turn or mirror shows.
    """
    width, height = size
    image = Image.new("RGB", size, WHITE)
    image.paste(RED, (0, 0, width // 2, height // 2))
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    return image


def decoded(png: bytes) -> Image.Image:
    """
    The PNG as an image, checking that it is one.
    """
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG", image.format
    image.load()
    return image


class ColourAssertions:
    """
    Pixel checks that tolerate the softening of resampling and JPEG.
    """

    assertEqual: Callable[..., None]
    fail: Callable[..., Any]

    def assert_colour(
        self,
        image: Image.Image,
        point: tuple[int, int],
        expected: tuple[int, int, int],
        tolerance: int = 8,
    ) -> None:
        """
        Assert that the pixel at C{point} is C{expected}, give or take
        C{tolerance} per channel.
        """
        actual = image.getpixel(point)
        assert isinstance(actual, tuple)
        if any(abs(a - e) > tolerance for a, e in zip(actual, expected, strict=True)):
            self.fail(f"pixel {point} is {actual}, expected {expected}")

    def assert_corners(
        self,
        image: Image.Image,
        top_left: tuple[int, int, int],
        top_right: tuple[int, int, int],
        bottom_left: tuple[int, int, int],
        bottom_right: tuple[int, int, int],
        tolerance: int = 8,
    ) -> None:
        """
        Assert the colour of each quadrant of a 160x90 image.
        """
        self.assert_colour(image, TOP_LEFT, top_left, tolerance)
        self.assert_colour(image, TOP_RIGHT, top_right, tolerance)
        self.assert_colour(image, BOTTOM_LEFT, bottom_left, tolerance)
        self.assert_colour(image, BOTTOM_RIGHT, bottom_right, tolerance)


class GeometryTests(SynchronousTestCase, ColourAssertions):
    """
    The PNG is always the panel's size, covers it completely, and is turned
    the documented way.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def save(self, image: Image.Image, name: str, **options: Any) -> str:
        """
        Save C{image} in the test's directory and return its path.
        """
        path = os.path.join(self.directory, name)
        image.save(path, **options)
        return path

    def test_landscape_source_loses_its_sides(self) -> None:
        """
        A source wider than the panel is scaled to the panel's height and
        cropped equally left and right.
        """
        source = Image.new("RGB", (300, 100), GREEN)
        source.paste(RED, (0, 0, 100, 100))
        source.paste(BLUE, (200, 0, 300, 100))
        path = self.save(source, "wide.png")

        image = decoded(convert_image(path, Geometry(160, 90)))

        self.assertEqual((image.size, image.mode), ((160, 90), "RGB"))
        # Scaled by 0.9 to 270x90, then 55 columns cut on each side: the red
        # third ends at column 35 and the blue one starts at column 125.
        self.assert_colour(image, (2, 45), RED)
        self.assert_colour(image, (32, 45), RED)
        self.assert_colour(image, (38, 45), GREEN)
        self.assert_colour(image, (122, 45), GREEN)
        self.assert_colour(image, (128, 45), BLUE)
        self.assert_colour(image, (157, 45), BLUE)

    def test_portrait_source_loses_top_and_bottom(self) -> None:
        """
        A source taller than the panel is scaled to the panel's width and
        cropped equally at the top and bottom, with no bars at the sides.
        """
        source = Image.new("RGB", (100, 400), BLUE)
        source.paste(RED, (0, 0, 100, 200))
        path = self.save(source, "tall.png")

        image = decoded(convert_image(path, Geometry(160, 90)))

        self.assertEqual(image.size, (160, 90))
        # Scaled by 1.6 to 160x640, then 275 rows cut at the top and bottom:
        # the red half ends at row 45.
        for x in (1, 80, 158):
            self.assert_colour(image, (x, 2), RED)
            self.assert_colour(image, (x, 42), RED)
            self.assert_colour(image, (x, 48), BLUE)
            self.assert_colour(image, (x, 88), BLUE)

    def test_matching_proportions_keep_everything(self) -> None:
        """
        A source with the panel's proportions is scaled whole, nothing cut.
        """
        path = self.save(quadrants((640, 360)), "same.png")

        image = decoded(convert_image(path, Geometry(160, 90)))

        self.assertEqual(image.size, (160, 90))
        self.assert_corners(image, RED, GREEN, BLUE, WHITE)
        self.assert_colour(image, (0, 0), RED)
        self.assert_colour(image, (159, 89), WHITE)

    def test_small_source_is_enlarged(self) -> None:
        """
        A source smaller than the panel is scaled up to cover it.
        """
        path = self.save(quadrants((32, 18)), "small.png")

        image = decoded(convert_image(path, Geometry(160, 90)))

        self.assertEqual(image.size, (160, 90))
        self.assert_corners(image, RED, GREEN, BLUE, WHITE)

    def test_rotation_90_turns_clockwise(self) -> None:
        """
        With rotation 90 the source is turned a quarter clockwise and the
        PNG keeps the panel's width and height: a portrait source fills a
        landscape panel.
        """
        path = self.save(quadrants((90, 160)), "portrait.png")

        image = decoded(convert_image(path, Geometry(160, 90, 90)))

        self.assertEqual(image.size, (160, 90))
        # Clockwise: the left side goes to the top.
        self.assert_corners(image, BLUE, RED, WHITE, GREEN)

    def test_rotation_180_turns_upside_down(self) -> None:
        """
        With rotation 180 the source is turned upside down.
        """
        path = self.save(quadrants((160, 90)), "landscape.png")

        image = decoded(convert_image(path, Geometry(160, 90, 180)))

        self.assertEqual(image.size, (160, 90))
        self.assert_corners(image, WHITE, BLUE, GREEN, RED)

    def test_rotation_270_turns_anticlockwise(self) -> None:
        """
        With rotation 270 the source is turned a quarter anticlockwise.
        """
        path = self.save(quadrants((90, 160)), "portrait.png")

        image = decoded(convert_image(path, Geometry(160, 90, 270)))

        self.assertEqual(image.size, (160, 90))
        self.assert_corners(image, GREEN, WHITE, RED, BLUE)

    def test_rotation_crops_after_turning(self) -> None:
        """
        A landscape source on a rotated landscape panel is turned first, so
        it is cropped at what becomes its top and bottom.
        """
        source = Image.new("RGB", (160, 90), BLUE)
        source.paste(RED, (0, 0, 80, 90))
        path = self.save(source, "landscape.png")

        image = decoded(convert_image(path, Geometry(160, 90, 90)))

        self.assertEqual(image.size, (160, 90))
        # Turned, it is 90x160 with red on top; covering 160x90 keeps its
        # middle band, still red above blue.
        for x in (2, 80, 157):
            self.assert_colour(image, (x, 5), RED)
            self.assert_colour(image, (x, 40), RED)
            self.assert_colour(image, (x, 50), BLUE)
            self.assert_colour(image, (x, 85), BLUE)

    def test_transparency_becomes_white(self) -> None:
        """
        Transparent pixels come out white, like blank paper.
        """
        source = Image.new("RGBA", (160, 90), (0, 0, 0, 0))
        source.paste((255, 0, 0, 255), (80, 0, 160, 90))
        path = self.save(source, "clear.png")

        image = decoded(convert_image(path, Geometry(160, 90)))

        self.assertEqual(image.mode, "RGB")
        self.assert_colour(image, (20, 45), WHITE)
        self.assert_colour(image, (140, 45), RED)

    def test_palette_and_grey_sources(self) -> None:
        """
        Palette and greyscale sources come out as RGB.
        """
        palette = self.save(quadrants((160, 90)).convert("P"), "palette.gif")
        grey = self.save(Image.new("L", (160, 90), 128), "grey.png")

        image = decoded(convert_image(palette, Geometry(160, 90)))
        self.assertEqual(image.mode, "RGB")
        self.assert_corners(image, RED, GREEN, BLUE, WHITE)

        image = decoded(convert_image(grey, Geometry(160, 90)))
        self.assertEqual(image.mode, "RGB")
        self.assert_colour(image, (80, 45), (128, 128, 128), tolerance=1)

    def test_exif_orientation_is_applied(self) -> None:
        """
        A photo stored on its side with an EXIF orientation is turned
        upright before anything else.
        """
        exif = Image.Exif()
        # 6: the stored picture must be turned clockwise to be upright.
        exif[0x0112] = 6
        path = self.save(quadrants((160, 90)), "photo.jpg", exif=exif, quality=95)

        image = decoded(convert_image(path, Geometry(90, 160)))

        self.assertEqual(image.size, (90, 160))
        self.assert_colour(image, (20, 20), BLUE, tolerance=40)
        self.assert_colour(image, (70, 20), RED, tolerance=40)
        self.assert_colour(image, (20, 140), WHITE, tolerance=40)
        self.assert_colour(image, (70, 140), GREEN, tolerance=40)

    def test_geometry_refuses_other_rotations(self) -> None:
        """
        Only quarter turns are accepted.
        """
        error = self.assertRaises(ValueError, Geometry, 160, 90, 45)
        self.assertEqual(str(error), "rotation is 45; expected 0, 90, 180 or 270")


class LargeSourceTests(SynchronousTestCase, ColourAssertions):
    """
    Large sources are decoded no larger than needed, and sources beyond the
    safety limit are refused.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_large_jpeg_decoded_at_reduced_size(self) -> None:
        """
        A 32-megapixel JPEG is decoded at 1/8 scale for a small panel, still
        large enough to cover it, and converts correctly.
        """
        path = os.path.join(self.directory, "large.jpg")
        quadrants((8000, 4000)).save(path, quality=90)

        image = decode_for(path, (160, 90))

        # Covering 160x90 needs 180x90; 1/8 scale (1000x500) is the
        # smallest step of the decoder that is at least that.
        self.assertEqual(image.size, (1000, 500))
        converted = decoded(convert_image(path, Geometry(160, 90)))
        self.assertEqual(converted.size, (160, 90))
        self.assert_corners(converted, RED, GREEN, BLUE, WHITE, tolerance=24)

    def test_reduction_stops_at_the_panel_size(self) -> None:
        """
        A JPEG only twice the size of the panel is decoded at half size, not
        smaller.
        """
        path = os.path.join(self.directory, "twice.jpg")
        quadrants((640, 360)).save(path, quality=90)

        self.assertEqual(decode_for(path, (320, 180)).size, (320, 180))
        self.assertEqual(decode_for(path, (321, 180)).size, (640, 360))

    def test_decompression_bomb_refused(self) -> None:
        """
        A file announcing ten billion pixels is refused with the reason,
        without being decoded.
        """
        path = os.path.join(self.directory, "bomb.png")
        with open(path, "wb") as f:
            f.write(_png_header_only(100_000, 100_000))

        error = self.assertRaises(
            UnreadableImage, convert_image, path, Geometry(160, 90)
        )

        self.assertEqual(
            str(error),
            f"image {path!r} cannot be read: it has more than"
            f" {2 * Image.MAX_IMAGE_PIXELS} pixels, too many to convert safely",
        )

    def test_pixel_limit(self) -> None:
        """
        A source with more pixels than the given limit is refused, naming
        its size.
        """
        path = os.path.join(self.directory, "limit.png")
        Image.new("RGB", (200, 100)).save(path)

        error = self.assertRaises(
            UnreadableImage, convert_image, path, Geometry(160, 90), 10_000
        )

        self.assertEqual(
            error.detail,
            "it is 200x100 pixels, more than the 10000 pixels the dispatcher"
            " converts safely",
        )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """
    One PNG chunk with its length and checksum.
    """
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_header_only(width: int, height: int) -> bytes:
    """
    The start of a PNG that claims C{width} x C{height} pixels.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b"")


class UnreadableTests(SynchronousTestCase):
    """
    Files that are not usable images are refused with a reason.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def test_not_an_image(self) -> None:
        """
        A text file with an image extension is refused as not an image.
        """
        path = os.path.join(self.directory, "notes.png")
        with open(path, "w") as f:
            f.write("meeting at ten\n")

        error = self.assertRaises(
            UnreadableImage, convert_image, path, Geometry(160, 90)
        )

        self.assertIs(type(error), UnreadableImage)
        self.assertEqual(
            str(error),
            f"image {path!r} cannot be read: it is not in an image format the"
            " dispatcher can read",
        )

    def test_truncated_image(self) -> None:
        """
        An image cut short is refused for good, not reported as a passing
        file-system problem.
        """
        path = os.path.join(self.directory, "cut.png")
        noise = Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))
        noise.save(path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)

        error = self.assertRaises(
            UnreadableImage, convert_image, path, Geometry(160, 90)
        )

        self.assertIs(type(error), UnreadableImage)
        self.assertIn("truncated", error.detail)

    def test_missing_file(self) -> None:
        """
        A file that is gone is refused for good.
        """
        path = os.path.join(self.directory, "gone.png")

        error = self.assertRaises(
            UnreadableImage, convert_image, path, Geometry(160, 90)
        )

        self.assertIs(type(error), UnreadableImage)
        self.assertEqual(error.detail, "No such file or directory")

    def test_file_system_trouble_may_pass(self) -> None:
        """
        An input/output error (a share that stopped answering) is reported
        as a file that cannot be read for now, while a missing or forbidden
        file is a permanent refusal.
        """
        passing = _file_error("photos/a.png", OSError(errno.EIO, "Input/output error"))
        missing = _file_error("photos/a.png", OSError(errno.ENOENT, "No such file"))
        forbidden = _file_error(
            "photos/a.png", OSError(errno.EACCES, "Permission denied")
        )

        self.assertIs(type(passing), ImageUnavailable)
        self.assertIs(type(missing), UnreadableImage)
        self.assertIs(type(forbidden), UnreadableImage)


def _key(name: str, size: int = 1) -> CacheKey:
    """
    A cache key for C{name}.
    """
    return CacheKey(name, size, 0, 160, 90, 0)


class ImageCacheTests(SynchronousTestCase):
    """
    The cache keeps the most recently used PNGs within its byte limit.
    """

    def test_least_recently_used_dropped(self) -> None:
        """
        Past the limit the least recently used entry goes first; reading an
        entry makes it recent.
        """
        cache = ImageCache(max_bytes=10)
        cache.put(_key("a"), b"aaaa")
        cache.put(_key("b"), b"bbbb")
        self.assertEqual(cache.get(_key("a")), b"aaaa")

        cache.put(_key("c"), b"cccc")

        self.assertIsNone(cache.get(_key("b")))
        self.assertEqual(cache.get(_key("a")), b"aaaa")
        self.assertEqual(cache.get(_key("c")), b"cccc")
        self.assertEqual((len(cache), cache.total_bytes), (2, 8))

    def test_too_large_not_kept(self) -> None:
        """
        A PNG larger than the whole limit is not kept and drops nothing.
        """
        cache = ImageCache(max_bytes=10)
        cache.put(_key("a"), b"aaaa")

        cache.put(_key("big"), b"x" * 11)

        self.assertIsNone(cache.get(_key("big")))
        self.assertEqual(cache.get(_key("a")), b"aaaa")

    def test_replacing_counts_once(self) -> None:
        """
        Storing a key again replaces its bytes in the total.
        """
        cache = ImageCache(max_bytes=10)
        cache.put(_key("a"), b"aaaa")
        cache.put(_key("a"), b"aaaaaa")

        self.assertEqual((len(cache), cache.total_bytes), (1, 6))

    def test_keys_differ_by_file_version_and_geometry(self) -> None:
        """
        The same path with another size, modification time or geometry is
        another entry.
        """
        cache = ImageCache()
        cache.put(CacheKey("a", 1, 5, 160, 90, 0), b"png")

        self.assertIsNone(cache.get(CacheKey("a", 2, 5, 160, 90, 0)))
        self.assertIsNone(cache.get(CacheKey("a", 1, 6, 160, 90, 0)))
        self.assertIsNone(cache.get(CacheKey("a", 1, 5, 160, 90, 90)))
        self.assertEqual(cache.get(CacheKey("a", 1, 5, 160, 90, 0)), b"png")


class ManualThreads:
    """
    Stands in for a thread pool: work is queued, and run when the test says.
    """

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = (
            []
        )

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()
        self.queued.append((function, args, result))
        return result

    def run_all(self) -> None:
        """
        Run the queued work, in order, delivering each result.
        """
        while self.queued:
            function, args, result = self.queued.pop(0)
            maybeDeferred(function, *args).chainDeferred(result)


class CountingConverter:
    """
    A converter that records its calls and returns a PNG naming the file.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.error: Exception | None = None

    def __call__(self, path: str, geometry: Geometry) -> bytes:
        self.calls.append(path)
        if self.error is not None:
            raise self.error
        return f"png of {os.path.basename(path)}".encode()


class ImageConverterTests(SynchronousTestCase):
    """
    L{ImageConverter} converts each file version once, shares a running
    conversion, and lets callers give up at once.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "a.png")
        with open(self.path, "wb") as f:
            f.write(b"stand-in")
        self.threads = ManualThreads()
        self.convert = CountingConverter()
        self.converter = ImageConverter(
            Geometry(160, 90), self.threads, convert=self.convert
        )

    def test_repeated_image_comes_from_the_cache(self) -> None:
        """
        Asking again for an image already converted does not convert it
        again.
        """
        first = self.converter.png_for(self.path)
        self.threads.run_all()
        second = self.converter.png_for(self.path)
        self.threads.run_all()

        self.assertEqual(self.successResultOf(first), b"png of a.png")
        self.assertEqual(self.successResultOf(second), b"png of a.png")
        self.assertEqual(self.convert.calls, [self.path])

    def test_changed_file_converted_again(self) -> None:
        """
        A file whose modification time changed is converted again.
        """
        self.converter.png_for(self.path)
        self.threads.run_all()
        status = os.stat(self.path)
        os.utime(self.path, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))

        self.converter.png_for(self.path)
        self.threads.run_all()

        self.assertEqual(self.convert.calls, [self.path, self.path])

    def test_other_geometry_converted_again(self) -> None:
        """
        The same file for a panel of another geometry, sharing the cache, is
        converted again.
        """
        self.converter.png_for(self.path)
        self.threads.run_all()
        rotated = ImageConverter(
            Geometry(160, 90, 90),
            self.threads,
            cache=self.converter.cache,
            convert=self.convert,
        )

        rotated.png_for(self.path)
        self.threads.run_all()

        self.assertEqual(len(self.convert.calls), 2)
        self.assertEqual(len(self.converter.cache), 2)

    def test_simultaneous_requests_share_one_conversion(self) -> None:
        """
        Two requests for a file whose conversion is under way get the one
        result.
        """
        first = self.converter.png_for(self.path)
        second = self.converter.png_for(self.path)
        self.assertEqual(len(self.threads.queued), 1)

        self.threads.run_all()

        self.assertEqual(self.successResultOf(first), b"png of a.png")
        self.assertEqual(self.successResultOf(second), b"png of a.png")
        self.assertEqual(self.convert.calls, [self.path])

    def test_cancelled_caller_answered_at_once(self) -> None:
        """
        A caller that cancels during a conversion gets L{CancelledError}
        at once; the conversion still completes for the other caller and
        for the cache.
        """
        given_up = self.converter.png_for(self.path)
        waiting = self.converter.png_for(self.path)

        given_up.cancel()

        self.failureResultOf(given_up, CancelledError)
        self.assertNoResult(waiting)
        self.threads.run_all()
        self.assertEqual(self.successResultOf(waiting), b"png of a.png")
        self.assertEqual(len(self.converter.cache), 1)

    def test_refusal_reaches_every_caller(self) -> None:
        """
        A refused image fails every caller waiting for it, and is not
        cached.
        """
        self.convert.error = UnreadableImage(self.path, "it is broken")
        first = self.converter.png_for(self.path)
        second = self.converter.png_for(self.path)

        self.threads.run_all()

        self.failureResultOf(first, UnreadableImage)
        self.failureResultOf(second, UnreadableImage)
        self.assertEqual(len(self.converter.cache), 0)

    def test_unexpected_error_without_callers_is_logged(self) -> None:
        """
        An unexpected error in a conversion nobody waits for any more is
        logged rather than lost.
        """
        self.convert.error = RuntimeError("converter bug")
        given_up = self.converter.png_for(self.path)
        given_up.cancel()
        self.failureResultOf(given_up, CancelledError)

        self.threads.run_all()

        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_missing_file_refused_before_converting(self) -> None:
        """
        A file that disappeared is refused without calling the converter.
        """
        os.remove(self.path)

        refused = self.converter.png_for(self.path)
        self.threads.run_all()

        failure = self.failureResultOf(refused, UnreadableImage)
        self.assertEqual(failure.value.detail, "No such file or directory")
        self.assertEqual(self.convert.calls, [])
