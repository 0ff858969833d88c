"""Offline image generators for the demo zoo: a pretraining set and two families of four tasks.

Why rendered data: a fresh machine has no datasets, so every image is drawn locally. A family is one
question asked in three visual domains, like MNIST / SVHN / USPS for real digit models: the tasks of a
family need the same features, so fine-tuning on them moves the encoder in related directions (high
block cosine), while different questions move it apart: the structure FlexMerge exploits.

- digits (which of 0-9), rendered in DejaVu's sans, condensed, serif and monospaced fonts:
  `digit-sans`, `digit-condensed`, `digit-serif`, `digit-mono`;
- arrows (which of 16 compass directions), drawn as filled silhouettes: plain, bold, blurred, or plain
  on a striped background: `arrow-plain`, `arrow-bold`, `arrow-blurred`, `arrow-textured`.

Images are drawn at 64 px, box-downsampled to 16 px, given random colours and pixel noise. Pretraining
uses other glyphs (lowercase Latin, Greek, Cyrillic letters and symbols, no digits) in every font, so no
task is solved before fine-tuning. Every generator takes a numpy Generator, so callers seed it from
(seed, stream, index), never from Python's hash().
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

CANVAS = 64
IMAGE_SIZE = 16
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_SKIPPED_FONTS = ("MathTeX", "ExtraLight")

PRETRAIN_GLYPHS = (
    "abcdefghijklmnopqrstuvwxyz"
    "αβγδεζηθικλμνξπρστυφχψω"
    "бвгджзийлмнпфцчшщъыьэюя"
    "+=%&@#?!$§¶"
)

Font = Callable[[int], ImageFont.ImageFont]
Fonts = dict[str, Font]  # font file stem -> factory (size -> font)
Scene = Callable[[np.random.Generator, Fonts], tuple[np.ndarray, int]]


def load_fonts(font_dir: Path = FONT_DIR) -> Fonts:
    """Font factories for the usable DejaVu variants, by file stem; PIL's default font with a warning."""
    paths = sorted(p for p in Path(font_dir).glob("*.ttf") if not any(s in p.name for s in _SKIPPED_FONTS))
    if not paths:
        warnings.warn(f"no DejaVu fonts in {font_dir}: rendering glyphs with PIL's default font "
                      "(install fonts-dejavu-core and fonts-dejavu-extra for the documented demo zoo)", stacklevel=2)
        return {"default": lambda size: ImageFont.load_default(size=size)}
    return {p.stem: (lambda size, p=str(p): ImageFont.truetype(p, size)) for p in paths}


FONT_GROUPS = {"sans": ("DejaVuSans",), "condensed": ("DejaVuSansCondensed", "DejaVuSerifCondensed"),
               "serif": ("DejaVuSerif",), "mono": ("DejaVuSansMono",)}


def font_group(fonts: Fonts, group: str) -> list[Font]:
    """The fonts of one group (`DejaVuSerif-Bold` is serif); every font when none match (fallback font)."""
    chosen = [f for stem, f in fonts.items() if stem.split("-")[0] in FONT_GROUPS[group]]
    return chosen or list(fonts.values())


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A random background and a foreground that differs from it clearly in brightness (rejection
    sampling, eight candidate pairs per draw: one numpy call instead of one per try)."""
    while True:
        pairs = rng.integers(0, 256, size=(8, 2, 3))
        ok = np.flatnonzero(np.abs(pairs[:, 0].sum(1) - pairs[:, 1].sum(1)) > 270)
        if ok.size:
            bg, fg = pairs[ok[0]]
            return tuple(int(v) for v in bg), tuple(int(v) for v in fg)


def _finish(img: Image.Image, rng: np.random.Generator, noise: float = 0.04) -> np.ndarray:
    """64 px RGB image -> 16 px float32 [3, 16, 16] in [0, 1] with Gaussian pixel noise."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    f = CANVAS // IMAGE_SIZE
    a = a.reshape(IMAGE_SIZE, f, IMAGE_SIZE, f, 3).mean(axis=(1, 3))
    a = a + rng.normal(0.0, noise, size=a.shape).astype(np.float32)
    return np.clip(a, 0.0, 1.0).transpose(2, 0, 1)


def _paste_mask(img: Image.Image, mask: Image.Image, colour, rng: np.random.Generator, rotate: float,
                jitter: int = 6) -> None:
    """Rotate an L mask, centre it and paste it in `colour`, shifted by up to `jitter` px (at 64 px):
    glyphs span ~3/4 of the 16 px image, so a small shift keeps them whole and readable."""
    mask = mask.rotate(float(rng.uniform(-rotate, rotate)), resample=Image.BILINEAR)
    box = mask.getbbox()
    if box is None:
        return
    mask = mask.crop(box)
    w, h = mask.size
    x = (CANVAS - w) // 2 + int(rng.integers(-jitter, jitter + 1))
    y = (CANVAS - h) // 2 + int(rng.integers(-jitter, jitter + 1))
    img.paste(Image.new("RGB", mask.size, colour), (x, y), mask)


