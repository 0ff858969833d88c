"""Reading files users bring: regular files only, UTF-8 text, JSON of bounded depth, images of bounded size.

Why: what users point the tools at is not always what its name says. A FIFO named x.png blocked
`zoo import` forever on open; a 100k-deep JSON raised RecursionError; a Latin-1 class list raised
UnicodeDecodeError; a PNG decompression or text-chunk bomb raised Pillow's own errors (or filled
memory). Each reader here turns such a file into one line naming it, and every module that reads a
user's file goes through them.
"""
from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any, Callable

from flexmerge_core.errors import FlexMergeError, ZooError

ErrorType = type[FlexMergeError]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def check_regular_file(path, what: str, error: ErrorType = ZooError) -> Path:
    """`path` when it is a regular file (or a link to one); a FIFO, device or folder is refused
    before it is opened, since opening a FIFO blocks until a writer appears."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise error(f"{path}: {what} not found ({exc.strerror})") from exc
    if not stat.S_ISREG(mode):
        raise error(f"{path}: {what} is not a regular file")
    return path


def read_text(path, what: str, error: ErrorType = ZooError) -> str:
    """The UTF-8 text of a regular file."""
    path = check_regular_file(path, what, error)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from exc


def parse_json(text: str, where: str, error: ErrorType = ZooError) -> Any:
    """A JSON document; too deep a nesting (Python's parser recurses) is invalid JSON like any other."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{where}: not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise error(f"{where}: not valid JSON: {_one_line(exc)}") from exc


def read_json(path, what: str, error: ErrorType = ZooError) -> Any:
    return parse_json(read_text(path, what, error), str(path), error)


def decode_image(path, convert: Callable, error: ErrorType = ZooError):
    """convert(PIL image) of a regular image file; any decoder failure, a decompression bomb or a
    text-chunk bomb included, is one line naming the file. Pillow only warns between 1x and 2x its
    MAX_IMAGE_PIXELS (89.5M pixels); held-out images are resized to the model's input (224 px for
    CLIP), so those are refused too rather than decoded into ~270 MB each."""
    from PIL import Image

    path = check_regular_file(path, "image", error)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return convert(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise error(f"{path}: cannot read image: decompression bomb ({_one_line(exc)})") from exc
    except Exception as exc:   # Pillow raises OSError, ValueError, SyntaxError, struct.error, ... on bad files
        raise error(f"{path}: cannot read image: {type(exc).__name__}: {_one_line(exc)}") from exc
