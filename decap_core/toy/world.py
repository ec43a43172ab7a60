"""The toy world: flat shapes on plain backgrounds, and a caption grammar that names them.

It stands in for web images and their alt text, so that the project can train its own tiny CLIP
offline and measure caption quality honestly. Every object is written ``[size ]<colour> <shape>``
in every caption; the rest of the sentence is one of many paraphrases.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from decap_core.toy import looks
from decap_core.toy.looks import Look, Nuisances

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (40, 75, 220),
    "yellow": (240, 205, 25),
    "purple": (125, 45, 175),
    "orange": (245, 135, 20),
    "pink": (240, 110, 190),
    "black": (25, 25, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SIZES: dict[str, tuple[float, float]] = {"small": (0.07, 0.10), "large": (0.15, 0.19)}
MAX_OBJECTS = 3
SPLITS = ("clip", "decoder", "memory", "eval")
DEFAULT_SIDE = 128  # render size of a scene whose look does not set one

_ONE = (
    "a {0}",
    "there is a {0}",
    "a picture of a {0}",
    "an image of a {0}",
    "a {0} on a plain background",
    "a single {0}",
    "just a {0}",
    "a drawing of a {0}",
)
_TWO = (
    "a {0} and a {1}",
    "a {0} next to a {1}",
    "a {0} beside a {1}",
    "there is a {0} and a {1}",
    "a picture of a {0} and a {1}",
    "a {0} with a {1}",
    "two shapes: a {0} and a {1}",
    "an image showing a {0} and a {1}",
)
_THREE = (
    "a {0}, a {1} and a {2}",
    "there is a {0}, a {1} and a {2}",
    "a picture of a {0}, a {1} and a {2}",
    "a {0} with a {1} and a {2}",
    "three shapes: a {0}, a {1} and a {2}",
    "a {0} next to a {1} and a {2}",
    "an image showing a {0}, a {1} and a {2}",
)
TEMPLATES: dict[int, tuple[str, ...]] = {1: _ONE, 2: _TWO, 3: _THREE}

_OBJECT_PATTERN = re.compile(
    r"\b(?:(?P<size>%s) )?(?P<colour>%s) (?P<shape>%s)\b"
    % ("|".join(SIZES), "|".join(COLOURS), "|".join(SHAPES))
)


@dataclass(frozen=True)
class ToyObject:
    """One shape: its words, and where it is drawn (centre and radius as fractions of the side)."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    """A light background colour and one to three objects of distinct colours, and how it is drawn.

    ``look`` holds the image's nuisances (``decap_core.toy.looks``); ``None`` is the clean world:
    a flat background and the named colours, drawn at the size asked for.
    """

    background: tuple[int, int, int]
    objects: tuple[ToyObject, ...]
    look: Look | None = None

    def object_set(self) -> frozenset[tuple[str, str]]:
        """The ``(colour, shape)`` pairs in the scene: what quality is judged on."""
        return frozenset((o.colour, o.shape) for o in self.objects)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """An independent random stream for one split, so splits never share draws."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    digest = hashlib.sha256(f"decap-toyworld/{seed}/{split}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_scene(rng: np.random.Generator, num_objects: int | None = None,
                 nuisances: Nuisances = looks.NUISANCES["web"]) -> Scene:
    """Draw a scene: 1 to 3 non-overlapping objects, distinct colours, varied sizes and places.

    With any ``nuisances`` but ``clean`` the scene's look is drawn from its ranges after the objects
    (the clean world's draws, and so its scenes, are those of earlier versions).
    """
    count = int(rng.integers(1, MAX_OBJECTS + 1)) if num_objects is None else num_objects
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    clean = nuisances.name == "clean"
    if clean:
        level = rng.uniform(215, 250)
        background = tuple(int(np.clip(level + rng.uniform(-12, 12), 190, 255)) for _ in range(3))
    while True:  # rejection sampling; three large objects always fit in the unit square
        objects = []
        for colour_index in colours:
            size = str(rng.choice(list(SIZES)))
            radius = float(rng.uniform(*SIZES[size]))
            objects.append(
                ToyObject(
                    colour=list(COLOURS)[int(colour_index)],
                    shape=SHAPES[int(rng.integers(len(SHAPES)))],
                    size=size,
                    x=float(rng.uniform(radius + 0.02, 1 - radius - 0.02)),
                    y=float(rng.uniform(radius + 0.02, 1 - radius - 0.02)),
                    radius=radius,
                )
            )
        if _no_overlap(objects):
            break
    if clean:
        return Scene(background=background, objects=tuple(objects))
    look = looks.draw_look(rng, nuisances, [COLOURS[o.colour] for o in objects])
    return Scene(background=look.background, objects=tuple(objects), look=look)


def _no_overlap(objects: Sequence[ToyObject], margin: float = 0.02) -> bool:
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if math.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius + margin:
                return False
    return True


def render(scene: Scene, size: int | None = None, supersample: int = 4) -> Image.Image:
    """Draw the scene as an RGB image of ``size`` x ``size`` pixels (default: its look's size, else 128).

    Shapes are drawn ``supersample`` times larger and downscaled, for smooth edges at every size;
    then the look's blur, noise, vignette and JPEG compression are applied.
    """
    look = scene.look or Look(background=scene.background)
    size = size or look.side or DEFAULT_SIDE
    side = size * supersample
    image = looks.background_image(look, side)
    draw = ImageDraw.Draw(image)
    count = len(scene.objects)
    fills = look.object_colours or tuple(COLOURS[o.colour] for o in scene.objects)
    for obj, fill, turn, stretch in zip(scene.objects, fills, look.shape_turns or (0.0,) * count,
                                        look.shape_stretches or (1.0,) * count):
        draw.polygon(_turned_outline(obj, side, turn, stretch), fill=fill)
    return looks.finish(image.resize((size, size), Image.Resampling.LANCZOS), look)


