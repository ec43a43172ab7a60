"""build-memory and make-shards on Beam's DaskRunner, against a LocalCluster of two worker processes:
the same files as on the in-process FnApiRunner, byte for byte.

A Dask worker runs its tasks with one torch thread (whatever OMP_NUM_THREADS says), and torch
encodes a batch of one short sentence a little differently with one thread than with two (up to
2e-7 in float32; one float16 step in 6 of 90 shard embeddings here): this process encodes with
one thread too while it runs the FnApiRunner.
"""
import gzip
import json

import apache_beam.runners.dask.dask_runner  # noqa: F401  (registers --dask_client_address with Beam's options)
import distributed
import pytest
import torch

from decap_core.toy import world as toyworld
from pipelines import build_memory, make_train_shards

OVERLONG = " ".join(["circle"] * 40)  # more tokens than toy-clip's 32-token context
VOCAB_PATHS = ("train_pattern", "validation_pattern")  # name the output directory, which differs by runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two files that share sentences, with an empty line, a line past the context and broken JSON."""
    root = tmp_path_factory.mktemp("corpus")
    good = list(dict.fromkeys(toyworld.sentences(2, "memory", 90)))
    (root / "a.txt").write_text("\n".join(good[:50]) + "\n\n" + OVERLONG + "\n")
    rows = [json.dumps({"text": text}) for text in good[40:]] + ["{not json"]
    with gzip.open(root / "b.jsonl.gz", "wt") as handle:
        handle.write("\n".join(rows) + "\n")
    return root, good


def on_both_runners(pipeline, argv, root, cluster):
    """Run ``pipeline`` into ``root/fnapi`` and ``root/dask``; the files each run wrote."""
    written = {}
    threads = torch.get_num_threads()
    for name, runner in (("fnapi", ["--runner=FnApiRunner"]),
                         ("dask", ["--runner=DaskRunner", f"--dask_client_address={cluster}"])):
        torch.set_num_threads(1)
        try:
            pipeline.run([*argv, "--output", str(root / name), *runner])
        finally:
            torch.set_num_threads(threads)
        written[name] = {p.relative_to(root / name).as_posix(): p.read_bytes()
                         for p in sorted((root / name).rglob("*")) if p.is_file()}
    return written["fnapi"], written["dask"]


@pytest.fixture(scope="module")
def memories(corpus, cluster, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("memories")
    argv = ["--input", str(root / "*.txt"), str(root / "*.jsonl.gz"), "--num-shards", "3", "--batch-size", "16"]
    return out, on_both_runners(build_memory, argv, out, cluster)


def test_build_memory_writes_the_same_files(corpus, memories):
    _, good = corpus
    _, (fnapi, dask) = memories
    assert sorted(dask) == sorted(fnapi)
    assert [name for name in fnapi if dask[name] != fnapi[name]] == []  # the manifest names no output path
    manifest = json.loads(fnapi["manifest.json"])
    assert manifest["rows"] == len(good) and len(manifest["shards"]) == 3
    assert manifest["counts"]["dead_by_reason"] == {"empty": 1, "exceeds_clip_context": 1, "invalid_json": 1}
    assert manifest["counts"]["duplicates"] == 10


def compare_shards(fnapi, dask):
    assert sorted(dask) == sorted(fnapi)
    assert [name for name in fnapi if name != "vocab.json" and dask[name] != fnapi[name]] == []
    vocab = {runner: json.loads(files["vocab.json"]) for runner, files in (("fnapi", fnapi), ("dask", dask))}
    for key in VOCAB_PATHS:
        assert vocab["dask"].pop(key).replace("/dask/", "/fnapi/") == vocab["fnapi"].pop(key)
    assert vocab["dask"] == vocab["fnapi"]
    return vocab["fnapi"]


def test_make_shards_from_corpora_writes_the_same_files(corpus, cluster, tmp_path):
    root, good = corpus
    argv = ["--input", str(root / "*.txt"), str(root / "*.jsonl.gz"), "--samples-per-shard", "20",
            "--validation-samples", "10", "--batch-size", "16"]
    vocab = compare_shards(*on_both_runners(make_train_shards, argv, tmp_path, cluster))
    assert vocab["samples"] == {"train": len(good) - 10, "valid": 10} and vocab["dead"] == 3


def test_make_shards_from_a_memory_writes_the_same_files(memories, cluster, tmp_path):
    out, _ = memories
    argv = ["--memory", str(out / "fnapi"), "--samples-per-shard", "25", "--validation-samples", "5",
            "--max-tokens", "12"]
    vocab = compare_shards(*on_both_runners(make_train_shards, argv, tmp_path, cluster))
    assert vocab["dead"] > 0 and vocab["samples"]["train"] > 25


def test_caption_writes_the_same_captions(memories, cluster, tmp_path):
    """The captioning pipeline on Dask: the same captions, dead letters and counts as on the FnApiRunner."""
    from caption_fixtures import good_and_bad_images, random_decoder, write_img2dataset_shard

    from pipelines import caption

    memory_root, _ = memories
    decoder = random_decoder(tmp_path / "decoder", toyworld.sentences(2, "memory", 90), "toy-clip:random")
    good, bad = good_and_bad_images()
    archive = tmp_path / "archive"
    archive.mkdir()
    write_img2dataset_shard(archive / "00000.tar", dict(list(good.items())[:5]), {})
    write_img2dataset_shard(archive / "00001.tar", dict(list(good.items())[5:]) | {k: p for k, (p, _) in bad.items()},
                            {k: "png" for k in bad})
    argv = ["--input", str(archive / "*.tar"), "--decoder", decoder, "--memory", str(memory_root / "fnapi"),
            "--strategy", "pd", "--strategy", "clipre", "--batch-size", "4"]
    fnapi, dask = on_both_runners(caption, argv, tmp_path, cluster)
    assert sorted(dask) == sorted(fnapi)
    varying = [name for name in fnapi if name.startswith("done/") or name == "manifest.json"]  # they hold timings
    assert [name for name in fnapi if name not in varying and dask[name] != fnapi[name]] == []
    strip = lambda text: {k: v for k, v in json.loads(text).items() if k not in ("seconds", "this_run")}  # noqa: E731
    assert [strip(dask[name]) for name in varying] == [strip(fnapi[name]) for name in varying]
    manifest = json.loads(fnapi["manifest.json"])
    assert manifest["counts"]["captioned"] == len(good) and manifest["counts"]["dead"] == len(bad)
