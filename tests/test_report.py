"""decap report on a captions output of the real pipeline (random-weights models): the page in headless
Chromium (every image loads, no console errors, a screenshot), its numbers against the run's rows and
against the gap computed here, and bad inputs as one line."""
import json
import shutil
from pathlib import Path

import pytest
from caption_fixtures import build_memory_and_decoder, random_decoder

from decap_core import caption_metrics, captions_files, metrics, projection, references
from decap_core.clip import load_clip
from decap_core.memory_files import load_memory
from decap_core.toy import archive as toy_archive
from decap_core.toy import world as toyworld
from jobs import cli
from pipelines import caption

STRATEGIES = ["pd", "nnd", "clipre", "vd"]
TAUS = (0.01, 0.05)
FRACTIONS = (0.5, 1.0)
SAMPLE, EXAMPLES = 10, 3
SCREENSHOT_COPY = Path("/tmp/mine/report-screenshot.png")  # where the lead looks at the page


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """12 toy scenes in two img2dataset tars, captioned by the pipeline under every strategy, and the report
    of 10 of them."""
    root = tmp_path_factory.mktemp("report")
    models = build_memory_and_decoder(root)
    toy_archive.write_scene_shards(toyworld.scenes(7, "eval", 12), str(root / "archive"), per_shard=6, size=64)
    caption.run(["--input", f"{root}/archive/*.tar", "--output", str(root / "captions"), "--decoder",
                 models["decoder"], "--memory", models["memory"], "--clip-model", "toy-clip",
                 *[part for strategy in STRATEGIES for part in ("--strategy", strategy)]])
    flags = report_flags(root, models)
    assert cli.main([*flags, "--output", str(root / "report")]) == 0
    return root, models, flags


def report_flags(root, models):
    return ["report", "--captions", str(root / "captions"), "--memory", models["memory"], "--decoder",
            models["decoder"], "--toy-truth", f"{root}/archive/*.parquet", "--sample", str(SAMPLE),
            "--examples", str(EXAMPLES), "--taus", ",".join(map(str, TAUS)),
            "--memory-fractions", ",".join(map(str, FRACTIONS))]


def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them)")
    return browser, driver


def test_the_page_loads_in_headless_chromium_with_every_image_and_no_console_error(run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = chromium_paths()
    root, _, _ = run
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)  # no Selenium Manager
    try:
        driver.get((root / "report" / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])")
        console = driver.get_log("browser")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, height)
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert len(images) == 3 + EXAMPLES  # the gap map, two ablation figures, one thumbnail per example
    assert all(complete and width > 0 and src == "data:image/png;base64," for _, complete, width, src in images), images
    assert console == []
    assert shot.stat().st_size > 10_000
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SCREENSHOT_COPY)


