"""
Tests for L{vss_dispatcher.message.parse_job}: what a valid job looks like,
and that every invalid message is refused with a reason that names the field
and the value.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from vss_dispatcher.message import MAX_BODY_BYTES, InvalidMessage, Job, parse_job


def encode(document: object) -> bytes:
    """
    The body a producer would send for C{document}.
    """
    return json.dumps(document).encode("utf-8")


class ValidJobTests(SynchronousTestCase):
    """
    Messages that are turned into a L{Job}.
    """

    def test_all_fields(self) -> None:
        """
        The image path, duration and message id are taken as given.
        """
        job = parse_job(
            encode(
                {"image_path": "lobby/welcome.png", "duration": 30, "message_id": "w-1"}
            )
        )
        self.assertEqual(job, Job("lobby/welcome.png", 30.0, "w-1", None))
        self.assertIsInstance(job.duration, float)

    def test_defaults(self) -> None:
        """
        A message without duration or message id gets the default duration
        and no id; a null duration counts as none.
        """
        self.assertEqual(
            parse_job(encode({"image_path": "a.png"}), default_duration=7.5),
            Job("a.png", 7.5, None, None),
        )
        self.assertEqual(
            parse_job(encode({"image_path": "a.png", "duration": None})),
            Job("a.png", 5.0, None, None),
        )

    def test_unknown_fields_ignored(self) -> None:
        """
        Fields the dispatcher does not know are ignored.
        """
        job = parse_job(
            encode({"image_path": "a.png", "colour": "red", "extra": {"x": [1, 2]}})
        )
        self.assertEqual(job, Job("a.png", 5.0))

    def test_duration_bounds_accepted(self) -> None:
        """
        Durations of 0 and of exactly the maximum are accepted, fractions
        too.
        """
        for duration in (0, 0.25, 60):
            job = parse_job(
                encode({"image_path": "a.png", "duration": duration}), max_duration=60
            )
            self.assertEqual(job.duration, duration)

    def test_body_at_limit_accepted(self) -> None:
        """
        A body of exactly 64 KiB is read.
        """
        document = {"image_path": "a.png", "padding": ""}
        padding = MAX_BODY_BYTES - len(encode(document))
        body = encode({"image_path": "a.png", "padding": "x" * padding})
        self.assertEqual(len(body), MAX_BODY_BYTES)
        self.assertEqual(parse_job(body).image_path, "a.png")


class InvalidBodyTests(SynchronousTestCase):
    """
    Bodies that are not a JSON object.
    """

    def assertRefused(self, body: bytes, *expected: str) -> str:
        """
        Assert that C{body} is refused with a reason containing every text
        in C{expected}, and return the reason.
        """
        with self.assertRaises(InvalidMessage) as caught:
            parse_job(body)
        reason = caught.exception.reason
        for text in expected:
            self.assertIn(text, reason)
        return reason

    def test_not_utf8(self) -> None:
        """
        A body that is not UTF-8 is refused, naming the position of the bad
        byte.
        """
        self.assertRefused(b'{"image_path": "caf\xe9.png"}', "not UTF-8", "position 19")

    def test_not_json(self) -> None:
        """
        A body that is not JSON is refused, saying where it stops being
        JSON.
        """
        self.assertRefused(b'{"image_path": ', "not JSON", "line 1 column 16")
        self.assertRefused(b"", "not JSON")

    def test_nan_duration(self) -> None:
        """
        NaN as duration is refused, naming the field and the value.
        """
        self.assertRefused(
            b'{"image_path": "a.png", "duration": NaN}',
            "field 'duration' is NaN",
            "finite",
        )

    def test_infinite_durations(self) -> None:
        """
        Infinity and -Infinity as duration are refused, naming the field and
        the value, and so is a number too large to be finite.
        """
        self.assertRefused(
            b'{"image_path": "a.png", "duration": Infinity}',
            "field 'duration' is Infinity",
        )
        self.assertRefused(
            b'{"image_path": "a.png", "duration": -Infinity}',
            "field 'duration' is -Infinity",
        )
        self.assertRefused(
            b'{"image_path": "a.png", "duration": 1e999}',
            "field 'duration' is Infinity",
        )

    def test_nan_elsewhere(self) -> None:
        """
        NaN anywhere else is refused too, since it is not JSON.
        """
        self.assertRefused(
            b'{"image_path": "a.png", "extra": NaN}', "contains NaN", "not valid JSON"
        )

    def test_not_an_object(self) -> None:
        """
        A JSON array, string, number, boolean or null is refused, naming
        what it is in JSON's words and showing it.
        """
        cases = [
            (b'["a.png"]', 'JSON array (["a.png"])'),
            (b'"a.png"', 'JSON string ("a.png")'),
            (b"42", "JSON number (42)"),
            (b"4.5", "JSON number (4.5)"),
            (b"true", "JSON boolean (true)"),
            (b"null", "JSON null (null)"),
        ]
        for body, expected in cases:
            reason = self.assertRefused(body, expected, "expected a JSON object")
            self.assertNotIn("list", reason)

    def test_body_too_large(self) -> None:
        """
        A body over 64 KiB is refused with its size and the limit.
        """
        body = encode({"image_path": "a.png", "padding": "x" * MAX_BODY_BYTES})
        self.assertRefused(body, f"{len(body)} bytes", f"at most {MAX_BODY_BYTES}")

    def test_huge_integer_duration(self) -> None:
        """
        A duration with hundreds of digits is refused as out of range rather
        than crashing the check.
        """
        self.assertRefused(
            b'{"image_path": "a.png", "duration": 1' + b"0" * 400 + b"}",
            "field 'duration' is 1000",
            "between 0 and 86400",
        )

    def test_integer_too_long_to_read(self) -> None:
        """
        A number with more digits than Python reads is refused with a reason.
        """
        self.assertRefused(
            b'{"image_path": "a.png", "duration": 1' + b"0" * 5000 + b"}",
            "too many digits",
        )

    def test_deeply_nested(self) -> None:
        """
        A body nested too deeply for the parser is refused with a reason.
        """
        self.assertRefused(b"[" * 30000 + b"]" * 30000, "nested too deeply")


class InvalidFieldTests(SynchronousTestCase):
    """
    JSON objects whose fields are unusable.
    """

    def assertRefused(self, document: object, *expected: str) -> None:
        """
        Assert that C{document} is refused with a reason containing every
        text in C{expected}.
        """
        with self.assertRaises(InvalidMessage) as caught:
            parse_job(encode(document))
        for text in expected:
            self.assertIn(text, caught.exception.reason)

    def test_image_path_missing(self) -> None:
        """
        A message without image path is refused, naming the field.
        """
        self.assertRefused({"duration": 5}, "field 'image_path' is missing")

    def test_image_path_empty_or_blank(self) -> None:
        """
        An empty or whitespace-only image path is refused, showing it.
        """
        self.assertRefused(
            {"image_path": ""}, "field 'image_path' is \"\"", "non-empty"
        )
        self.assertRefused(
            {"image_path": "  \t"}, "field 'image_path' is \"  \\t\"", "non-empty"
        )

    def test_image_path_not_a_string(self) -> None:
        """
        An image path that is not a string is refused, showing the value as
        JSON writes it.
        """
        self.assertRefused({"image_path": 12}, "field 'image_path' is 12", "string")
        self.assertRefused({"image_path": None}, "field 'image_path' is null")
        self.assertRefused(
            {"image_path": ["a.png"]}, "field 'image_path' is [\"a.png\"]"
        )

    def test_image_path_with_nul(self) -> None:
        """
        An image path containing a NUL character is refused.
        """
        self.assertRefused({"image_path": "a\x00.png"}, "field 'image_path'", "NUL")

    def test_image_path_lone_surrogate(self) -> None:
        """
        An image path with a lone surrogate, which JSON escapes can spell, is
        refused with the value shown escaped.
        """
        with self.assertRaises(InvalidMessage) as caught:
            parse_job(b'{"image_path": "\\ud800.png"}')
        reason = caught.exception.reason
        self.assertIn("field 'image_path'", reason)
        self.assertIn("\\ud800.png", reason)
        reason.encode("utf-8")

    def test_message_id_not_a_string(self) -> None:
        """
        A message id that is not a string is refused, showing the value.
        """
        self.assertRefused(
            {"image_path": "a.png", "message_id": 17},
            "field 'message_id' is 17",
            "expected a string",
        )

    def test_duration_boolean(self) -> None:
        """
        C{true} as duration is refused, although Python counts it as 1.
        """
        self.assertRefused(
            {"image_path": "a.png", "duration": True},
            "field 'duration' is true",
            "number of seconds",
        )

    def test_duration_string(self) -> None:
        """
        A duration written as a string is refused, showing the string.
        """
        self.assertRefused(
            {"image_path": "a.png", "duration": "10"},
            "field 'duration' is \"10\"",
            "number of seconds",
        )

    def test_duration_negative(self) -> None:
        """
        A negative duration is refused with the accepted range.
        """
        self.assertRefused(
            {"image_path": "a.png", "duration": -1},
            "field 'duration' is -1",
            "between 0 and 86400",
        )

    def test_duration_over_maximum(self) -> None:
        """
        A duration over MAX_DURATION is refused with the accepted range.
        """
        with self.assertRaises(InvalidMessage) as caught:
            parse_job(encode({"image_path": "a.png", "duration": 61}), max_duration=60)
        self.assertIn("field 'duration' is 61", caught.exception.reason)
        self.assertIn("between 0 and 60 seconds", caught.exception.reason)

    def test_long_value_shortened(self) -> None:
        """
        A long bad value is shortened in the reason.
        """
        with self.assertRaises(InvalidMessage) as caught:
            parse_job(encode({"image_path": "a.png", "duration": "9" * 1000}))
        self.assertIn("field 'duration' is \"999", caught.exception.reason)
        self.assertIn("...", caught.exception.reason)
        self.assertLess(len(caught.exception.reason), 200)


class ImageRootTests(SynchronousTestCase):
    """
    The file checks made when IMAGE_ROOT is set.
    """

    def setUp(self) -> None:
        base = os.path.realpath(self.mktemp())
        self.root = os.path.join(base, "images")
        self.outside = os.path.join(base, "outside")
        os.makedirs(os.path.join(self.root, "lobby"))
        os.makedirs(self.outside)
        for path in (
            os.path.join(self.root, "lobby", "welcome.png"),
            os.path.join(self.root, "photo.JPG"),
            os.path.join(self.root, "notes.txt"),
            os.path.join(self.outside, "secret.png"),
        ):
            with open(path, "wb") as f:
                f.write(b"image")

    def parse(self, image_path: str) -> Job:
        """
        Parse a job for C{image_path} with IMAGE_ROOT set.
        """
        return parse_job(encode({"image_path": image_path}), image_root=self.root)

    def assertRefused(self, image_path: str, *expected: str) -> None:
        """
        Assert that C{image_path} is refused, with a reason naming the field,
        the value (long values are shortened) and every text in C{expected}.
        """
        with self.assertRaises(InvalidMessage) as caught:
            self.parse(image_path)
        reason = caught.exception.reason
        shown = json.dumps(image_path)[:60]
        self.assertIn(f"field 'image_path' is {shown}", reason)
        for text in expected:
            self.assertIn(text, reason)

    def test_relative_path_resolved_inside(self) -> None:
        """
        A relative path is taken inside IMAGE_ROOT; the job keeps the path as
        written and carries the real path of the file.
        """
        job = self.parse("lobby/welcome.png")
        self.assertEqual(job.image_path, "lobby/welcome.png")
        self.assertEqual(
            job.resolved_path, os.path.join(self.root, "lobby", "welcome.png")
        )

    def test_absolute_path_inside_accepted(self) -> None:
        """
        An absolute path inside IMAGE_ROOT is accepted.
        """
        path = os.path.join(self.root, "lobby", "welcome.png")
        self.assertEqual(self.parse(path).resolved_path, path)

    def test_relative_root_accepted(self) -> None:
        """
        An IMAGE_ROOT given as a relative path works like its real path.
        """
        root = os.path.relpath(self.root)
        job = parse_job(encode({"image_path": "lobby/welcome.png"}), image_root=root)
        self.assertEqual(
            job.resolved_path, os.path.join(self.root, "lobby", "welcome.png")
        )

    def test_parent_escape_refused(self) -> None:
        """
        A path that climbs out of IMAGE_ROOT with C{..} is refused.
        """
        self.assertRefused("../outside/secret.png", "outside the image directory")
        self.assertRefused("lobby/../../outside/secret.png", "outside")

    def test_absolute_path_outside_refused(self) -> None:
        """
        An absolute path outside IMAGE_ROOT is refused.
        """
        self.assertRefused(os.path.join(self.outside, "secret.png"), "outside")

    def test_symlink_to_outside_refused(self) -> None:
        """
        A symbolic link inside IMAGE_ROOT that points outside it is refused.
        """
        os.symlink(
            os.path.join(self.outside, "secret.png"),
            os.path.join(self.root, "link.png"),
        )
        os.symlink(self.outside, os.path.join(self.root, "elsewhere"))
        self.assertRefused("link.png", "outside")
        self.assertRefused("elsewhere/secret.png", "outside")

    def test_symlink_inside_accepted(self) -> None:
        """
        A symbolic link inside IMAGE_ROOT to a file inside it is accepted and
        resolved to that file.
        """
        target = os.path.join(self.root, "lobby", "welcome.png")
        os.symlink(target, os.path.join(self.root, "today.png"))
        self.assertEqual(self.parse("today.png").resolved_path, target)

    def test_missing_file_refused(self) -> None:
        """
        A path to no file is refused.
        """
        self.assertRefused("lobby/missing.png", "not an existing file")

    def test_directory_refused(self) -> None:
        """
        A path to a directory is refused, even one named like an image.
        """
        os.makedirs(os.path.join(self.root, "folder.png"))
        self.assertRefused("folder.png", "not an existing file")

    def test_wrong_extension_refused(self) -> None:
        """
        A file that does not end in an image extension is refused, listing
        the accepted extensions.
        """
        self.assertRefused("notes.txt", "image extension", ".png")

    def test_extension_case_insensitive(self) -> None:
        """
        Image extensions are recognised whatever their case.
        """
        self.assertEqual(
            self.parse("photo.JPG").resolved_path, os.path.join(self.root, "photo.JPG")
        )

    def test_no_checks_without_root(self) -> None:
        """
        Without IMAGE_ROOT, no file is looked at.
        """
        job = parse_job(encode({"image_path": "../nowhere/missing.txt"}))
        self.assertEqual(job, Job("../nowhere/missing.txt", 5.0))
