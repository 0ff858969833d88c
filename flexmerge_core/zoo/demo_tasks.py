"""Offline image generators for the demo zoo: a pretraining set and three families of tasks.

Why rendered data: a fresh machine has no datasets, so every image is drawn locally (sklearn's bundled
handwritten `digits` aside). Tasks come in families that share an image distribution and differ only in
what is asked about it, so fine-tuning moves family members in related directions (high block cosine)
while different families move apart: the structure FlexMerge's greedy plan exploits.

- glyph family: `digits` (sklearn's handwriting), `font-digits` and `letters` (rendered in DejaVu fonts);
- geometry family: `shapes` (which shape), `count` (1-5 dots), `position` (3x3 cell of a square);
- texture family: gratings, asked about `orientation`, `frequency` or `blur` level.

Images are drawn at 64 px, box-downsampled to 16 px, given pixel noise and normalised. Every generator
takes a numpy Generator, so callers seed it from (seed, task index, split), never from Python's hash().
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
        if abs(bg.mean() - fg.mean()) > 70:
            return tuple(int(v) for v in bg), tuple(int(v) for v in fg)


def _finish(img: Image.Image, rng: np.random.Generator, noise: float = 0.04) -> np.ndarray:
    """64 px RGB image -> 16 px float32 [3, 16, 16] in [0, 1] with Gaussian pixel noise."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    f = CANVAS // IMAGE_SIZE
    a = a.reshape(IMAGE_SIZE, f, IMAGE_SIZE, f, 3).mean(axis=(1, 3))
    a = a + rng.normal(0.0, noise, size=a.shape).astype(np.float32)
    return np.clip(a, 0.0, 1.0).transpose(2, 0, 1)


def _paste_mask(img: Image.Image, mask: Image.Image, colour, rng: np.random.Generator, rotate: float) -> None:
    """Rotate an L mask around its centre and paste it in `colour` at a random offset near the centre."""
    mask = mask.rotate(float(rng.uniform(-rotate, rotate)), resample=Image.BILINEAR)
    box = mask.getbbox()
    if box is None:
        return
    mask = mask.crop(box)
    w, h = mask.size
    x = int(rng.integers(0, max(1, CANVAS - w + 1)))
    y = int(rng.integers(0, max(1, CANVAS - h + 1)))
    img.paste(Image.new("RGB", mask.size, colour), (x, y), mask)


def render_glyph(char: str, font: Font, rng: np.random.Generator) -> np.ndarray:
    """One character in a random font size, rotation, position and colours."""
    bg, fg = _colours(rng)
    img = Image.new("RGB", (CANVAS, CANVAS), bg)
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    size = int(rng.integers(34, 50))
    ImageDraw.Draw(mask).text((CANVAS / 2, CANVAS / 2), char, fill=255, font=font(size), anchor="mm")
    _paste_mask(img, mask, fg, rng, rotate=15)
    return _finish(img, rng)


_SKLEARN_DIGITS: tuple[np.ndarray, np.ndarray] | None = None


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    global _SKLEARN_DIGITS
    if _SKLEARN_DIGITS is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        _SKLEARN_DIGITS = (d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))
    return _SKLEARN_DIGITS


