"""
Display jobs as producers write them, and the checks that turn a message body
into a L{Job} or into a plain-words reason for setting it aside.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass

__all__ = ["IMAGE_EXTENSIONS", "MAX_BODY_BYTES", "InvalidMessage", "Job", "parse_job"]

MAX_BODY_BYTES = 64 * 1024

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})


class InvalidMessage(Exception):
    """
    A message that can never be displayed.  Its text is the reason, written
    for the operator who finds the message on the dead-letter queue.
    """

    @property
    def reason(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Job:
    """
    One image to show.

    @ivar image_path: The path as the producer wrote it; this is what VSS is
        sent in the JSON protocol.
    @ivar duration: Seconds to keep the image on screen.
    @ivar message_id: The producer's id for the job, if it gave one.
    @ivar resolved_path: The real path of the file inside IMAGE_ROOT, or
        C{None} when IMAGE_ROOT is not set.
    """

    image_path: str
    duration: float
    message_id: str | None = None
    resolved_path: str | None = None


# How a JSON document's top-level value is named in a reason.
_JSON_TYPES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _shorten(value: object, limit: int = 80) -> str:
    # Values are shown as the producer wrote them (true, null, "10"), not as
    # Python prints them; text that is not valid Unicode is shown escaped, so
    # the reason itself can always be encoded.
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _is_unicode(text: str) -> bool:
    # JSON escapes can spell lone surrogates, which no file name, log line or
    # message header can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_duration(
    document: dict[str, object], default: float, maximum: float
) -> float:
    if "duration" not in document or document["duration"] is None:
        return default
    duration = document["duration"]
    # bool is an int subclass in Python, but true is not a number of seconds.
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise InvalidMessage(
            f"field 'duration' is {_shorten(duration)}; expected a number of seconds"
        )
    # An integer is always finite, and too large for math.isfinite when it
    # has hundreds of digits.
    if isinstance(duration, float) and not math.isfinite(duration):
        raise InvalidMessage(
            f"field 'duration' is {_shorten(duration)}; expected a finite number"
            " of seconds"
        )
    if not 0 <= duration <= maximum:
        raise InvalidMessage(
            f"field 'duration' is {_shorten(duration)}; expected between 0 and"
            f" {maximum:g} seconds"
        )
    return float(duration)


@functools.lru_cache(maxsize=8)
def _real_root(image_root: str) -> str:
    """
    The real path of the image directory.  The configuration passes one
    already; resolving it here keeps the containment check right for any
    caller, once per directory rather than once per message (on a network
    share every path component is a round trip).
    """
    return os.path.realpath(image_root)


def _check_image(image_path: str, image_root: str) -> str:
    """
    Resolve C{image_path} inside C{image_root} and check that it is an image
    file there.

    @return: The real path of the file.
    @raise InvalidMessage: When it is outside, missing, or not an image.
    """
    image_root = _real_root(image_root)
    candidate = os.path.join(image_root, image_path)
    resolved = os.path.realpath(candidate)
    if os.path.commonpath([resolved, image_root]) != image_root:
        raise InvalidMessage(
            f"field 'image_path' is {_shorten(image_path)}, which is outside"
            f" the image directory {image_root!r}"
        )
    extension = os.path.splitext(resolved)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        raise InvalidMessage(
            f"field 'image_path' is {_shorten(image_path)}, which does not end"
            f" in an image extension ({', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if not os.path.isfile(resolved):
        raise InvalidMessage(
            f"field 'image_path' is {_shorten(image_path)}, which is not an"
            f" existing file in {image_root!r}"
        )
    return resolved


def parse_job(
    body: bytes,
    default_duration: float = 5.0,
    max_duration: float = 86400.0,
    image_root: str = "",
) -> Job:
    """
    Turn a message body into a L{Job}.

    @param body: The raw message body.
    @param default_duration: Seconds used when the message gives none.
    @param max_duration: Longest duration accepted.
    @param image_root: When not empty, the real path of the directory that
        every image must be inside.
    @raise InvalidMessage: With the reason when the body is not a usable job.
    """
    if len(body) > MAX_BODY_BYTES:
        raise InvalidMessage(
            f"message body is {len(body)} bytes; expected at most {MAX_BODY_BYTES}"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidMessage(
            f"message body is not UTF-8 text (bad byte at position {error.start})"
        ) from None

    # NaN, Infinity and -Infinity are not JSON.  They are read as numbers
    # first, so that the reason can name the field when it is the duration.
    constants: list[str] = []

    def note_constant(name: str) -> float:
        constants.append(name)
        return float(name)

    try:
        if "NaN" in text or "Infinity" in text:
            document = json.loads(text, parse_constant=note_constant)
        else:
            # Without those words there is no constant to note, and the
            # standard decoder, built once, reads the body.
            document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidMessage(
            f"message body is not JSON ({error.msg} at line {error.lineno}"
            f" column {error.colno})"
        ) from None
    except RecursionError:
        raise InvalidMessage("message body is JSON nested too deeply") from None
    except ValueError:
        # Python refuses to read integers of thousands of digits.
        raise InvalidMessage(
            "message body contains a number with too many digits to read"
        ) from None
    if not isinstance(document, dict):
        raise InvalidMessage(
            f"message body is a JSON {_JSON_TYPES.get(type(document), 'value')}"
            f" ({_shorten(document)}); expected a JSON object"
        )
    given = document.get("duration")
    if constants and not (isinstance(given, float) and not math.isfinite(given)):
        raise InvalidMessage(
            f"message body contains {constants[0]}, which is not valid JSON"
        )

    image_path = document.get("image_path")
    if "image_path" not in document:
        raise InvalidMessage("field 'image_path' is missing; expected an image path")
    if not isinstance(image_path, str) or not image_path.strip():
        raise InvalidMessage(
            f"field 'image_path' is {_shorten(image_path)}; expected a non-empty"
            " string"
        )
    if "\x00" in image_path:
        raise InvalidMessage(
            f"field 'image_path' is {_shorten(image_path)}, which contains a NUL"
            " character"
        )
    if not _is_unicode(image_path):
        raise InvalidMessage(
            f"field 'image_path' is {_shorten(image_path)}, which is not valid"
            " Unicode text"
        )

    message_id = document.get("message_id")
    if message_id is not None and not isinstance(message_id, str):
        raise InvalidMessage(
            f"field 'message_id' is {_shorten(message_id)}; expected a string"
        )
    if message_id is not None and not _is_unicode(message_id):
        raise InvalidMessage(
            f"field 'message_id' is {_shorten(message_id)}, which is not valid"
            " Unicode text"
        )

    duration = _check_duration(document, default_duration, max_duration)
    resolved = _check_image(image_path, image_root) if image_root else None
    return Job(image_path, duration, message_id, resolved)
