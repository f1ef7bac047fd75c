"""A seeded procedural world of coloured shapes with exact ground truth.

Every scene is a small RGB image (32x32 by default, 64x64 also works) on a plain
background with one or two objects. Each object is a shape (circle, square,
triangle, star) in a colour (red, green, blue, yellow) at some size and position,
and carries an exact boolean mask. Scenes come with a caption ("a red circle left
of a blue square", or "a red circle" for one object) and question/answer pairs
("what colour is the square ?" -> "blue", "what shape is red ?" -> "circle").

Within one scene all objects have different colours and different shapes, so every
question has exactly one answer and names exactly one object. Objects are drawn
with hard edges (no anti-aliasing): a mask pixel has exactly the object's colour.

The world is numpy only. The same seed always gives the same scenes::

    from mmviz.teaching.shapes import make_scenes
    scenes = make_scenes(4, seed=0)
    scenes[0].image.shape            # (32, 32, 3) uint8
    scenes[0].objects[0].mask.shape  # (32, 32) bool
    scenes[0].caption                # e.g. "a red circle left of a blue square"
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
"""Shape names, in a fixed order."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
"""Colour names and their exact RGB values."""

BACKGROUND: tuple[int, int, int] = (235, 235, 235)
"""RGB of the plain background."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""Spatial relations between the first and the second object of a caption."""