def render_handwritten(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 sklearn digit scaled up, rotated and placed at random in random colours."""
    bg, fg = _colours(rng)
    img = Image.new("RGB", (CANVAS, CANVAS), bg)
    size = int(rng.integers(36, 52))
    mask = Image.fromarray((pixels * 255).astype(np.uint8), "L").resize((size, size), Image.BILINEAR)
    canvas_mask = Image.new("L", (CANVAS, CANVAS), 0)
    canvas_mask.paste(mask, ((CANVAS - size) // 2, (CANVAS - size) // 2))
    _paste_mask(img, canvas_mask, fg, rng, rotate=15)
    return _finish(img, rng)


SHAPES = ("circle", "square", "triangle", "cross")


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:
        t = r * 0.38
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)


def render_shapes(items: list[tuple[str, float, float, float]], rng: np.random.Generator) -> np.ndarray:
    """Flat shapes (kind, centre x, centre y, radius) in one colour on a plain background."""
    bg, fg = _colours(rng)
    img = Image.new("RGB", (CANVAS, CANVAS), bg)
    draw = ImageDraw.Draw(img)
    for kind, cx, cy, r in items:
        _draw_shape(draw, kind, cx, cy, r, fg)
    return _finish(img, rng)


def _scatter(rng: np.random.Generator, count: int, radius: float) -> list[tuple[float, float]]:
    """`count` centres at least 2.6 radii apart inside the canvas (rejection sampling)."""
    while True:
        pts = rng.uniform(radius + 2, CANVAS - radius - 2, size=(count, 2))
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(count) * 1e9
        if d.min() >= 2.6 * radius:
            return [(float(x), float(y)) for x, y in pts]


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


@dataclass(frozen=True)
class TaskSpec:
    """A demo task: its family, class names, and a sampler of one (image, label) from a Generator."""

    name: str
    family: str
    classes: tuple[str, ...]
    sample: Callable[[np.random.Generator, list[Font]], tuple[np.ndarray, int]]


def _font_digit(rng, fonts):
    label = int(rng.integers(10))
    return render_glyph(str(label), fonts[int(rng.integers(len(fonts)))], rng), label


def _letter(rng, fonts):
    label = int(rng.integers(10))
    return render_glyph("ABCDEFGHJK"[label], fonts[int(rng.integers(len(fonts)))], rng), label


def _handwritten(rng, fonts):
    pixels, targets = _sklearn_digits()
    i = int(rng.integers(len(targets)))
    return render_handwritten(pixels[i], rng), int(targets[i])


def _shape(rng, fonts):
    label = int(rng.integers(len(SHAPES)))
    r = float(rng.uniform(9, 18))
    cx, cy = rng.uniform(r + 1, CANVAS - r - 1, size=2)
    return render_shapes([(SHAPES[label], cx, cy, r)], rng), label


def _count(rng, fonts):
    label = int(rng.integers(5))
    r = float(rng.uniform(4.5, 6.5))
    kind = SHAPES[int(rng.integers(2))]
    return render_shapes([(kind, x, y, r) for x, y in _scatter(rng, label + 1, r)], rng), label


def _position(rng, fonts):
    label = int(rng.integers(9))
    cell = CANVAS / 3
    r = float(rng.uniform(5, 8))
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    cx = (label % 3 + 0.5) * cell + rng.uniform(-2, 2)
    cy = (label // 3 + 0.5) * cell + rng.uniform(-2, 2)
    return render_shapes([(kind, cx, cy, r)], rng), label


ORIENTATIONS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
PERIOD_BINS = ((11.0, 14.0), (17.0, 21.0), (25.0, 31.0), (38.0, 48.0))
BLUR_LEVELS = (0.0, 1.5, 3.0, 5.0)


def _orientation(rng, fonts):
    label = int(rng.integers(4))
    period = float(rng.uniform(12, 40))
    angle = ORIENTATIONS[label] + rng.uniform(-0.12, 0.12)
    return render_grating(period, angle, float(rng.uniform(0, 2)), rng), label


def _frequency(rng, fonts):
    label = int(rng.integers(4))
    period = float(rng.uniform(*PERIOD_BINS[label]))
    return render_grating(period, float(rng.uniform(0, np.pi)), float(rng.uniform(0, 1)), rng), label


def _blur(rng, fonts):
    label = int(rng.integers(4))
    period = float(rng.uniform(16, 32))
    return render_grating(period, float(rng.uniform(0, np.pi)), BLUR_LEVELS[label], rng), label


TASKS: tuple[TaskSpec, ...] = (
    TaskSpec("digits", "glyph", tuple("0123456789"), _handwritten),
    TaskSpec("font-digits", "glyph", tuple("0123456789"), _font_digit),
    TaskSpec("letters", "glyph", tuple("ABCDEFGHJK"), _letter),
    TaskSpec("shapes", "geometry", SHAPES, _shape),
    TaskSpec("count", "geometry", ("1", "2", "3", "4", "5"), _count),
    TaskSpec("position", "geometry", tuple(f"{r}{c}" for r in "tmb" for c in "lcr"), _position),
    TaskSpec("orientation", "texture", ("0", "45", "90", "135"), _orientation),
    TaskSpec("frequency", "texture", ("fine", "medium", "coarse", "very coarse"), _frequency),
    TaskSpec("blur", "texture", ("sharp", "soft", "blurred", "very blurred"), _blur),
)


def sample_task(task: TaskSpec, n: int, rng: np.random.Generator, fonts: list[Font]):
    """n images float32 [n, 3, 16, 16] in [0, 1] and labels int64 [n] of one task."""
    pairs = [task.sample(rng, fonts) for _ in range(n)]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=np.int64)


def sample_pretraining(n: int, rng: np.random.Generator, fonts: list[Font]):
    """n glyph images and their class ids over PRETRAIN_GLYPHS (many fonts, sizes, angles, colours)."""
    labels = rng.integers(len(PRETRAIN_GLYPHS), size=n)
    images = [render_glyph(PRETRAIN_GLYPHS[k], fonts[int(rng.integers(len(fonts)))], rng) for k in labels]
    return np.stack(images), labels.astype(np.int64)


def normalise(images: np.ndarray) -> np.ndarray:
    """[0, 1] pixels -> the model's input scale (zero-centred, unit-ish spread)."""
    return ((images - 0.5) / 0.25).astype(np.float32)
