import math

import numpy as np
import pytest

from decap_core.toy import looks
from decap_core.toy import world as toyworld


def test_same_seed_same_world():
    a, b = toyworld.scenes(7, "eval", 20), toyworld.scenes(7, "eval", 20)
    assert a == b
    assert toyworld.sentences(7, "decoder", 50) == toyworld.sentences(7, "decoder", 50)
    assert np.array_equal(np.asarray(toyworld.render(a[3], 64)), np.asarray(toyworld.render(b[3], 64)))


def test_splits_are_separate_streams():
    streams = {split: toyworld.scenes(0, split, 50) for split in toyworld.SPLITS}
    for split, scenes in streams.items():
        for other, other_scenes in streams.items():
            if split != other:
                assert not set(scenes) & set(other_scenes), (split, other)
    with pytest.raises(ValueError):
        toyworld.split_rng(0, "train")


def test_world_is_combinatorially_rich():
    assert len(toyworld.COLOURS) >= 8 and {"red", "green", "blue", "yellow"} <= set(toyworld.COLOURS)
    assert len(toyworld.SHAPES) >= 4 and {"circle", "square", "triangle"} <= set(toyworld.SHAPES)
    texts = toyworld.sentences(0, "memory", 5000)
    assert len(set(texts)) > 3500  # a small world (4 colours x 3 shapes x 1-2 objects) has only 588
    three = [t for t in texts if len(toyworld.parse_objects(t)) == 3]
    assert len(set(three)) > 0.98 * len(three)  # multi-object sentences almost never repeat
    counts = {len(s.objects) for s in toyworld.scenes(0, "clip", 300)}
    assert counts == {1, 2, 3}


def test_scenes_keep_their_rules():
    for scene in toyworld.scenes(1, "clip", 300):
        colours = [o.colour for o in scene.objects]
        assert len(colours) == len(set(colours))
        assert toyworld._no_overlap(scene.objects)
        for obj in scene.objects:
            low, high = toyworld.SIZES[obj.size]
            assert low <= obj.radius <= high
            assert obj.radius <= obj.x <= 1 - obj.radius and obj.radius <= obj.y <= 1 - obj.radius
        assert min(scene.background) >= 165
        assert all(math.dist(scene.background, colour) >= looks.MIN_CONTRAST for colour in scene.look.object_colours)
    for scene in toyworld.scenes(1, "clip", 100, nuisances="clean"):
        assert min(scene.background) >= 190 and scene.look is None


def test_captions_name_every_object_with_matching_size():
    rng = np.random.default_rng(0)
    for scene in toyworld.scenes(2, "clip", 300):
        text = toyworld.caption(scene, rng)
        assert set(toyworld.parse_objects(text)) == scene.object_set()
        sizes = {(o.colour, o.shape): o.size for o in scene.objects}
        for size, colour, shape in toyworld.parse_sized_objects(text):
            assert size in (None, sizes[(colour, shape)])
        assert " a o" not in text and not text.startswith("a o")  # "an orange ..."


@pytest.mark.parametrize("size", [64, 128, 96])
def test_renders_at_any_size_with_object_colours(size):
    scene = toyworld.scenes(3, "eval", 1, num_objects=1, nuisances="clean")[0]
    pixels = np.asarray(toyworld.render(scene, size)).reshape(-1, 3).astype(int)
    assert pixels.shape[0] == size * size
    colour = np.array(toyworld.COLOURS[scene.objects[0].colour])
    assert (np.abs(pixels - colour).sum(axis=1) < 10).sum() > 0.5 * np.pi * (scene.objects[0].radius * size) ** 2 * 0.3


def test_rebound_twins_differ_only_in_binding():
    rng = np.random.default_rng(0)
    for scene in toyworld.scenes(4, "clip", 200):
        twin = toyworld.rebind(scene, rng)
        assert twin.object_set() != scene.object_set()
        placements = [(o.colour, o.size, o.x, o.y) for o in scene.objects]
        assert [(o.colour, o.size, o.x, o.y) for o in twin.objects] == placements
        if len({o.shape for o in scene.objects}) > 1:
            assert sorted(o.shape for o in twin.objects) == sorted(o.shape for o in scene.objects)
    stream = toyworld.pairs(0)
    first, second = next(stream), next(stream)
    assert second[0].background == first[0].background and second[0].object_set() != first[0].object_set()
    assert [o.colour for o in second[0].objects] == [o.colour for o in first[0].objects]