_FIXED_WORDS: tuple[str, ...] = ("a", "what", "colour", "shape", "is", "the", "?")


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene.

    Attributes:
        shape: one of `SHAPES`.
        colour: one of `COLOURS`.
        cx: centre column, in pixels.
        cy: centre row, in pixels.
        radius: half the object's extent, in pixels.
        mask: exact object pixels, `[height, width]` bool.
    """

    shape: str
    colour: str
    cx: float
    cy: float
    radius: float
    mask: np.ndarray = field(repr=False, compare=False)

    @property
    def phrase(self) -> str:
        """The object's noun phrase, e.g. ``"a red circle"``."""
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A rendered scene with its ground truth.

    Attributes:
        image: `[height, width, 3]` uint8 RGB.
        objects: the objects, in caption order.
        relation: relation of ``objects[0]`` to ``objects[1]`` (one of `RELATIONS`),
            or ``None`` for a one-object scene.
        caption: the scene's caption.
        qa: ``(question, answer, object_index)`` triples; ``object_index`` names the
            object the question is about.
    """

    image: np.ndarray = field(repr=False, compare=False)
    objects: tuple[ShapeObject, ...]
    relation: str | None
    caption: str
    qa: tuple[tuple[str, str, int], ...]


def vocabulary() -> list[str]:
    """Every word the world can produce in captions, questions and answers.

    Returns:
        Sorted list of words (``"?"`` is a word of its own).
    """
    words = set(_FIXED_WORDS) | set(SHAPES) | set(COLOURS)
    for relation in RELATIONS:
        words.update(relation.split())
    return sorted(words)


def caption_for(objects: tuple[ShapeObject, ...] | list[tuple[str, str]], relation: str | None) -> str:
    """Build a caption.

    Args:
        objects: the objects, or ``(colour, shape)`` pairs, in caption order.
        relation: relation of the first to the second object; ignored for one object.

    Returns:
        ``"a red circle"`` or ``"a red circle left of a blue square"``.
    """
    pairs = [(o.colour, o.shape) if isinstance(o, ShapeObject) else tuple(o) for o in objects]
    phrases = [f"a {colour} {shape}" for colour, shape in pairs]
    if len(phrases) == 1:
        return phrases[0]
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    return f"{phrases[0]} {relation} {phrases[1]}"


def questions_for(objects: tuple[ShapeObject, ...]) -> tuple[tuple[str, str, int], ...]:
    """Question/answer pairs about a scene's objects.

    Args:
        objects: the scene's objects (distinct colours and shapes).

    Returns:
        ``(question, answer, object_index)`` triples: for each object, its colour
        (asked by shape) and its shape (asked by colour).
    """
    qa: list[tuple[str, str, int]] = []
    for i, obj in enumerate(objects):
        qa.append((f"what colour is the {obj.shape} ?", obj.colour, i))
        qa.append((f"what shape is {obj.colour} ?", obj.shape, i))
    return tuple(qa)


def shape_mask(shape: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    """Rasterise one shape with hard edges.

    Args:
        shape: one of `SHAPES`.
        cx: centre column in pixels.
        cy: centre row in pixels.
        radius: half extent in pixels.
        size: image height and width.

    Returns:
        `[size, size]` bool mask, sampled at pixel centres.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        half = radius * 0.85
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        verts = [(0.0, -radius), (radius, radius * 0.8), (-radius, radius * 0.8)]
        return _convex_polygon(dx, dy, verts)
    if shape == "star":
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius * 1.15, radius * 0.55)
        verts = list(zip(radii * np.cos(angles), radii * np.sin(angles)))
        return _polygon(dx, dy, verts)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _convex_polygon(x: np.ndarray, y: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Inside test for a convex polygon with clockwise (image-coordinate) vertices."""
    inside = np.ones(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
        inside &= (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) >= 0
    return inside


def _polygon(x: np.ndarray, y: np.ndarray, verts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd inside test for any simple polygon."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_cross)
    return inside


def _relation(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    """Relation of a to b when it is clear (one axis dominates), else None."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dx) >= 1.5 * abs(dy):
        return "left of" if dx < 0 else "right of"
    if abs(dy) >= 1.5 * abs(dx):
        return "above" if dy < 0 else "below"
    return None


def render(objects: list[tuple[str, str, float, float, float]], size: int = 32) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw objects on the background.

    Args:
        objects: ``(shape, colour, cx, cy, radius)`` tuples; later ones are drawn on top.
        size: image height and width.

    Returns:
        ``(image, masks)``: `[size, size, 3]` uint8 and one `[size, size]` bool mask
        per object (visible pixels only).
    """
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    masks: list[np.ndarray] = []
    for shape, colour, cx, cy, radius in objects:
        mask = shape_mask(shape, cx, cy, radius, size)
        for earlier in masks:
            earlier &= ~mask
        image[mask] = COLOURS[colour]
        masks.append(mask)
    return image, masks


def random_scene(rng: np.random.Generator, size: int = 32, n_objects: int | None = None) -> Scene:
    """Sample one scene.

    Args:
        rng: numpy random generator (the only source of randomness).
        size: image height and width in pixels (32 or 64 are typical).
        n_objects: 1 or 2; ``None`` picks one of them at random (2 with probability 2/3).

    Returns:
        The scene. Two objects never overlap and their relation is unambiguous.
    """
    if n_objects is None:
        n_objects = 1 if rng.random() < 1 / 3 else 2
    if n_objects not in (1, 2):
        raise ValueError(f"n_objects must be 1 or 2, got {n_objects}")
    shapes = rng.choice(len(SHAPES), size=n_objects, replace=False)
    colours = rng.choice(len(COLOURS), size=n_objects, replace=False)
    colour_names = list(COLOURS)
    while True:
        radii = rng.uniform(0.14, 0.22, size=n_objects) * size
        centres = [(rng.uniform(r + 1, size - r - 1), rng.uniform(r + 1, size - r - 1)) for r in radii]
        if n_objects == 1:
            relation = None
            break
        (ax, ay), (bx, by) = centres
        gap = max(abs(ax - bx), abs(ay - by)) - radii.sum()
        relation = _relation(centres[0], centres[1])
        if gap >= 1.0 and relation is not None:
            break
    specs = [
        (SHAPES[s], colour_names[c], cx, cy, float(r)) for s, c, (cx, cy), r in zip(shapes, colours, centres, radii)
    ]
    image, masks = render(specs, size)
    objects = tuple(
        ShapeObject(shape=s, colour=c, cx=float(cx), cy=float(cy), radius=r, mask=m)
        for (s, c, cx, cy, r), m in zip(specs, masks)
    )
    return Scene(
        image=image,
        objects=objects,
        relation=relation,
        caption=caption_for(objects, relation),
        qa=questions_for(objects),
    )


def make_scenes(n: int, seed: int = 0, size: int = 32, n_objects: int | None = None) -> list[Scene]:
    """Sample ``n`` scenes reproducibly.

    Args:
        n: number of scenes.
        seed: random seed; the same seed gives the same scenes.
        size: image height and width in pixels.
        n_objects: 1, 2, or ``None`` for a mix.

    Returns:
        List of scenes.
    """
    rng = np.random.default_rng(seed)
    return [random_scene(rng, size=size, n_objects=n_objects) for _ in range(n)]


def segment_colour(image: np.ndarray, colour: str, tolerance: float = 80.0) -> np.ndarray:
    """Mask of the pixels whose nearest palette colour (background included) is ``colour``.

    Used to find objects in generated images, which are never exactly on-palette.

    Args:
        image: `[height, width, 3]` uint8 RGB.
        colour: one of `COLOURS`.
        tolerance: maximum RGB distance to the colour.

    Returns:
        `[height, width]` bool mask.
    """
    palette = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float64)
    dist = np.linalg.norm(image[:, :, None, :].astype(np.float64) - palette[None, None], axis=-1)
    index = 1 + list(COLOURS).index(colour)
    return (dist.argmin(-1) == index) & (dist[..., index] <= tolerance)
