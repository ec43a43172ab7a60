"""The captioning pipeline on small real archives, with random-weights models (the quality of captions
is judged on the toy world's trained models in test_caption_quality.py)."""
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from caption_fixtures import (
    add_member,
    build_memory_and_decoder,
    good_and_bad_images,
    random_decoder,
    write_img2dataset_shard,
)
from PIL import Image

from decap_core import captions_files
from jobs import cli
from pipelines import caption

STRATEGIES = ["pd", "nnd", "clipre", "vd"]
SHARDS = 12  # for the kill test: enough that a kill lands mid-run


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_memory_and_decoder(tmp_path_factory.mktemp("models"))


def model_flags(models):
    return ["--decoder", models["decoder"], "--memory", models["memory"], "--clip-model", "toy-clip"]


def caption_rows(output):
    rows = captions_files.read_captions(str(output)).to_pylist()
    return sorted(rows, key=lambda r: (r["key"], r["strategy"], r["source"]))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two img2dataset shards (one with every kind of bad image), a truncated one, and a traversal member."""
    root = tmp_path_factory.mktemp("archive")
    good, bad = good_and_bad_images()
    extension = {key: "png" for key in list(good)[1::2]} | {"000000101": "png", "000000102": "png"}
    first = dict(list(good.items())[:5])
    second = dict(list(good.items())[5:]) | {key: payload for key, (payload, _) in bad.items()}
    write_img2dataset_shard(root / "00000.tar", first, extension, failed_keys=("000000999",))
    write_img2dataset_shard(root / "00001.tar", second, extension | {k: "png" for k in bad})
    with tarfile.open(root / "00001.tar", "a") as tar:
        add_member(tar, "../escape.jpg", good["000000000"])
    whole = (root / "00000.tar").read_bytes()
    (root / "00002.tar").write_bytes(whole[: len(whole) // 2 + 300])  # cut inside a member
    expected_dead = {key: reason for key, (_, reason) in bad.items()} | {"../escape": "unsafe_member_name"}
    return root, good, expected_dead


def test_webdataset_archive_every_good_image_once_every_bad_one_dead_lettered(models, archive, tmp_path):
    root, good, expected_dead = archive
    output = tmp_path / "captions"
    manifest = caption.run(["--input", f"{root}/0000{{0..1}}.tar", "--output", str(output), *model_flags(models),
                            *sum((["--strategy", s] for s in STRATEGIES), []), "--batch-size", "4"])
    rows = caption_rows(output)
    assert sorted((r["key"], r["strategy"]) for r in rows) == sorted((k, s) for k in good for s in STRATEGIES)
    dead = {d["key"]: d for d in captions_files.read_dead_letters(str(output))}
    assert {k: d["error"] for k, d in dead.items()} == expected_dead
    assert all(d["source"].endswith(f"#{k}") for k, d in dead.items())
    counts = manifest["counts"]
    assert counts["read"] == counts["captioned"] + counts["dead"] == len(good) + len(expected_dead)
    assert counts["rows"] == len(rows) and counts["keys_in_several_shards"] == 0
    by_key = {r["key"]: r for r in rows if r["strategy"] == "pd"}
    assert by_key["000000000"]["url"] == "https://example.org/000000000"  # from the sibling Parquet
    assert by_key["000000000"]["source_caption"] == "caption of 000000000"
    assert all(len(r["neighbors"]) == 5 and r["neighbors"][0]["weight"] >= r["neighbors"][1]["weight"] for r in rows)
    assert all(-1 <= r["clip_score"] <= 1 for r in rows)
    assert {r["tau"] for r in rows if r["strategy"] == "pd"} == {0.01}
    assert {r["tau"] for r in rows if r["strategy"] != "pd"} == {None}
    assert {r["clip_fingerprint"] for r in rows} == {"toy-clip:random"}
    clipre = {r["key"]: r["caption"] for r in rows if r["strategy"] == "clipre"}
    assert all(clipre[k] == by_key[k]["neighbors"][0]["text"] for k in clipre)  # the nearest memory sentence


def test_a_truncated_tar_keeps_its_samples_before_the_cut(models, archive, tmp_path):
    root, _, _ = archive
    output = tmp_path / "captions"
    manifest = caption.run(["--input", str(root / "00002.tar"), "--output", str(output), *model_flags(models)])
    dead = captions_files.read_dead_letters(str(output))
    assert [d["error"] for d in dead] == ["truncated_tar"]
    assert 1 <= manifest["counts"]["captioned"] < 5


def test_16_bit_cmyk_transparent_and_rotated_images_are_seen_as_a_person_sees_them(models):
    from decap_core.image_decoding import decode_image

    good, _ = good_and_bad_images()
    grey = np.asarray(decode_image(good["000000101"], "16-bit"))
    assert grey.shape[2] == 3 and abs(int(grey.mean()) - 128) <= 2  # mid-grey, not white
    upright = np.asarray(decode_image(good["000000103"], "rotated"))
    assert upright.shape[:2] == (48, 64)  # EXIF orientation applied
    assert upright[:, :24, 0].mean() > 200 and upright[:, :24, 1].mean() < 80  # the red half is on the left
    assert np.asarray(decode_image(good["000000102"], "rgba")).min() == 255  # transparent over white


def test_embeddings_parquet_bad_rows_are_dead_lettered(models, tmp_path):
    rng = np.random.default_rng(0)
    vectors = [rng.standard_normal(128).tolist() for _ in range(4)]
    rows = [{"key": f"e{i}", "embedding": v} for i, v in enumerate(vectors)]
    rows += [{"key": "wide", "embedding": rng.standard_normal(64).tolist()},
             {"key": "nan", "embedding": [float("nan")] * 128},
             {"key": "zero", "embedding": [0.0] * 128},
             {"key": "e0", "embedding": vectors[0]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "embeddings.parquet")
    output = tmp_path / "captions"
    caption.run(["--input", str(tmp_path / "*.parquet"), "--output", str(output), *model_flags(models)])
    assert [r["key"] for r in caption_rows(output)] == ["e0", "e1", "e2", "e3"]
    dead = {(d["key"], d["error"]) for d in captions_files.read_dead_letters(str(output))}
    assert dead == {("wide", "wrong_width"), ("nan", "non_finite"), ("zero", "zero_norm"), ("e0", "duplicate_key")}


def test_topk_projection_over_the_whole_memory_gives_the_exact_captions(models, tmp_path):
    vectors = np.random.default_rng(2).standard_normal((12, 128))
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(12)], "embedding": vectors.tolist()}),
                   tmp_path / "embeddings.parquet")
    captions = {}
    for name, flags in (("exact", []), ("topk", ["--topk", "1000"]), ("top3", ["--topk", "3"])):
        caption.run(["--input", str(tmp_path / "embeddings.parquet"), "--output", str(tmp_path / name),
                     *model_flags(models), *flags])
        captions[name] = [(r["key"], r["caption"], len(r["neighbors"])) for r in caption_rows(tmp_path / name)]
    assert captions["topk"] == captions["exact"]  # k above the memory's 80 rows: the exact softmax
    assert [n for _, _, n in captions["top3"]] == [5] * 12  # pd mixes 3 rows; 5 neighbours are still listed


def test_clip_retrieval_output_is_read_as_it_is(models, tmp_path):
    (tmp_path / "out" / "img_emb").mkdir(parents=True)
    (tmp_path / "out" / "metadata").mkdir()
    vectors = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float16)
    vectors /= np.linalg.norm(vectors.astype(np.float32), axis=1, keepdims=True).astype(np.float16)
    np.save(tmp_path / "out" / "img_emb" / "img_emb_0.npy", vectors)
    pq.write_table(pa.table({"image_path": ["a/1.jpg", "a/2.jpg", "b/3.jpg"], "caption": ["one", "two", "three"]}),
                   tmp_path / "out" / "metadata" / "metadata_0.parquet")
    output = tmp_path / "captions"
    caption.run(["--input", str(tmp_path / "out"), "--output", str(output), *model_flags(models)])
    rows = caption_rows(output)
    assert [(r["key"], r["source_caption"]) for r in rows] == [("a/1.jpg", "one"), ("a/2.jpg", "two"),
                                                               ("b/3.jpg", "three")]


def test_image_files_with_colliding_keys_are_refused_not_doubled(models, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "images" / folder).mkdir(parents=True)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    for name in ("a/dup.png", "a/dup.jpg", "a/x.png", "b/x.png", "b/y.jpg"):
        image.save(tmp_path / "images" / name)
    output = tmp_path / "captions"
    caption.run(["--input", str(tmp_path / "images" / "*" / "*"), "--output", str(output), *model_flags(models)])
    assert sorted(r["key"] for r in caption_rows(output)) == ["dup", "x", "y"]
    dead = captions_files.read_dead_letters(str(output))
    assert sorted((d["source"].split("images/")[1], d["error"]) for d in dead) == [
        ("a/dup.png", "duplicate_key"), ("b/x.png", "duplicate_key")]


@pytest.mark.parametrize("flags, message", [
    (["--tau", "0"], "--tau must be a positive number"),
    (["--tau", "-1"], "--tau must be a positive number"),
    (["--tau", "nan"], "--tau must be a positive number"),
    (["--beam-width", "0"], "--beam-width must be between"),
    (["--beam-width", "1000"], "--beam-width must be between"),
    (["--neighbors", "-1"], "--neighbors must be between"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--topk", "0"], "--topk must be at least 1"),
    (["--max-tokens", "500"], "exceeds the decoder's"),
    (["--num-shard", "2"], "unknown option --num-shard"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--device", "tpu"], "--device tpu: not a torch device"),
    (["--device", "cuda:999"], "--device cuda:999: "),  # no GPU here, or fewer than a thousand
])
def test_bad_options_are_one_line_before_any_work(models, archive, tmp_path, capsys, flags, message):
    root, _, _ = archive
    output = tmp_path / "captions"
    code = cli.main(["caption", "--input", str(root / "00000.tar"), "--output", str(output), *model_flags(models),
                     *flags])
    error = capsys.readouterr().err
    assert code == 1 and message in error and error.count("\n") == 1, error
    assert not output.exists()  # refused before anything was written


def test_bad_inputs_and_models_are_refused_in_one_line(models, archive, tmp_path, capsys):
    root, _, _ = archive
    (tmp_path / "a-file").write_text("x")
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "decoder.json").write_text((open(f"{models['decoder']}/decoder.json").read()))
    weights = bytearray(open(f"{models['decoder']}/decoder.safetensors", "rb").read())
    weights[-1] ^= 1  # same header and shapes, one weight changed
    (swapped / "decoder.safetensors").write_bytes(bytes(weights))
    cases = [
        (["--input", str(root / "nothing-*.tar")], "no input files match"),
        (["--output", str(tmp_path / "a-file")], "is a file, not a directory"),
        (["--decoder", str(swapped)], "not the ones decoder.json describes"),
        (["--clip-checkpoint", str(tmp_path / "missing.safetensors")], "CLIP checkpoint not found"),
    ]
    base = {"--input": str(root / "00000.tar"), "--output": str(tmp_path / "out"), "--decoder": models["decoder"],
            "--memory": models["memory"], "--clip-model": "toy-clip"}
    for flags, message in cases:
        argv = {**base, **dict(zip(flags[::2], flags[1::2]))}
        code = cli.main(["caption", *[part for pair in argv.items() for part in pair]])
        error = capsys.readouterr().err
        assert code == 1 and message in error and error.count("\n") == 1, (flags, error)


def test_rerun_is_incremental_and_refuses_other_settings(models, archive, tmp_path):
    root, good, _ = archive
    output = tmp_path / "captions"
    first = caption.run(["--input", str(root / "00000.tar"), "--output", str(output), *model_flags(models)])
    before = caption_rows(output)
    again = caption.run(["--input", str(root / "00000.tar"), "--output", str(output), *model_flags(models)])
    assert again["this_run"] == {**again["this_run"], "captioned_shards": 0, "skipped_shards": 1}
    assert caption_rows(output) == before and again["counts"] == first["counts"]
    grown = caption.run(["--input", f"{root}/0000{{0..1}}.tar", "--output", str(output), *model_flags(models)])
    assert grown["this_run"]["captioned_shards"] == 1 and grown["this_run"]["skipped_shards"] == 1
    assert len(caption_rows(output)) == len(good)
    with pytest.raises(Exception, match="other models or settings"):
        caption.run(["--input", str(root / "00000.tar"), "--output", str(output), *model_flags(models),
                     "--tau", "0.05"])


@pytest.mark.slow
def test_killed_run_resumes_to_the_rows_of_a_clean_run(models, tmp_path):
    """SIGKILL while shards are being captioned, rerun, and compare with an uninterrupted run."""
    shards = tmp_path / "shards"
    shards.mkdir()
    good, _ = good_and_bad_images()
    payload = good["000000000"]
    for number in range(SHARDS):
        with tarfile.open(shards / f"{number:05d}.tar", "w") as tar:
            for index in range(6):
                add_member(tar, f"{number:05d}{index:04d}.jpg", payload)
    argv = ["--input", str(shards / "*.tar"), *model_flags(models), "--strategy", "pd", "--strategy", "vd",
            "--batch-size", "4"]
    command = [sys.executable, "-m", "pipelines.caption", *argv, "--output"]  # one torch set-up for every run
    clean = tmp_path / "clean"
    subprocess.run([*command, str(clean)], check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((killed / "done").glob("*.json") if (killed / "done").exists() else []):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    committed = len(list((killed / "done").glob("*.json")))
    assert 1 <= committed < SHARDS, committed  # killed mid-run
    assert not (killed / "manifest.json").exists()
    rerun = subprocess.run([*command, str(killed)], check=True, capture_output=True, text=True, timeout=600)
    assert f"({SHARDS - committed} captioned now, {committed} already done)" in rerun.stdout, rerun.stdout
    assert caption_rows(killed) == caption_rows(clean)
    assert not [p for p in killed.rglob("*") if ".partial-" in p.name or ".tmp-" in p.name]
    assert json.loads((killed / "manifest.json").read_text())["counts"]["captioned"] == SHARDS * 6


@pytest.mark.slow
def test_real_sizes_vit_b_32_and_the_official_decoder(tmp_path):
    """open_clip's ViT-B-32 (random weights saved as a local checkpoint, 224-px preprocessing, 512-d) and
    the official-size decoder, end to end through build-memory and caption."""
    from safetensors.torch import save_file

    from decap_core.clip import create_model
    from pipelines import build_memory

    model, _ = create_model("ViT-B-32")
    checkpoint = tmp_path / "vit-b-32.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    del model
    texts = [f"a photo of a {c} {t}" for c in ("red", "green", "blue", "small") for t in ("dog", "car", "house")]
    (tmp_path / "corpus.txt").write_text("\n".join(texts) + "\n")
    clip_flags = ["--clip-model", "ViT-B-32", "--clip-checkpoint", str(checkpoint)]
    memory = build_memory.run(["--input", str(tmp_path / "corpus.txt"), "--output", str(tmp_path / "memory"),
                               "--num-shards", "1", *clip_flags])
    assert memory["dim"] == 512
    random_decoder(tmp_path / "decoder", texts, memory["clip_fingerprint"], "official", 512)
    images = tmp_path / "images"
    images.mkdir()
    for index, size in enumerate([(640, 480), (300, 500), (224, 224)]):
        Image.new("RGB", size, (40 * index, 120, 200)).save(images / f"photo-{index}.jpg")
    manifest = caption.run(["--input", str(images / "*.jpg"), "--output", str(tmp_path / "captions"), *clip_flags,
                            "--decoder", str(tmp_path / "decoder"), "--memory", str(tmp_path / "memory"),
                            "--strategy", "pd", "--strategy", "clipre", "--max-tokens", "12"])
    rows = caption_rows(tmp_path / "captions")
    assert manifest["counts"] == {**manifest["counts"], "captioned": 3, "dead": 0, "rows": 6}
    assert {r["key"] for r in rows} == {"photo-0", "photo-1", "photo-2"}
    assert all(r["clip_fingerprint"] == memory["clip_fingerprint"] for r in rows)
    assert all(r["caption"] in texts for r in rows if r["strategy"] == "clipre")
