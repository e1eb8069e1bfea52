"""The glyph world: deterministic scenes and images, captions, the held-out split, and its error messages."""

from __future__ import annotations

import numpy as np
import pytest

from peft_inits.glyph import world
from peft_inits.glyph.world import Scene, World, attribute_values, render


def test_items_are_a_function_of_seed_and_index():
    first, scenes = World(seed=3).images(6)
    again, same = World(seed=3).images(3, start=3)
    assert np.array_equal(first[3:], again) and scenes[3:] == same
    assert first.shape == (6, 32, 32, 3) and first.dtype == np.uint8
    other, _ = World(seed=4).images(6)
    assert not np.array_equal(first, other)
    assert len({image.tobytes() for image in first}) == 6


def test_captions_name_every_attribute():
    scene = Scene(subject="Q", family="serif", variant="bold", colour="red", background="brick")
    assert scene.caption() == "a red bold serif letter q on a brick wall"
    orange = Scene(subject="A", family="monospace", variant="regular", colour="orange", background="checks")
    assert orange.caption() == "an orange monospace letter a on a checkerboard"
    assert orange.caption(subject_word="sks glyph") == "an orange monospace sks glyph on a checkerboard"
    held = Scene(subject="♣", family="sans", variant="italic", colour="pink", background="rings")
    assert held.caption() == "a pink italic sans symbol ♣ on rings"
    assert held.caption(style_word="sks style") == "a pink italic sans symbol ♣ on sks style"


def test_training_world_draws_every_value_and_no_held_out_one():
    _, scenes = World().images(600)
    for attribute in ("subject", "family", "variant", "colour", "background"):
        seen = {getattr(scene, attribute) for scene in scenes}
        assert seen == set(attribute_values(attribute)), attribute
        assert not seen & set(attribute_values(attribute, held_out=True)), attribute


def test_held_out_worlds_render_and_skip_fonts_without_the_glyph():
    # DejaVu Serif lacks nothing here, but Computer Modern has no ♣: a held-out font world must use letters.
    images, scenes = World(subjects=attribute_values("subject", held_out=True), seed=1).images(40)
    assert {s.subject for s in scenes} <= set(world.HELD_OUT_SUBJECTS) and images.std() > 20
    _, scenes = World(families=("roman", "stix"), backgrounds=("rings", "waves", "grid")).images(40)
    assert {s.family for s in scenes} == {"roman", "stix"}
    assert {s.variant for s in scenes if s.family == "roman"} <= {"regular", "italic"}


def test_the_glyph_is_drawn_in_its_colour():
    """On a plain background, the pixels that differ most from the background are the fill colour."""
    rng = np.random.default_rng(0)
    for colour, rgb in world.COLOURS.items():
        image = render(Scene("H", "sans", "bold", colour, "plain"), rng).astype(float)
        distance = np.abs(image - np.array(rgb)).sum(-1)
        assert (distance < 30).mean() > 0.05, colour  # a bold H at 60-80 % of the height covers ~9 % of pixels


@pytest.mark.parametrize(
    ("scene", "message"),
    [
        (Scene("A", "sans", "regular", "mauve", "brick"), "unknown colour 'mauve'"),
        (Scene("A", "gothic", "regular", "red", "brick"), "unknown typeface 'gothic'"),
        (Scene("A", "roman", "bold", "red", "brick"), "has no 'bold' variant"),
        (Scene("♣", "roman", "regular", "red", "brick"), r"cmr10\.ttf .* has no glyph for '♣'"),
        (Scene("A", "sans", "regular", "red", "marble"), "unknown background 'marble'"),
    ],
)
def test_bad_scenes_are_named(scene, message):
    with pytest.raises(ValueError, match=message):
        render(scene, np.random.default_rng(0))


def test_bad_world_choices_are_named():
    with pytest.raises(ValueError, match="no variant of typeface 'roman'"):
        World(subjects=("♣",), families=("roman",)).images(4)
    with pytest.raises(ValueError, match="count must be >= 1"):
        World().images(0)
    with pytest.raises(ValueError, match="unknown attribute 'size'"):
        attribute_values("size")
