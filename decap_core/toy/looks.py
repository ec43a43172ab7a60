"""How a toy scene looks, apart from what is in it: the nuisances that web images vary in.

A ``Nuisances`` value names the ranges that each image's ``Look`` is drawn from: background tint
and gradient, low-contrast texture, sensor noise, blur, JPEG quality, rotation and aspect of the
shapes, jitter of object colours around their named hue, the render size, and a vignette.
``NUISANCES`` holds the named settings: ``clean`` (the near-grey world of earlier versions),
``web`` (what the toy CLIP trains on and in-distribution evaluation uses) and ``web-ood``: on every
image the vignette, a family ``web`` never uses, and one other family, drawn per image, beyond
``web``'s range (a deeper tint, more texture, noise or blur, harder JPEG, larger turns or stretches,
smaller renders); the other families stay within ``web``'s ranges. One shifted family at a time, as
ImageNet-C corrupts one way at a time, so that each image says which shift it stands for.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageFilter

Colour = tuple[int, int, int]
MIN_CONTRAST = 90.0  # least RGB distance between a background and any object colour drawn on it


@dataclass(frozen=True)
class Nuisances:
    """The ranges one image's look is drawn from; a range of ``None`` or 0 leaves that nuisance out."""

    name: str
    background: tuple[float, float] | None = None  # each channel independently; None: near-grey (clean)
    dark_channel: tuple[float, float] | None = None  # one channel drawn from here instead: a deeper tint
    gradient: float = 0.0  # share of images whose background is a gradient between two tints
    texture: tuple[float, float] = (0.0, 0.0)  # amplitude (grey levels) of smooth background texture
    noise: tuple[float, float] = (0.0, 0.0)  # sigma (grey levels) of Gaussian pixel noise
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian blur radius, in pixels of a 128-px image
    jpeg: tuple[int, int] | None = None  # JPEG quality range; None: no compression
    rotation: tuple[float, float] = (0.0, 0.0)  # |degrees| a polygon is turned by (either way)
    aspect: tuple[float, float] = (0.0, 0.0)  # |log| of the width/height stretch of a shape
    colour_jitter: float = 0.0  # each channel of an object's colour moves by up to this
    sizes: tuple[int, int] | None = None  # render side range in pixels; None: the caller's size
    vignette: tuple[float, float] = (0.0, 0.0)  # darkening of the corners (share of brightness)
    shifted: tuple[str, ...] = ()  # families of which each image takes one from here, the rest from ``inside``
    inside: str | None = None  # the setting whose ranges the families in ``shifted`` not chosen take


NUISANCES: dict[str, Nuisances] = {
    "clean": Nuisances("clean"),
    "web": Nuisances(
        "web", background=(175, 255), gradient=0.3, texture=(0, 10), noise=(0, 5), blur=(0, 0.7),
        jpeg=(50, 95), rotation=(0, 10), aspect=(0, 0.1), colour_jitter=15, sizes=(96, 160),
    ),
    "web-ood": Nuisances(
        "web-ood", background=(175, 255), dark_channel=(150, 170), gradient=0.3, texture=(10, 16),
        noise=(5, 8), blur=(0.7, 1.0), jpeg=(30, 45), rotation=(10, 16), aspect=(0.1, 0.15),
        colour_jitter=15, sizes=(64, 88), vignette=(0.1, 0.25),
        shifted=("dark_channel", "texture", "noise", "blur", "jpeg", "rotation", "aspect", "sizes"), inside="web",
    ),
}


def nuisances(name: str) -> Nuisances:
    """The named setting; a one-line error for an unknown name."""
    if name not in NUISANCES:
        raise ValueError(f"unknown nuisance setting {name!r}; expected one of {', '.join(NUISANCES)}")
    return NUISANCES[name]


@dataclass(frozen=True)
class Look:
    """One image's drawn nuisances (the defaults draw a flat background and nothing else)."""

    background: Colour
    background_end: Colour | None = None  # a gradient's far colour
    gradient_angle: float = 0.0
    texture: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    jpeg_quality: int | None = None
    side: int | None = None
    vignette: float = 0.0
    seed: int = 0  # seeds the texture and the noise
    shape_turns: tuple[float, ...] = field(default=())  # per object: degrees
    shape_stretches: tuple[float, ...] = field(default=())  # per object: width/height factor
    object_colours: tuple[Colour, ...] = field(default=())  # per object: the drawn RGB


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return float(rng.uniform(low, high)) if high > low else float(low)


