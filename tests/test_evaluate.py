"""decap evaluate: the metric wrappers against pycocoevalcap itself and a hand count, the references'
formats and errors, and the command on a captions output of the real pipeline (random-weights models)."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from caption_fixtures import build_memory_and_decoder
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from decap_core import caption_metrics, captions_files, references
from decap_core.clip import load_clip
from decap_core.errors import DecapError
from decap_core.toy import archive as toy_archive
from decap_core.toy import evaluation
from decap_core.toy import world as toyworld
from jobs import cli
from pipelines import caption

REFERENCES = {"1": ["a red circle next to a blue square", "a blue square"],
              "2": ["a green star", "the green star"],
              "3": ["a large yellow cross"]}
CANDIDATES = {"1": "a red circle and a blue square", "2": "a green star", "3": "a small yellow cross"}


def test_bleu_and_cider_d_wrappers_return_what_pycocoevalcap_returns_and_bleu1_by_hand():
    ours = caption_metrics.coco_scores(REFERENCES, CANDIDATES, meteor=False)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in CANDIDATES.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    assert [ours[name] for name in caption_metrics.BLEU_NAMES] == bleu
    assert ours["CIDEr-D"] == cider
    # Unigrams, clipped by the most a single reference holds: image 1 matches a, a, red, circle, blue,
    # square (not "and") of 7; image 2 all 3 of 3; image 3 a, yellow, cross of 4: 12 of 14. The
    # reference length closest to each candidate: 8 (7 words against 8 and 3), 3 and 4, so 15 against
    # 14 candidate words, and the brevity penalty is exp(1 - 15/14).
    assert ours["BLEU-1"] == pytest.approx(12 / 14 * math.exp(1 - 15 / 14), rel=1e-9)
    assert 0 < ours["ROUGE-L"] < 1 and "METEOR" not in ours


def test_tokenizing_keeps_javas_progress_line_off_the_terminal(capfd):
    tokens = caption_metrics.tokenize({"1": ["A red circle, next to a blue square."]})
    assert tokens == {"1": ["a red circle next to a blue square"]}
    assert "PTBTokenizer" not in capfd.readouterr().err


def test_clip_score_and_ref_clip_score_follow_hessel_et_al():
    assert caption_metrics.clip_scores([0.3, -0.2]).tolist() == pytest.approx([0.75, 0.0])
    scores = caption_metrics.ref_clip_scores(np.array([0.75, 0.0, 0.5]), np.array([0.5, 0.9, -0.1]))
    assert scores.tolist() == pytest.approx([2 * 0.75 * 0.5 / 1.25, 0.0, 0.0])


def test_coco_references_match_by_file_name_stem_and_by_id(tmp_path):
    path = tmp_path / "captions_val.json"
    path.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "COCO_val_000007.jpg"}, {"id": 8, "file_name": "b.png"},
                   {"id": 9, "file_name": "c.png"}],
        "annotations": [{"image_id": 7, "caption": "A dog."}, {"image_id": 7, "caption": "a brown dog"},
                        {"image_id": 8, "caption": "a cat"}]}))
    refs = references.read_references(str(path))
    matched = references.match(refs, ["COCO_val_000007", "8"])
    assert {k: (r.image_id, r.captions) for k, r in matched.references.items()} == {
        "COCO_val_000007": (7, ("A dog.", "a brown dog")), "8": (8, ("a cat",))}
    assert matched.unused == 0 and refs.images == 2  # image 9 has no annotation: no references
    with pytest.raises(DecapError, match="1 of 2 captioned keys have no reference"):
        references.match(refs, ["8", "missing"])
    partial = references.match(refs, ["8", "missing"], allow_unmatched=True)
    assert partial.unmatched == ("missing",) and partial.unused == 1


@pytest.mark.parametrize("document, message", [
    ({"images": [{"id": 1}], "annotations": [{"image_id": 2, "caption": "x"}]}, "image_id 2, which is not among"),
    ({"images": [{"id": 1}], "annotations": [{"image_id": 1}]}, "annotation 0 has no caption"),
    ({"images": [{"id": 1}, {"id": 1}], "annotations": []}, "image id 1 appears twice"),
    ({"annotations": []}, "needs the lists 'images' and 'annotations'"),
])
def test_bad_coco_references_are_one_clear_error(tmp_path, document, message):
    path = tmp_path / "refs.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DecapError, match=message):
        references.read_references(str(path))


def test_keyed_references_read_jsonl_and_refuse_bad_lines(tmp_path):
    good = tmp_path / "refs.jsonl"
    good.write_text('{"key": "a", "captions": ["x", "y"]}\n\n{"key": "b", "caption": "z"}\n'
                    '{"key": "c", "captions": []}\n')
    refs = references.read_references(str(good))
    assert {k: r.captions for k, r in refs.by_key.items()} == {"a": ("x", "y"), "b": ("z",)}
    assert refs.skipped_empty == 1
    twice = '{"key": "a", "captions": ["x"]}\n{"key": "a", "captions": ["y"]}\n'
    for text, message in [(twice, "line 2: key 'a' appears twice"),
                          ('{"key": "a", "captions": [1]}\n', "must be a list of strings"),
                          ('{"key": "a", "captions": ["x"]\n', "line 1: not JSON")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(DecapError, match=message):
            references.read_references(str(bad))
    with pytest.raises(DecapError, match="not found"):
        references.read_references(str(tmp_path / "absent.jsonl"))
    with pytest.raises(DecapError, match="name a COCO .json"):
        references.read_references(str(tmp_path / "refs.csv"))


@pytest.fixture(scope="module")
def run_output(tmp_path_factory):
    """6 toy scenes captioned by the real pipeline (pd and vd) twice: from their images in a toy archive
    (``captions``), and from the CLIP text embeddings of one of their captions, given as image embeddings
    (``captions-emb``: a perfect CLIP, so that CLIPScore is not 0 with random weights); 3 references a scene."""
    root = tmp_path_factory.mktemp("evaluate")
    models = build_memory_and_decoder(root)
    scenes = toyworld.scenes(5, "eval", 6)
    toy_archive.write_scene_shards(scenes, str(root / "archive"), per_shard=3, size=64)
    rng = toyworld.split_rng(9, "eval")
    keys = [f"{i // 3:05d}{i % 3:04d}" for i in range(len(scenes))]  # write_scene_shards' keys
    refs = {key: [toyworld.caption(scene, rng) for _ in range(3)] for key, scene in zip(keys, scenes)}
    (root / "refs.jsonl").write_text("".join(json.dumps({"key": k, "captions": v}) + "\n" for k, v in refs.items()))
    queries = load_clip("toy-clip").encode_text([toyworld.caption(scene, rng) for scene in scenes]).numpy()
    pq.write_table(pa.table({"key": keys, "embedding": queries.tolist()}), root / "embeddings.parquet")
    for inputs, output in ((f"{root}/archive/*.tar", "captions"), (f"{root}/embeddings.parquet", "captions-emb")):
        caption.run(["--input", inputs, "--output", str(root / output), "--decoder", models["decoder"],
                     "--memory", models["memory"], "--clip-model", "toy-clip", "--strategy", "pd", "--strategy", "vd"])
    truths = {key: scene.object_set() for key, scene in zip(keys, scenes)}
    return root, refs, truths


@pytest.mark.parametrize("output", ["captions", "captions-emb"])
def test_decap_evaluate_on_a_pipeline_output(run_output, tmp_path, output):
    root, refs, truths = run_output
    code = cli.main(["evaluate", "--captions", str(root / output), "--references", str(root / "refs.jsonl"),
                     "--clip-model", "toy-clip", "--toy-truth", f"{root}/archive/*.parquet",
                     "--output", str(tmp_path / "scores")])
    assert code == 0
    report = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    rows = captions_files.read_captions(str(root / output)).to_pylist()
    clip = load_clip("toy-clip")
    assert set(report["strategies"]) == {"pd", "vd"}
    for strategy, result in report["strategies"].items():
        chosen = sorted((r for r in rows if r["strategy"] == strategy), key=lambda r: r["key"])
        assert result["scored"] == result["rows"] == len(refs) and result["unmatched"] == 0
        assert all(0 <= result[name] <= 1 for name in ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L"))
        assert result["CIDEr-D"] >= 0
        assert result["CLIPScore"] == pytest.approx(np.mean([2.5 * max(r["clip_score"], 0) for r in chosen]))
        text = clip.encode_text([r["caption"] for r in chosen]).numpy()
        best = [float((clip.encode_text(refs[r["key"]]).numpy() @ t).max()) for t, r in zip(text, chosen)]
        clip_s = [2.5 * max(r["clip_score"], 0) for r in chosen]
        harmonic = [2 * c * max(b, 0) / (c + max(b, 0)) if c + max(b, 0) > 0 else 0 for c, b in zip(clip_s, best)]
        assert result["RefCLIPScore"] == pytest.approx(np.mean(harmonic), abs=1e-5)
        assert (result["CLIPScore"] > 0.5 and result["RefCLIPScore"] > 0.5) == (output == "captions-emb")
        # the toy truth parsed from the archive's captions is the scenes' own object sets
        expected = evaluation.object_scores([r["caption"] for r in chosen], [truths[r["key"]] for r in chosen])
        assert result["toy"] == expected
        results = json.loads((tmp_path / "scores" / f"results-{strategy}.json").read_text())
        assert sorted((r["image_id"], r["caption"]) for r in results) == [(r["key"], r["caption"]) for r in chosen]
    table = (tmp_path / "scores" / "metrics.md").read_text().splitlines()
    assert table[0].startswith("| strategy | tau | scored | BLEU-1") and len(table) == 4
    assert table[2].startswith("| pd | 0.01 | 6 |") and table[3].startswith("| vd | - | 6 |")


def test_decap_evaluate_refuses_unmatched_keys_unless_asked_and_counts_them(run_output, tmp_path, capsys):
    root, refs, _ = run_output
    partial = tmp_path / "partial.jsonl"
    partial.write_text("".join(json.dumps({"key": k, "captions": v}) + "\n" for k, v in list(refs.items())[1:]))
    flags = ["evaluate", "--captions", str(root / "captions"), "--references", str(partial), "--no-meteor",
             "--output", str(tmp_path / "scores")]
    assert cli.main(flags) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("decap evaluate: error: 1 of 6 captioned keys have no reference") and "\n" not in error
    assert not (tmp_path / "scores").exists()
    assert cli.main([*flags, "--allow-unmatched"]) == 0
    report = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    assert {s: (r["scored"], r["unmatched"], r["RefCLIPScore"]) for s, r in report["strategies"].items()} == {
        "pd": (5, 1, None), "vd": (5, 1, None)}
    assert "METEOR" not in report["strategies"]["pd"]
    assert cli.main([*flags, "--clip-model", "RN50"]) == 1
    assert "made with CLIP toy-clip:random, not RN50:random" in capsys.readouterr().err


def test_decap_evaluate_puts_an_out_of_distribution_set_beside_the_first(run_output, tmp_path, capsys):
    root, refs, truths = run_output
    flags = ["evaluate", "--captions", str(root / "captions"), "--references", str(root / "refs.jsonl"),
             "--toy-truth", f"{root}/archive/*.parquet", "--no-meteor", "--output", str(tmp_path / "scores")]
    assert cli.main([*flags, "--ood-captions", str(root / "captions-emb")]) == 1
    assert capsys.readouterr().err.strip() == "decap evaluate: error: --ood-captions needs --ood-references"
    ood = ["--ood-captions", str(root / "captions-emb"), "--ood-references", str(root / "refs.jsonl"),
           "--ood-toy-truth", f"{root}/archive/*.parquet"]
    assert cli.main([*flags, *ood]) == 0
    report = json.loads((tmp_path / "scores" / "metrics.json").read_text())
    alone = json.loads(json.dumps(report["strategies"]))
    second = report["out_of_distribution"]["strategies"]
    assert set(second) == {"pd", "vd"} and report["out_of_distribution"]["captions"] == str(root / "captions-emb")
    rows = captions_files.read_captions(str(root / "captions-emb")).to_pylist()
    for strategy, result in second.items():
        chosen = [r for r in rows if r["strategy"] == strategy]
        expected = evaluation.object_scores([r["caption"] for r in chosen], [truths[r["key"]] for r in chosen])
        assert result["toy"] == expected and result["scored"] == len(refs)
        assert (tmp_path / "scores" / f"results-ood-{strategy}.json").exists()
    text = (tmp_path / "scores" / "metrics.md").read_text()
    robustness = text.split("Robustness (in distribution / out of distribution):")[1].strip().splitlines()
    assert robustness[0] == "| strategy | CIDEr-D | BLEU-4 | CLIPScore | object_recall |"
    pd_cells = robustness[2].split(" | ")
    assert pd_cells[0] == "| pd" and pd_cells[4].rstrip(" |") == (
        f"{alone['pd']['toy']['object_recall']:.1%} / {second['pd']['toy']['object_recall']:.1%}")
