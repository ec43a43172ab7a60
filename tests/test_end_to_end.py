"""Captioning on the demo's toy models: the bulk pipeline on an archive, and the strategies' quality."""
import subprocess
import sys

import pytest

from decap_core import captions_files
from decap_core.captioner import Captioner
from decap_core.clip import load_clip
from decap_core.decoder_files import load_decoder
from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.toy import archive as toy_archive
from decap_core.toy import evaluation
from decap_core.toy import world as toyworld


def test_toy_clip_sees_colour_and_shape_and_keeps_a_modality_gap(toy_models):
    report = toy_models["clip_report"]  # zero-shot on held-out renders of the web world, made by train-clip itself
    # two demo seeds (300 images, one thread): one object 100% / 99.0%, two 90.3% / 90.3%, centroid 0.457 / 0.429
    assert report["single_object_top1"] >= 0.95 and report["two_object_top1"] >= 0.8, report
    assert report["centroid_distance"] >= 0.35 and report["matched_cosine"] < 0.95, report


def test_caption_pipeline_captions_a_toy_archive_from_webdataset_tars(toy_models, tmp_path):
    """The bulk pipeline, as a user runs it: memory by build-memory, held-out scenes in img2dataset tars."""
    corpus = tmp_path / "memory.txt"
    corpus.write_text("\n".join(toyworld.sentences(0, "memory", 2000)) + "\n")
    subprocess.run([sys.executable, "-m", "jobs.cli", "build-memory", "--input", str(corpus), "--output",
                    str(tmp_path / "memory"), "--clip-checkpoint", toy_models["clip"], "--num-shards", "2"],
                   check=True, capture_output=True, timeout=600)
    truths = toy_archive.write_scene_shards(toyworld.scenes(5, "eval", 120), str(tmp_path / "archive"), per_shard=50)
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "caption", "--input", f"{tmp_path}/archive/*.tar", "--output",
         str(tmp_path / "captions"), "--clip-checkpoint", toy_models["clip"], "--decoder", toy_models["decoder"],
         "--memory", str(tmp_path / "memory"), "--strategy", "pd", "--strategy", "vd", "--tau", "0.03"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "dead letters: 0" in result.stdout and "in 3 shards" in result.stdout, result.stdout
    rows = captions_files.read_captions(str(tmp_path / "captions")).to_pylist()
    assert sorted((r["key"], r["strategy"]) for r in rows) == sorted((k, s) for k in truths for s in ("pd", "vd"))
    assert all(r["url"].startswith("toy://scene/") and r["source_caption"] for r in rows)  # img2dataset's sibling
    recall = {}
    for strategy in ("pd", "vd"):
        chosen = [r for r in rows if r["strategy"] == strategy]
        scores = evaluation.object_scores([r["caption"] for r in chosen], [truths[r["key"]] for r in chosen])
        recall[strategy] = scores["object_recall"]
    # measured with this memory and tau in process on the web world's 200 images of the next test, the demo's
    # models of two seeds: pd 0.78 / 0.72, vd 0.44 / 0.46; this fixture's models on these 120 images: pd 0.75, vd 0.41
    assert recall["pd"] > 0.6 and recall["pd"] > recall["vd"] + 0.15, recall
    pd_scores = [r["clip_score"] for r in rows if r["strategy"] == "pd"]
    assert sum(pd_scores) / len(pd_scores) > 0.3  # captions sit near their images in CLIP space


def test_projection_beats_decoding_the_image_embedding(toy_models):
    clip = load_clip("toy-clip", toy_models["clip"])
    decoder = load_decoder(toy_models["decoder"])
    memory = SupportMemory.from_texts(clip, toyworld.sentences(0, "memory", 2000))
    scenes = toyworld.scenes(6, "eval", 200)
    embeddings = clip.encode_images([toyworld.render(s) for s in scenes])
    # a small memory (2,000 sentences) keeps this quick. Measured on the web world with the demo's models of two
    # seeds: object recall pd/vd 0.778/0.443 and 0.723/0.458, exact captions 0.625/0.085 and 0.545/0.040.
    # This fixture (its CLIP is seed 0's, its decoder trained in process): 0.766/0.408 and 0.595/0.095.
    rows = evaluation.evaluate(Captioner(decoder, memory, tau=0.03), embeddings, [s.object_set() for s in scenes])
    by_strategy = {r["strategy"]: r for r in rows}
    pd, vd = by_strategy["pd"], by_strategy["vd"]
    assert pd["object_recall"] > vd["object_recall"] + 0.15, rows  # the modality gap's harm, and projection's cure
    assert pd["exact"] > vd["exact"] + 0.30, rows


def test_pd_from_each_images_own_caption_is_bounded_by_the_memory(toy_models):
    clip = load_clip("toy-clip", toy_models["clip"])
    decoder = load_decoder(toy_models["decoder"])
    scenes = toyworld.scenes(8, "eval", 60)
    rng = toyworld.split_rng(9, "eval")  # the captions caption_query_recall draws with seed 9
    holding = Captioner(decoder, SupportMemory.from_texts(clip, [toyworld.caption(s, rng) for s in scenes]), tau=0.01)
    sparse = Captioner(decoder, SupportMemory.from_texts(clip, toyworld.sentences(0, "memory", 40)), tau=0.01)
    assert evaluation.caption_query_recall(holding, clip, scenes, seed=9) >= 0.9  # the decoder alone misses a few
    assert evaluation.caption_query_recall(sparse, clip, scenes, seed=9) < 0.6


def test_captioner_refuses_mismatched_inputs(toy_models):
    clip = load_clip("toy-clip", toy_models["clip"])
    decoder = load_decoder(toy_models["decoder"])
    other = SupportMemory.from_texts(load_clip("toy-clip"), ["a red circle"])
    with pytest.raises(DecapError, match="memory was built with CLIP"):
        Captioner(decoder, other)
    captioner = Captioner(decoder, SupportMemory.from_texts(clip, ["a red circle", "a blue star"]))
    import torch

    with pytest.raises(DecapError, match="width"):
        captioner.caption(torch.zeros(2, 64))
    with pytest.raises(DecapError, match="unknown strategy"):
        captioner.caption(clip.encode_text(["a red circle"]), "best")
