"""Shared fixtures. No test reaches the network: hub look-ups are switched off here."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import decap_core  # noqa: E402,F401  (torchvision shim before open_clip)

import pytest  # noqa: E402

from decap_core import toyworld  # noqa: E402


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory):
    """A toy CLIP and a briefly trained decoder, made once per test run (about 7 minutes on 2 cores).

    The CLIP gets the demo's 600 steps (after 250 it scored only 74% on held-out single objects and
    26% on pairs); the decoder a short, hot run (1,000 steps at lr 2e-3 rebuilt the objects of
    about 94% of held-out sentences from the demo's CLIP).
    """
    from jobs import train_clip, train_decoder
    from decap_core.clip import load_clip

    root = tmp_path_factory.mktemp("toy-models")
    clip_path = str(root / "toy-clip.safetensors")
    report = train_clip.train_clip(clip_path, eval_count=100)
    clip = load_clip("toy-clip", clip_path)
    settings = train_decoder.TrainSettings(steps=1000, batch_size=96, lr=2e-3, warmup=50)
    train_decoder.train_decoder(clip, toyworld.sentences(0, "decoder", 8000), str(root / "decoder"), "toy", settings)
    return {"clip": clip_path, "decoder": str(root / "decoder"), "clip_report": report, "root": root}
