"""The toy world's nuisances: seeded, within their named ranges, and visible in the pixels."""
import math

import numpy as np
import pytest

from decap_core.toy import looks
from decap_core.toy import world as toyworld

RANGED = ("texture", "noise", "blur", "rotation", "aspect", "vignette")


def test_looks_are_seeded_and_renders_repeat():
    a, b = toyworld.scenes(2, "eval", 30, nuisances="web"), toyworld.scenes(2, "eval", 30, nuisances="web")
    assert a == b
    assert np.array_equal(np.asarray(toyworld.render(a[4])), np.asarray(toyworld.render(b[4])))
    assert a != toyworld.scenes(3, "eval", 30, nuisances="web")


def test_web_looks_stay_in_their_ranges_and_keep_contrast():
    web = looks.NUISANCES["web"]
    scenes = toyworld.scenes(0, "clip", 400, nuisances="web")
    for scene in scenes:
        look = scene.look
        assert all(web.background[0] <= c <= web.background[1] for c in look.background)
        for colour, obj in zip(look.object_colours, scene.objects):
            assert max(abs(a - b) for a, b in zip(colour, toyworld.COLOURS[obj.colour])) <= web.colour_jitter
            assert math.dist(colour, look.background) >= looks.MIN_CONTRAST
        assert web.sizes[0] <= look.side <= web.sizes[1] and web.jpeg[0] <= look.jpeg_quality <= web.jpeg[1]
        assert look.vignette == 0  # a family web never uses
    gradients = sum(scene.look.background_end is not None for scene in scenes) / len(scenes)
    assert abs(gradients - web.gradient) < 0.08
    assert len({scene.look.background for scene in scenes}) > 390  # tints vary, not a few greys


def beyond_web(look: looks.Look) -> set[str]:
    """The families whose drawn values lie outside the web setting's ranges."""
    web = looks.NUISANCES["web"]
    checks = {
        "dark_channel": min(look.background) < web.background[0], "texture": look.texture > web.texture[1],
        "noise": look.noise > web.noise[1], "blur": look.blur > web.blur[1], "jpeg": look.jpeg_quality < web.jpeg[0],
        "rotation": max(abs(t) for t in look.shape_turns) > web.rotation[1],
        "aspect": max(abs(math.log(s)) for s in look.shape_stretches) > web.aspect[1] + 1e-9,
        "sizes": look.side < web.sizes[0],
    }
    return {name for name, beyond in checks.items() if beyond}


def test_the_out_of_distribution_set_shifts_one_family_beyond_training_and_adds_an_unseen_one():
    web, ood = looks.NUISANCES["web"], looks.NUISANCES["web-ood"]
    for name in RANGED:
        train, held_out = getattr(web, name), getattr(ood, name)
        assert held_out[0] >= train[1] and held_out[1] > train[1], name
    assert ood.jpeg[1] < web.jpeg[0] and ood.sizes[1] < web.sizes[0] and ood.dark_channel[1] <= web.background[0]
    shifted = []
    for scene in toyworld.scenes(0, "eval", 300, nuisances="web-ood"):
        families = beyond_web(scene.look)
        assert len(families) == 1, families
        shifted += families
        assert scene.look.vignette >= ood.vignette[0] > 0  # a family web never uses, on every image
    assert set(shifted) == set(ood.shifted) and max(map(shifted.count, set(shifted))) < 60
    assert not any(beyond_web(scene.look) for scene in toyworld.scenes(0, "eval", 300, nuisances="web"))


@pytest.mark.parametrize("field, value", [("texture", 12.0), ("noise", 6.0), ("blur", 0.8), ("vignette", 0.3),
                                          ("jpeg_quality", 30)])
def test_each_nuisance_changes_the_pixels(field, value):
    scene = toyworld.scenes(1, "eval", 1, nuisances="clean")[0]
    plain = looks.Look(background=scene.background)
    base = np.asarray(toyworld.render(toyworld.Scene(scene.background, scene.objects, plain), 96), dtype=float)
    changed = toyworld.Scene(scene.background, scene.objects, looks.Look(background=scene.background, **{field: value}))
    pixels = np.asarray(toyworld.render(changed, 96), dtype=float)
    assert np.abs(pixels - base).mean() > 0.3, field


def test_rotation_and_stretch_move_a_shape_but_keep_its_area():
    obj = toyworld.ToyObject("red", "square", "large", 0.5, 0.5, 0.18)
    background = (240, 240, 240)
    def red_mask(look):
        pixels = np.asarray(toyworld.render(toyworld.Scene(background, (obj,), look), 128)).astype(int)
        return np.abs(pixels - np.array(toyworld.COLOURS["red"])).sum(axis=2) < 60
    upright = red_mask(looks.Look(background))
    turned = red_mask(looks.Look(background, shape_turns=(12.0,), shape_stretches=(1.0,),
                                 object_colours=(toyworld.COLOURS["red"],)))
    stretched = red_mask(looks.Look(background, shape_turns=(0.0,), shape_stretches=(1.12,),
                                    object_colours=(toyworld.COLOURS["red"],)))
    for mask in (turned, stretched):
        assert (mask != upright).sum() > 100
        assert abs(int(mask.sum()) - int(upright.sum())) < 0.05 * upright.sum()


def test_an_unknown_nuisance_setting_is_refused():
    with pytest.raises(ValueError, match="unknown nuisance setting 'webb'"):
        toyworld.scenes(0, "eval", 3, nuisances="webb")