def _signed(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return _uniform(rng, bounds) * (1 if rng.random() < 0.5 else -1)


def _contrasts(colour: Colour, object_colours: tuple[Colour, ...]) -> bool:
    return all(math.dist(colour, other) >= MIN_CONTRAST for other in object_colours)


def _tint(rng: np.random.Generator, n: Nuisances, object_colours: tuple[Colour, ...]) -> Colour:
    """A light background colour, each channel drawn apart, far enough from every object colour."""
    while True:
        channels = [rng.uniform(*n.background) for _ in range(3)]
        if n.dark_channel is not None:
            channels[int(rng.integers(3))] = rng.uniform(*n.dark_channel)
        colour = tuple(int(round(c)) for c in channels)
        if _contrasts(colour, object_colours):
            return colour


def draw_look(rng: np.random.Generator, n: Nuisances, named_colours: list[Colour]) -> Look:
    """Draw one image's look for objects of ``named_colours`` (in scene order) from ``n``'s ranges."""
    if n.shifted:
        chosen = n.shifted[int(rng.integers(len(n.shifted)))]
        inside = NUISANCES[n.inside]
        n = replace(n, **{name: getattr(inside, name) for name in n.shifted if name != chosen})
    jitter = n.colour_jitter
    colours = tuple(
        tuple(int(np.clip(c + rng.uniform(-jitter, jitter), 0, 255)) for c in colour) if jitter else colour
        for colour in named_colours
    )
    background = _tint(rng, n, colours)
    end = _tint(rng, n, colours) if rng.random() < n.gradient else None
    return Look(
        background=background, background_end=end, gradient_angle=float(rng.uniform(0, 2 * math.pi)),
        texture=_uniform(rng, n.texture), noise=_uniform(rng, n.noise), blur=_uniform(rng, n.blur),
        jpeg_quality=int(rng.integers(n.jpeg[0], n.jpeg[1] + 1)) if n.jpeg else None,
        side=int(rng.integers(n.sizes[0], n.sizes[1] + 1)) if n.sizes else None,
        vignette=_uniform(rng, n.vignette), seed=int(rng.integers(2**31)),
        shape_turns=tuple(_signed(rng, n.rotation) for _ in colours),
        shape_stretches=tuple(math.exp(_signed(rng, n.aspect)) for _ in colours),
        object_colours=colours,
    )


def background_image(look: Look, side: int, grid: int = 32) -> Image.Image:
    """The background alone: flat, or a gradient and texture drawn on a coarse grid and smoothly enlarged."""
    if look.background_end is None and look.texture == 0:
        return Image.new("RGB", (side, side), look.background)
    start = np.array(look.background, dtype=np.float32)
    pixels = np.broadcast_to(start, (grid, grid, 3))
    if look.background_end is not None:
        steps = (np.arange(grid, dtype=np.float32) + 0.5) / grid - 0.5
        along = np.cos(look.gradient_angle) * steps[None, :] + np.sin(look.gradient_angle) * steps[:, None]
        weight = (along / math.sqrt(2) + 0.5)[..., None]
        pixels = (1 - weight) * start + weight * np.array(look.background_end, dtype=np.float32)
    if look.texture > 0:
        coarse = np.random.default_rng(look.seed).uniform(-1, 1, size=(6, 6)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((grid, grid), Image.Resampling.BICUBIC))
        pixels = pixels + look.texture * smooth[..., None]
    small = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")
    return small.resize((side, side), Image.Resampling.BILINEAR)


def finish(image: Image.Image, look: Look) -> Image.Image:
    """The camera's part, applied to the drawn image: blur, noise, vignette, JPEG compression."""
    side = image.width
    if look.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(look.blur * side / 128))
    if look.noise > 0 or look.vignette > 0:
        pixels = np.asarray(image, dtype=np.float32)
        if look.vignette > 0:
            grid = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
            radius = np.sqrt(grid[None, :] ** 2 + grid[:, None] ** 2) / math.sqrt(0.5)
            pixels = pixels * (1 - look.vignette * radius**2)[..., None]
        if look.noise > 0:
            rng = np.random.default_rng(look.seed + 1)
            pixels = pixels + look.noise * rng.standard_normal(pixels.shape, dtype=np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    if look.jpeg_quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=look.jpeg_quality)
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image