def test_the_numbers_are_the_runs_own(run):
    root, models, _ = run
    numbers = json.loads((root / "report" / "report.json").read_text())
    keys = numbers["keys"]
    rows = captions_files.read_captions(str(root / "captions")).to_pylist()
    assert len(keys) == SAMPLE and set(keys) < {row["key"] for row in rows}
    # captioned again in process at the run's own setting, every strategy writes what the pipeline wrote
    assert numbers["agreement"] == {strategy: 1.0 for strategy in STRATEGIES}
    # the gap, computed here from the archive's images and the toy truth's captions
    clip = load_clip("toy-clip")
    truth = references.read_references(f"{root}/archive/*.parquet")
    images = {key: toyworld.render(scene, 64) for key, scene in
              zip([f"{i // 6:05d}{i % 6:04d}" for i in range(12)], toyworld.scenes(7, "eval", 12))}
    image = clip.encode_images([images[key] for key in keys])
    text = clip.encode_text([truth.by_key[key].captions[0] for key in keys])
    projected = projection.project_pd(image, load_memory(models["memory"]).chunks(), projection.DEFAULT_TAU)
    for name, points in (("image", image), ("projected", projected)):
        expected = metrics.modality_gap(points, text)
        assert numbers["gap"][name]["centroid_distance"] == pytest.approx(expected["centroid_distance"], abs=1e-4)
        assert numbers["gap"][name]["matched_cosine"] == pytest.approx(expected["matched_cosine"], abs=1e-4)
    # the sweeps: pd at each tau and baselines flat; pd, nnd, clipre at each memory size and vd flat
    tau_rows, memory_rows = numbers["ablations"]["tau"], numbers["ablations"]["memory"]
    assert [(r["strategy"], r["x"]) for r in tau_rows] == [
        ("pd", t) for t in TAUS] + [(s, None) for s in STRATEGIES[1:]]
    assert [(r["strategy"], r["x"]) for r in memory_rows] == [
        (s, f) for s in STRATEGIES[:3] for f in FRACTIONS] + [("vd", None)]
    # the run's setting (tau 0.01, whole memory) scores what the pipeline's rows score for these keys
    run_pd = next(r for r in tau_rows if r["x"] == projection.DEFAULT_TAU)
    written = {row["key"]: row["caption"] for row in rows if row["strategy"] == "pd"}
    expected = caption_metrics.coco_scores({key: list(truth.by_key[key].captions) for key in keys},
                                           {key: written[key] for key in keys}, meteor=False)
    assert run_pd["CIDEr-D"] == pytest.approx(expected["CIDEr-D"])
    assert next(r for r in memory_rows if r["strategy"] == "pd" and r["x"] == 1.0)["CIDEr-D"] == run_pd["CIDEr-D"]
    page = (root / "report" / "report.html").read_text()
    assert all(f">{key}<" in page for key in keys[:EXAMPLES]) and f">{keys[EXAMPLES]}<" not in page
    assert {p.name for p in (root / "report").iterdir()} == {
        "report.html", "report.json", "gap.png", "ablation-tau.png", "ablation-memory.png"}


def test_bad_inputs_are_one_line_and_write_no_page(run, tmp_path, capsys):
    root, models, flags = run
    other_decoder = random_decoder(tmp_path / "other-decoder", ["a red circle", "a blue square"])
    moved = tmp_path / "captions-moved"
    shutil.copytree(root / "captions", moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    for shard in manifest["shards"]:
        shard["input_url"] = str(tmp_path / "gone" / Path(shard["input_url"]).name)
    (moved / "manifest.json").write_text(json.dumps(manifest))
    damaged = tmp_path / "captions-damaged"
    shutil.copytree(root / "captions", damaged)
    first = sorted(damaged.glob("captions-*.parquet"))[0]
    first.write_bytes(first.read_bytes()[:100])

    def replaced(flag, value):
        changed = list(flags)
        changed[changed.index(flag) + 1] = value
        return changed

    cases = [
        (replaced("--captions", str(tmp_path)), "is not a finished captions output"),
        (replaced("--captions", str(damaged)), f"captions {damaged} cannot be read"),
        (replaced("--decoder", other_decoder), "was captioned with decoder"),
        (replaced("--captions", str(moved)), "--images names where they are now"),
        ([*replaced("--captions", str(moved)), "--images", f"{root}/archive/00000.tar"],
         "of the 10 sampled keys are not in the images read"),
        ([*flags, "--images", str(tmp_path / "nothing-*.tar")], "no input files match"),
        ([part for part in flags if part not in ("--toy-truth", f"{root}/archive/*.parquet")],
         "give --references or --toy-truth"),
        (replaced("--sample", "0"), "--sample must be at least 1"),
        (replaced("--taus", "0,0.01"), "every tau must be above 0"),
        (replaced("--memory-fractions", "0.5,2"), "a memory fraction must be in (0, 1]"),
    ]
    for argv, message in cases:
        output = tmp_path / "out"
        assert cli.main([*argv, "--output", str(output)]) == 1, message
        error = capsys.readouterr().err
        lines = [line for line in error.splitlines() if line.startswith("decap report: error: ")]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in error, (message, error)
        assert not (output / "report.html").exists()
