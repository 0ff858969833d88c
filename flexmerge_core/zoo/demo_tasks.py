"""Offline image generators for the demo zoo: a pretraining set and three families of tasks.

Why rendered data: a fresh machine has no datasets, so every image is drawn locally. A family is one
kind of scene with a latent (a digit, a dot count, a grating's orientation and period); its tasks see the
SAME images and ask different questions of the same latent (e.g. which digit / is it odd / is it >= 5).
Fine-tuning on one family therefore moves the encoder along related directions (high block cosine),
while families with different inputs and features move it apart: the structure FlexMerge exploits.

- glyph: a digit in one of the DejaVu fonts -> `digit`, `digit-parity`, `digit-large`;
- counting: 1-5 dots -> `count`, `count-parity`, `count-many` (>= 3);
- texture: a grating -> `orientation` (4), `orientation-axis` (axis-aligned or diagonal), `frequency` (4).

Images are drawn at 64 px, box-downsampled to 16 px, given pixel noise and normalised. Glyphs are drawn
large and near the centre so they stay legible at 16 px. Every generator takes a numpy Generator, so
callers seed it from (seed, family index, split), never from Python's hash().
"""
from __future__ import annotations

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


def load_fonts(font_dir: Path = FONT_DIR) -> list[Font]:
    """Font factories (size -> font) for the usable DejaVu variants, or PIL's default font with a warning."""
    paths = sorted(p for p in Path(font_dir).glob("*.ttf") if not any(s in p.name for s in _SKIPPED_FONTS))
    if not paths:
        warnings.warn(f"no DejaVu fonts in {font_dir}: rendering glyphs with PIL's default font "
                      "(install fonts-dejavu-core for the documented demo zoo)", stacklevel=2)
        return [lambda size: ImageFont.load_default(size=size)]
    return [lambda size, p=str(p): ImageFont.truetype(p, size) for p in paths]