def _outline(shape: str, r: float) -> list[tuple[float, float]]:
    """The shape's corners around the origin (a circle as a 48-gon), as the clean drawing has them."""
    if shape == "circle":
        return _regular_polygon(0, 0, r, 48)
    if shape == "square":
        h = r * 0.85
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        return _regular_polygon(0, 0, r, 3)
    if shape == "star":
        outer, inner = _regular_polygon(0, 0, r, 5), _regular_polygon(0, 0, r * 0.42, 5, offset=math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    if shape == "cross":
        a = r * 0.33
        return [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a),
                (-a, -a)]
    raise ValueError(f"unknown shape {shape!r}")


def _turned_outline(obj: ToyObject, side: int, turn: float, stretch: float) -> list[tuple[float, float]]:
    """The outline stretched (width by ``stretch``, height by its inverse) and turned ``turn`` degrees."""
    cx, cy, r = obj.x * side, obj.y * side, obj.radius * side
    cos, sin = math.cos(math.radians(turn)), math.sin(math.radians(turn))
    points = [(x * stretch, y / stretch) for x, y in _outline(obj.shape, r)]
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]


def _regular_polygon(
    cx: float, cy: float, r: float, corners: int, offset: float = 0.0
) -> list[tuple[float, float]]:
    start = -math.pi / 2 + offset
    return [
        (cx + r * math.cos(start + 2 * math.pi * i / corners),
         cy + r * math.sin(start + 2 * math.pi * i / corners))
        for i in range(corners)
    ]


def rebind(scene: Scene, rng: np.random.Generator) -> Scene:
    """A hard negative: the same layout with the shapes dealt to other colours.

    The twin holds the same colours and shapes bound differently (or, where no reshuffle changes
    anything, one object's shape replaced), so telling the two apart needs colour-shape binding.
    """
    shapes = [o.shape for o in scene.objects]
    if len(set(shapes)) > 1:
        while (new := [shapes[i] for i in rng.permutation(len(shapes))]) == shapes:
            pass
    else:
        new = list(shapes)
        new[0] = str(rng.choice([s for s in SHAPES if s != shapes[0]]))
    objects = tuple(ToyObject(o.colour, shape, o.size, o.x, o.y, o.radius) for o, shape in zip(scene.objects, new))
    return Scene(background=scene.background, objects=objects, look=scene.look)


def object_phrase(obj: ToyObject, with_size: bool) -> str:
    """``[size ]<colour> <shape>``."""
    return f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"


def caption(scene: Scene, rng: np.random.Generator, size_word_rate: float = 0.5) -> str:
    """One paraphrase describing the scene; objects in random order, size words optional."""
    order = rng.permutation(len(scene.objects))
    phrases = [object_phrase(scene.objects[i], bool(rng.random() < size_word_rate)) for i in order]
    template = TEMPLATES[len(phrases)][int(rng.integers(len(TEMPLATES[len(phrases)])))]
    return with_articles(template.format(*phrases))


def with_articles(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def parse_objects(text: str) -> list[tuple[str, str]]:
    """The ``(colour, shape)`` pairs a caption names, in order."""
    return [(m["colour"], m["shape"]) for m in _OBJECT_PATTERN.finditer(text)]


def parse_sized_objects(text: str) -> list[tuple[str | None, str, str]]:
    """The ``(size or None, colour, shape)`` triples a caption names, in order."""
    return [(m["size"], m["colour"], m["shape"]) for m in _OBJECT_PATTERN.finditer(text)]


def sentences(seed: int, split: str, count: int) -> list[str]:
    """``count`` grammar sentences from one split's stream (text only: decoder or memory corpora)."""
    rng, clean = split_rng(seed, split), looks.NUISANCES["clean"]  # no looks to draw: the sentences of earlier versions
    return [caption(sample_scene(rng, nuisances=clean), rng) for _ in range(count)]


def scenes(seed: int, split: str, count: int, num_objects: int | None = None,
           nuisances: str = "web") -> list[Scene]:
    """``count`` scenes from one split's stream, looking as the named ``nuisances`` setting draws them."""
    rng, setting = split_rng(seed, split), looks.nuisances(nuisances)
    return [sample_scene(rng, num_objects, setting) for _ in range(count)]


def pairs(seed: int, split: str = "clip", rebound_twins: bool = True,
          nuisances: str = "web") -> Iterator[tuple[Scene, str]]:
    """An endless stream of (scene, caption) pairs for contrastive training.

    With ``rebound_twins`` every scene is followed by its ``rebind`` twin, so each batch holds hard
    negatives that differ only in which colour goes with which shape.
    """
    rng, setting = split_rng(seed, split), looks.nuisances(nuisances)
    while True:
        scene = sample_scene(rng, nuisances=setting)
        yield scene, caption(scene, rng)
        if rebound_twins:
            twin = rebind(scene, rng)
            yield twin, caption(twin, rng)
