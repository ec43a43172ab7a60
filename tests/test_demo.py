"""The main job's command, reusing the session's briefly trained models (training is tested apart)."""
import json
import shutil
import subprocess
import sys

from decap_core import captions_files


def test_demo_runs_end_to_end_and_reports(toy_models, tmp_path):
    work = tmp_path / "demo"
    (work / "clip").mkdir(parents=True)
    shutil.copy(toy_models["clip"], work / "clip" / "toy-clip.safetensors")
    shutil.copytree(toy_models["decoder"], work / "decoder")
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "demo", "--workdir", str(work), "--eval-images", "24",
         "--memory-sentences", "400", "--taus", "0.01,0.1", "--validation-images", "24"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reusing the toy CLIP" in result.stdout and "reusing the decoder" in result.stdout
    assert (work / "archive" / "00000.tar").exists() and (work / "archive" / "00000.parquet").exists()
    for strategy in ("pd", "nnd", "clipre", "vd"):
        assert f"\n{strategy} " in result.stdout
    for name in ("captions", "captions-ood"):  # in- and out-of-distribution held-out sets
        captions = captions_files.read_captions(str(work / name)).to_pylist()
        assert len(captions) == 24 * 4 and {r["strategy"] for r in captions} == {"pd", "nnd", "clipre", "vd"}
    assert "in distribution" in result.stdout and "out of distribution" in result.stdout
    report = json.loads((work / "report.json").read_text())
    assert [row["strategy"] for row in report["ood_table"]] == ["pd", "nnd", "clipre", "vd"]
    assert report["nuisances"] == {"in distribution": "web", "out of distribution": "web-ood"}
    assert 0 <= report["memory_coverage"] <= 1
    assert {row["tau"] for row in report["table"] if row["strategy"] == "pd"} == {0.01, 0.1}
    assert (work / "tau_sweep.png").stat().st_size > 10_000
    page = work / "report" / "report.html"
    assert f"report: {page}" in result.stdout and page.stat().st_size > 50_000  # the demo ends with decap report
