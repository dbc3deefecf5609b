"""Scenes: sampling, rendering, and the scene graph carried inside the PNG."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from edray.world.config import SceneConfig
from edray.world.scene import COLORS, Scene, SceneObject, render_scene, sample_scene, scene_from_png


def test_png_chunk_round_trip_and_byte_identical_rendering() -> None:
    cfg = SceneConfig()
    for i in range(30):
        scene = sample_scene(random.Random(i), cfg)
        png = render_scene(scene, cfg)
        assert scene_from_png(png) == scene
        assert render_scene(scene, cfg) == png


def test_objects_are_drawn_in_their_cells_with_their_colors() -> None:
    cfg = SceneConfig()
    rng = random.Random(7)
    for _ in range(20):
        scene = sample_scene(rng, cfg)
        img = Image.open(io.BytesIO(render_scene(scene, cfg))).convert("RGB")
        assert img.size == (32, 32)
        occupied = {(o.row, o.col) for o in scene.objects}
        for o in scene.objects:
            # Every shape covers its cell's centre pixel.
            assert img.getpixel((o.col * 16 + 8, o.row * 16 + 8)) == COLORS[o.color]
        for r in range(2):
            for c in range(2):
                if (r, c) not in occupied:
                    cell = img.crop((c * 16, r * 16, c * 16 + 16, r * 16 + 16))
                    assert cell.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_larger_images_hold_more_objects() -> None:
    cfg = SceneConfig(image_size=48, grid=3, min_objects=5, max_objects=6)
    scene = sample_scene(random.Random(0), cfg)
    assert 5 <= len(scene.objects) <= 6
    assert len({(o.row, o.col) for o in scene.objects}) == len(scene.objects)
    assert Image.open(io.BytesIO(render_scene(scene, cfg))).size == (48, 48)


def test_config_rejects_more_objects_than_cells() -> None:
    with pytest.raises(ValueError, match="exceeds grid"):
        SceneConfig(grid=2, max_objects=5)


def test_plain_png_and_garbage_carry_no_scene() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    assert scene_from_png(buf.getvalue()) is None
    assert scene_from_png(b"not an image") is None


def test_from_dict_rejects_unknown_values() -> None:
    good = Scene(32, 2, (SceneObject("square", "red", "large", 0, 1),)).to_dict()
    bad = dict(good, objects=[dict(good["objects"][0], color="magenta")])
    with pytest.raises(ValueError, match="not a world object"):
        Scene.from_dict(bad)
    assert Scene.from_dict(good).digest() != Scene(32, 2, (SceneObject("square", "red", "large", 1, 1),)).digest()