def _colours(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A random background and a foreground that differs from it clearly in brightness."""
    while True:
        bg, fg = rng.integers(0, 256, size=(2, 3))
        if abs(bg.mean() - fg.mean()) > 90:
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


SHAPES = ("circle", "square")


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    (draw.ellipse if kind == "circle" else draw.rectangle)(box, fill=fill)


def render_shapes(items: list[tuple[str, float, float, float]], rng: np.random.Generator) -> np.ndarray:
    """Flat shapes (kind, centre x, centre y, radius) in one colour on a plain background."""
    bg, fg = _colours(rng)
    img = Image.new("RGB", (CANVAS, CANVAS), bg)
    draw = ImageDraw.Draw(img)
    for kind, cx, cy, r in items:
        _draw_shape(draw, kind, cx, cy, r, fg)
    return _finish(img, rng)


def _scatter(rng: np.random.Generator, count: int, radius: float) -> list[tuple[float, float]]:
    """`count` centres in distinct cells of a 3x3 grid, jittered so that dots of `radius` (< 8 px)
    stay inside their cell: they never touch, whatever the draw (no rejection loop)."""
    cell = CANVAS / 3
    slack = max(0.0, cell / 2 - radius - 1.5)
    cells = rng.choice(9, size=count, replace=False)
    jitter = rng.uniform(-slack, slack, size=(count, 2))
    return [(float((c % 3 + 0.5) * cell + dx), float((c // 3 + 0.5) * cell + dy))
            for c, (dx, dy) in zip(cells, jitter)]


def render_grating(period: float, angle: float, blur: float, rng: np.random.Generator) -> np.ndarray:
    """A square-wave grating (period px at 64 px, angle radians) in random colours, Gaussian-blurred."""
    bg, fg = _colours(rng)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase) > 0
    rgb = np.where(wave[..., None], np.array(fg, np.uint8), np.array(bg, np.uint8))
    img = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return _finish(img, rng)


def _glyph_scene(rng, fonts):
    """A font digit; the latent is the digit."""
    digit = int(rng.integers(10))
    return render_glyph(str(digit), fonts[int(rng.integers(len(fonts)))], rng), digit


def _dots_scene(rng, fonts):
    """1-5 separate dots (circles or squares); the latent is the count."""
    count = int(rng.integers(1, 6))
    r = float(rng.uniform(6.0, 8.0))  # 1.5-2 px at 16 px: each dot stays a visible blob
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    return render_shapes([(kind, x, y, r) for x, y in _scatter(rng, count, r)], rng), count


ORIENTATIONS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
PERIOD_BINS = ((10.0, 13.0), (16.0, 20.0), (25.0, 31.0), (40.0, 50.0))


def _grating_scene(rng, fonts):
    """A grating; the latent is (orientation class, period class)."""
    angle_class, period_class = (int(v) for v in rng.integers(4, size=2))
    angle = ORIENTATIONS[angle_class] + rng.uniform(-0.1, 0.1)
    period = float(rng.uniform(*PERIOD_BINS[period_class]))
    return render_grating(period, angle, float(rng.uniform(0, 1)), rng), (angle_class, period_class)


Scene = Callable[[np.random.Generator, list[Font]], tuple[np.ndarray, object]]
FAMILIES: dict[str, Scene] = {"glyph": _glyph_scene, "counting": _dots_scene, "texture": _grating_scene}


@dataclass(frozen=True)
class TaskSpec:
    """A demo task: its family (whose scenes it sees), class names, and its label of a scene's latent."""

    name: str
    family: str
    classes: tuple[str, ...]
    label: Callable[[object], int]


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("digit", "glyph", tuple("0123456789"), lambda d: d),
    TaskSpec("digit-parity", "glyph", ("even", "odd"), lambda d: d % 2),
    TaskSpec("digit-large", "glyph", ("0-4", "5-9"), lambda d: int(d >= 5)),
    TaskSpec("count", "counting", ("1", "2", "3", "4", "5"), lambda c: c - 1),
    TaskSpec("count-parity", "counting", ("even", "odd"), lambda c: c % 2),
    TaskSpec("count-many", "counting", ("1-2", "3-5"), lambda c: int(c >= 3)),
    TaskSpec("orientation", "texture", ("0", "45", "90", "135"), lambda t: t[0]),
    TaskSpec("orientation-axis", "texture", ("axis-aligned", "diagonal"), lambda t: t[0] % 2),
    TaskSpec("frequency", "texture", ("fine", "medium", "coarse", "very coarse"), lambda t: t[1]),
)
FAMILY_NAMES = tuple(FAMILIES)


def sample_family(family: str, n: int, rng: np.random.Generator, fonts: list[Font]):
    """n scenes of one family: images float32 [n, 3, 16, 16] in [0, 1] and their latents (a list)."""
    pairs = [FAMILIES[family](rng, fonts) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def task_labels(task: TaskSpec, latents: list) -> np.ndarray:
    return np.array([task.label(z) for z in latents], dtype=np.int64)


def sample_task(task: TaskSpec, n: int, rng: np.random.Generator, fonts: list[Font]):
    """n images float32 [n, 3, 16, 16] in [0, 1] and labels int64 [n] of one task."""
    images, latents = sample_family(task.family, n, rng, fonts)
    return images, task_labels(task, latents)


def sample_pretraining(n: int, rng: np.random.Generator, fonts: list[Font]):
    """n glyph images and their class ids over PRETRAIN_GLYPHS (many fonts, sizes, angles, colours)."""
    labels = rng.integers(len(PRETRAIN_GLYPHS), size=n)
    images = [render_glyph(PRETRAIN_GLYPHS[k], fonts[int(rng.integers(len(fonts)))], rng) for k in labels]
    return np.stack(images), labels.astype(np.int64)


def normalise(images: np.ndarray) -> np.ndarray:
    """[0, 1] pixels -> the model's input scale (zero-centred, unit-ish spread)."""
    return ((images - 0.5) / 0.25).astype(np.float32)
