"""Shared fixtures. No test reaches the network: hub look-ups are switched off here."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

import decap_core  # noqa: E402,F401  (torchvision shim before open_clip)
from decap_core.toy import world as toyworld  # noqa: E402


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory):
    """A toy CLIP and decoder, trained once per test run (about 17 minutes on 2 cores). The CLIP is
    the demo's (its CPU training is deterministic, so with the demo's thread count it is the same
    model); the decoder has the demo's settings (its steps too) but trains in process, not from
    shards, so its data order and weights differ from the demo's.

    Shorter runs did not make the models the captioning tests judge: after 250 steps the CLIP
    scored 74% on held-out single objects and 26% on pairs; a decoder of 1,000 steps at lr 2e-3 on
    8,000 sentences decoded the image embedding itself (vd) almost as well as the projection (pd),
    as a decoder trained with prefix noise does.
    """
    from decap_core.clip import load_clip
    from decap_core.clip_training import ClipTrainSettings, train_clip
    from decap_core.training import TrainSettings, train_on_texts
    from jobs.demo import DECODER_STEPS

    root = tmp_path_factory.mktemp("toy-models")
    clip_path = str(root / "toy-clip.safetensors")
    report = train_clip(clip_path, ClipTrainSettings(eval_count=100))
    clip = load_clip("toy-clip", clip_path)
    texts = toyworld.sentences(0, "decoder", 30000)
    train_on_texts(clip, texts, str(root / "decoder"), "toy", TrainSettings(steps=DECODER_STEPS))
    return {"clip": clip_path, "decoder": str(root / "decoder"), "clip_report": report, "root": root}


def pytest_collection_modifyitems(items):
    """Every test that needs the trained toy models is slow (they take minutes to train)."""
    for item in items:
        if "toy_models" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