def render_glyph(char: str, font: Font, rng: np.random.Generator) -> np.ndarray:
    """One character in a random font size, rotation, position and colours."""
    bg, fg = _colours(rng)
    img = Image.new("RGB", (CANVAS, CANVAS), bg)
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    size = int(rng.integers(46, 60))
    ImageDraw.Draw(mask).text((CANVAS / 2, CANVAS / 2), char, fill=255, font=font(size), anchor="mm")
    _paste_mask(img, mask, fg, rng, rotate=15)
    return _finish(img, rng)


def _canvas(rng: np.random.Generator, striped: bool) -> tuple[Image.Image, tuple]:
    """A plain background, or one striped with a faint random grating (a harder domain), and the
    foreground colour to draw on it."""
    bg, fg = _colours(rng)
    if not striped:
        return Image.new("RGB", (CANVAS, CANVAS), bg), fg
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS]
    period, angle = rng.uniform(6, 12), rng.uniform(0, np.pi)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period) > 0
    stripe = np.array([0.7 * b + 0.3 * f for b, f in zip(bg, fg)], np.uint8)
    rgb = np.where(wave[..., None], stripe, np.array(bg, np.uint8)).astype(np.uint8)
    return Image.fromarray(rgb, "RGB"), fg


def _turn(points, cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    """Points given around the origin, rotated by `angle` (counter-clockwise on screen) and moved to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c + y * s, cy - x * s + y * c) for x, y in points]


DIRECTIONS = ("E", "ENE", "NE", "NNE", "N", "NNW", "NW", "WNW", "W", "WSW", "SW", "SSW", "S", "SSE", "SE", "ESE")


def _arrow_body(r: float, shaft: float, head: float) -> list[tuple[float, float]]:
    """An arrow along +x around the origin: shaft half-width and head half-width as fractions of r."""
    return [(-r, -shaft * r), (0.1 * r, -shaft * r), (0.1 * r, -head * r), (r, 0), (0.1 * r, head * r),
            (0.1 * r, shaft * r), (-r, shaft * r)]


def _arrow_scene(style: str) -> Scene:
    """Filled arrows in four domains: `plain`, `bold` (thick shaft, wide head), `blurred` (plain, out of
    focus) and `textured` (plain, on a striped background)."""
    def scene(rng, fonts):
        k = int(rng.integers(len(DIRECTIONS)))
        img, fg = _canvas(rng, striped=style == "textured")
        r, cx, cy = rng.uniform(20, 27), 32 + rng.uniform(-5, 5), 32 + rng.uniform(-5, 5)
        angle = 2 * math.pi * k / len(DIRECTIONS) + rng.uniform(-0.08, 0.08)  # 22.5 degree steps, +-4.6 jitter
        proportions = (0.32, 0.75) if style == "bold" else (0.22, 0.6)
        ImageDraw.Draw(img).polygon(_turn(_arrow_body(r, *proportions), cx, cy, angle), fill=fg)
        if style == "blurred":
            img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(2.0, 3.5))))
        return _finish(img, rng), k
    return scene


def _digit_scene(group: str) -> Scene:
    def scene(rng, fonts):
        digit = int(rng.integers(10))
        choices = font_group(fonts, group)
        return render_glyph(str(digit), choices[int(rng.integers(len(choices)))], rng), digit
    return scene


@dataclass(frozen=True)
class TaskSpec:
    """A demo task: its family (the question), class names, and the scene generator (its domain)."""

    name: str
    family: str
    classes: tuple[str, ...]
    scene: Scene


ARROW_STYLES = ("plain", "bold", "blurred", "textured")
TASKS: tuple[TaskSpec, ...] = (
    *(TaskSpec(f"digit-{g}", "digits", tuple("0123456789"), _digit_scene(g)) for g in FONT_GROUPS),
    *(TaskSpec(f"arrow-{s}", "arrows", DIRECTIONS, _arrow_scene(s)) for s in ARROW_STYLES),
)
FAMILY_NAMES = tuple(dict.fromkeys(t.family for t in TASKS))
TASKS_BY_NAME = {t.name: t for t in TASKS}


def task_index(name: str) -> int:
    """The task's place in TASKS: seeds follow the task, not its place in a chosen subset."""
    return list(TASKS_BY_NAME).index(name)


def sample_task(task: TaskSpec, n: int, rng: np.random.Generator, fonts: Fonts):
    """n images float32 [n, 3, 16, 16] in [0, 1] and labels int64 [n] of one task."""
    pairs = [task.scene(rng, fonts) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int64)


def sample_pretraining(n: int, rng: np.random.Generator, fonts: Fonts):
    """n glyph images and their class ids over PRETRAIN_GLYPHS (every font, sizes, angles, colours)."""
    labels = rng.integers(len(PRETRAIN_GLYPHS), size=n)
    every = list(fonts.values())
    images = [render_glyph(PRETRAIN_GLYPHS[k], every[int(rng.integers(len(every)))], rng) for k in labels]
    return np.stack(images), labels.astype(np.int64)


def normalise(images: np.ndarray) -> np.ndarray:
    """[0, 1] pixels -> the model's input scale (zero-centred, unit-ish spread)."""
    return ((images - 0.5) / 0.25).astype(np.float32)
