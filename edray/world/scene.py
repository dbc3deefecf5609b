"""Scenes of the skills world: a scene graph, its rendering to PNG, and the ground truth inside the PNG.

A scene is a square image cut into a ``grid x grid`` lattice of cells; each object sits alone in a cell,
centred, with a shape, a color and a size. The scene graph travels with every sample twice: in the
row's ``metadata`` JSON (key ``"world"``) and as a PNG ``tEXt`` chunk (key :data:`PNG_TEXT_KEY`), so
the world teacher can read it from the image bytes it receives over the API. Pipeline stages never
read either: only the teacher and the evaluator do.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from dataclasses import dataclass, field
from functools import cached_property

from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from edray.world.config import SceneConfig

PNG_TEXT_KEY = "edray-world-scene"

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 20),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross")
SHAPE_PLURALS: dict[str, str] = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND = (0, 0, 0)


def column_names(grid: int) -> tuple[str, ...]:
    """Names of the columns, left to right (``left``/``right``, with ``center`` on odd grids)."""
    return _axis_names(grid, "left", "center", "right")


def row_names(grid: int) -> tuple[str, ...]:
    """Names of the rows, top to bottom (``top``/``bottom``, with ``middle`` on odd grids)."""
    return _axis_names(grid, "top", "middle", "bottom")


def _axis_names(grid: int, low: str, mid: str, high: str) -> tuple[str, ...]:
    # Absolute halves only: the tiny student cannot learn finer positions.
    half = grid // 2
    names = [low] * half + ([mid] if grid % 2 else []) + [high] * half
    return tuple(names)


@dataclass(frozen=True)
class SceneObject:
    """One object: shape, color, size, and the cell it occupies (0-based row and column)."""

    shape: str
    color: str
    size: str
    row: int
    col: int


@dataclass(frozen=True)
class Scene:
    """A scene graph: image size, grid and objects (in cell order)."""

    image_size: int
    grid: int
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the form stored in metadata and in the PNG chunk)."""
        objects = [{"shape": o.shape, "color": o.color, "size": o.size, "row": o.row, "col": o.col} for o in self.objects]
        return {"image_size": self.image_size, "grid": self.grid, "objects": objects}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: a field is missing or not one of the world's values.
        """
        try:
            objects = tuple(SceneObject(**o) for o in data["objects"])
            scene = cls(image_size=int(data["image_size"]), grid=int(data["grid"]), objects=objects)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a world scene: {exc}") from None
        for o in scene.objects:
            if o.shape not in SHAPES or o.color not in COLORS or o.size not in SIZES:
                raise ValueError(f"not a world object: {o}")
            if not (0 <= o.row < scene.grid and 0 <= o.col < scene.grid):
                raise ValueError(f"object outside the grid: {o}")
        return scene

    def key(self) -> str:
        """Canonical text of the scene's content (what makes two scenes the same picture)."""
        return self._key

    @cached_property
    def _key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """A stable hash of :meth:`key`; validation and test splits never share one."""
        return hashlib.sha256(self._key.encode()).hexdigest()[:16]

    def column_of(self, obj: SceneObject) -> str:
        return column_names(self.grid)[obj.col]

    def row_of(self, obj: SceneObject) -> str:
        return row_names(self.grid)[obj.row]


def sample_scene(rng: random.Random, config: SceneConfig, n_objects: int | None = None) -> Scene:
    """Draw a scene: ``n_objects`` (or a uniform count in the configured range) in distinct cells.

    Args:
        rng: the caller's random stream (determinism is the caller's seed).
        config: scene settings.
        n_objects: exact number of objects, or ``None`` for the configured range.

    Returns:
        The scene, objects sorted by cell.
    """
    n = n_objects if n_objects is not None else rng.randint(config.min_objects, config.max_objects)
    cells = rng.sample(range(config.grid * config.grid), n)
    objects = [
        SceneObject(
            shape=rng.choice(SHAPES),
            color=rng.choice(tuple(COLORS)),
            size=rng.choice(SIZES),
            row=c // config.grid,
            col=c % config.grid,
        )
        for c in sorted(cells)
    ]
    return Scene(image_size=config.image_size, grid=config.grid, objects=tuple(objects))


def render_scene(scene: Scene, config: SceneConfig | None = None) -> bytes:
    """Render a scene to PNG bytes, with the scene graph as a ``tEXt`` chunk.

    The output is byte-identical for the same scene (no timestamps, fixed compression).

    Args:
        scene: what to draw.
        config: size fractions; defaults to :class:`SceneConfig`'s.

    Returns:
        Encoded PNG.
    """
    cfg = config or SceneConfig(image_size=scene.image_size, grid=scene.grid, max_objects=min(4, scene.grid**2))
    img = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = scene.image_size // scene.grid
    for obj in scene.objects:
        frac = cfg.large_fraction if obj.size == "large" else cfg.small_fraction
        side = max(3, int(round(cell * frac)))
        x0 = obj.col * cell + (cell - side) // 2
        y0 = obj.row * cell + (cell - side) // 2
        _draw_shape(draw, obj.shape, x0, y0, side, COLORS[obj.color])
    info = PngInfo()
    info.add_text(PNG_TEXT_KEY, scene.key())
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, compress_level=6)
    return buf.getvalue()


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x0: int, y0: int, side: int, color: tuple[int, int, int]) -> None:
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "triangle":
        draw.polygon([(x0 + (side - 1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    elif shape == "cross":
        t = max(1, side // 3)
        m0 = x0 + (side - t) // 2
        n0 = y0 + (side - t) // 2
        draw.rectangle((m0, y0, m0 + t - 1, y1), fill=color)
        draw.rectangle((x0, n0, x1, n0 + t - 1), fill=color)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def scene_from_png(data: bytes) -> Scene | None:
    """Read the scene graph back from PNG bytes written by :func:`render_scene`.

    Returns:
        The scene, or ``None`` when the bytes are not a PNG carrying a world scene.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            text = getattr(img, "text", {}).get(PNG_TEXT_KEY)
    except Exception:  # noqa: BLE001 - any undecodable image simply carries no scene
        return None
    if text is None:
        return None
    try:
        return Scene.from_dict(json.loads(text))
    except (ValueError, json.JSONDecodeError):
        return None
