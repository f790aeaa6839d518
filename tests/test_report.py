"""The report: folder contents, atomic writes, a real headless browser, the CLI and bad input."""

import csv
import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sparsecnn import analysis as A
from sparsecnn.cli.main import main
from sparsecnn.report import FIGURES, write_report

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def _model(seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(32, 24, 3, stride=2), torch.nn.ReLU(),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 4))
    with torch.no_grad():
        for conv in (m[2], m[4]):
            w = conv.weight
            w[w.abs() < w.abs().flatten().quantile(0.8)] = 0
    return m


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    m = _model()
    x = torch.randn(12, 3, 10, 10)
    labels = m(x).argmax(1).detach()
    d = A.analyse_model(m, inputs=x, labels=labels, input_source="random test inputs", threads=2,
                        block_tile=(8, 8), repeats=2, eval_images=12,
                        sweep_fractions=(0.0, 0.5, 0.9))
    out = tmp_path_factory.mktemp("rep") / "report"
    write_report(d, out, {"title": "unit-test report", "weights": "synthetic"})
    return out, d


def test_folder_contents(report_dir):
    out, d = report_dir
    names = {p.name for p in out.iterdir()}
    assert {"index.html", "report.json", "summary.csv", "load_balance.csv", "threshold_sweep.csv",
            "ineffectual.csv", "hybrid.csv"} <= names
    payload = json.loads((out / "report.json").read_text())
    figs = payload["figures"]
    # every figure whose data exists is there as PNG and SVG (break-even needs --bench)
    expected = {n for n, _ in FIGURES} - {"break_even"}
    if all("unavailable" in h for h in d["hybrid"].values()):
        expected -= {"hybrid"}
    assert set(figs) == expected
    for n in figs:
        assert (out / f"{n}.png").stat().st_size > 5000
        svg = (out / f"{n}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["0", "2", "4", "total"]
    assert int(rows[-1]["nnz"]) == sum(int(r["nnz"]) for r in rows[:-1])
    assert payload["meta"]["weights"] == "synthetic"
    assert payload["summary"][1]["nnz"] == int((d["weights"]["2"] != 0).sum())


def test_encodings_table_and_page(report_dir):
    """The accelerators' index encodings reach encodings.csv and the page, equal to
    analysis.index_encodings of each weight (1 PE and 64 PEs)."""
    from sparsecnn.analysis import index_encodings

    out, d = report_dir
    with open(out / "encodings.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["layer"] for r in rows] == [*d["weights"], "(total)"]
    for r in rows[:-1]:
        e, e64 = index_encodings(d["weights"][r["layer"]]), \
            index_encodings(d["weights"][r["layer"]], n_pe=64)
        for key in ("csr", "bitmap", "step", "eie"):
            assert int(r[f"{key}_bytes"]) == e[key]["bytes"]
        assert int(r["eie_64pe_bytes"]) == e64["eie"]["bytes"]
        assert float(r["eie_vs_csr"]) == pytest.approx(e["eie"]["vs_csr"])
    assert int(rows[-1]["csr_bytes"]) == sum(int(r["csr_bytes"]) for r in rows[:-1])
    page = (out / "index.html").read_text()
    assert "Accelerators' index encodings" in page and "Cambricon-X step KiB" in page


def test_html_is_self_contained(report_dir):
    out, _ = report_dir
    page = (out / "index.html").read_text()
    import plotly.offline

    bundle = plotly.offline.get_plotlyjs()
    assert bundle in page                                     # plotly.js inlined ...
    ours = page.replace(bundle, "")
    assert not re.search(r"<script[^>]+src=", ours)           # ... and nothing fetched
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", ours)
    assert page.count("Plotly.newPlot") >= 8
    assert "synthetic" in page and "random test inputs" in page


def test_atomic_replace_and_refuse_foreign_folder(report_dir, tmp_path):
    _, d = report_dir
    out = tmp_path / "r"
    write_report(d, out, {}, static=False)
    (out / "stale.txt").write_text("old")
    write_report(d, out, {}, static=False)                  # replaces a previous report
    assert not (out / "stale.txt").exists() and (out / "index.html").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r"]    # no temp folder left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a sparsecnn report"):
        write_report(d, foreign, {}, static=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_analyse_model_bad_input():
    with pytest.raises(ValueError, match="no Conv2d"):
        A.analyse_model(torch.nn.Sequential())
    m = _model()
    with pytest.raises(ValueError, match=r"unknown layer 'conv9'.*Conv2d layers: 0, 2, 4"):
        A.analyse_model(m, "conv9")
    with pytest.raises(ValueError, match=r"layer '8' is a Linear, not a Conv2d"):
        A.analyse_model(m, ["8"])


# -- a real headless browser -----------------------------------------------------------------
def _chromium():
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI: .ci/run must install it (scripts/install-chromium.sh)")
        pytest.skip("chromium is not installed (and CI is not set)")
    return path


def _chromium_run(exe, tmp, url, *extra):
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--hide-scrollbars", "--virtual-time-budget=15000", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def check_in_browser(out: Path, tmp: Path, screenshot: Path | None = None) -> dict:
    """Load index.html in headless chromium: no console message, every figure drawn, not blank."""
    exe = _chromium()
    url = (out / "index.html").resolve().as_uri()
    res = _chromium_run(exe, tmp, url, "--window-size=1280,1000", "--dump-dom")
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, f"console messages: {console[:5]}"
    m = re.search(r'data-report-status="([^"]*)"', res.stdout)
    assert m, "the page's status script did not run (page failed to load?)"
    status = json.loads(html.unescape(m.group(1)))
    assert status["errors"] == []
    assert status["figures"] >= 1 and status["rendered"] == status["figures"], status
    height = min(int(status["height"]) + 50, 16000)
    shot = tmp / "page.png"
    res = _chromium_run(exe, tmp, url, f"--window-size=1280,{height}", f"--screenshot={shot}")
    assert shot.exists(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    blank = []
    for r in status["rects"]:
        x0, y0 = int(r["x"]), int(r["y"])
        region = img[y0:y0 + int(r["h"]), x0:x0 + int(r["w"])]
        if region.size == 0 or region.std() < 0.02:      # a drawn figure has axes, text, colour
            blank.append(r["name"])
    assert not blank, f"figures blank in the screenshot: {blank}"
    if screenshot is not None:
        shutil.copy(shot, screenshot)
    return status


def test_report_in_headless_browser(report_dir, tmp_path):
    out, _ = report_dir
    status = check_in_browser(out, tmp_path)
    names = {r["name"] for r in status["rects"]}
    assert {"filter_grid", "load_balance", "threshold_sweep", "ineffectual"} <= names


@pytest.mark.parametrize("sabotage, match", [
    (lambda page: page.replace("Plotly.newPlot(", "(function(){})(", 1), "rendered"),
    (lambda page: page.replace("</head>", "<style>.js-plotly-plot{visibility:hidden}</style></head>", 1),
     "blank in the screenshot"),
    (lambda page: page.replace("</body>", "<script>console.error('boom')</script></body>", 1),
     "console messages"),
])
def test_browser_check_can_fail(report_dir, tmp_path, sabotage, match):
    """The browser check is not vacuous: a figure not drawn, drawn invisible, or a console
    error each fail it."""
    out, _ = report_dir
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "index.html").write_text(sabotage((bad / "index.html").read_text()))
    with pytest.raises(AssertionError, match=match):
        check_in_browser(bad, tmp_path)


# -- the command line ------------------------------------------------------------------------
def _has_models():
    from sparsecnn import models
    return hasattr(models, "build")


needs_models = pytest.mark.skipif(not _has_models(), reason="sparsecnn.models not installed")


@needs_models
@pytest.mark.parametrize("argv, match", [
    (["--arch", "lenet"], r"unknown model 'lenet'; expected one of \[.*'resnet20'"),
    (["--arch", "resnet20", "--layer", "conv9"], r"unknown layer 'conv9'; Conv2d layers: conv1, layer1\.0\.conv1"),
    (["--arch", "resnet20", "--layer", "linear"], r"layer 'linear' is a Linear, not a Conv2d"),
    (["--arch", "resnet20", "--format", "coo"], r"unknown --format 'coo'; expected one of"),
    (["--arch", "resnet20", "--threads", "0"], r"--threads must be >= 1"),
    (["--arch", "resnet20", "--sparsity", "1.5"], r"--sparsity must be in \[0, 1\)"),
])
def test_cli_bad_input_exit_2(argv, match, capsys, tmp_path):
    assert main(["report", *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not (tmp_path / "r").exists()


@needs_models
def test_cli_empty_model_checkpoint(capsys, tmp_path):
    ckpt = tmp_path / "empty.pt"
    torch.save({}, ckpt)
    assert main(["report", "--arch", "resnet20", "--weights", str(ckpt), "--out", str(tmp_path / "r")]) == 2
    assert "error" in capsys.readouterr().err


@needs_models
def test_cli_one_layer_end_to_end(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(["report", "--arch", "resnet20", "--layer", "layer2.0.conv2", "--threads", "1",
               "--sparsity", "0.9", "--images", "4", "--eval-images", "8", "--out", str(out),
               "--no-static"])
    assert rc == 0
    text = capsys.readouterr().out
    from sparsecnn import models
    published = models.spec("resnet20").default_weights()
    expect = "published pretrained weights" if published is not None else "random initialisation"
    assert "report written to" in text and expect in text
    assert "magnitude pruning to 0.9" in text
    [folder] = list(out.iterdir())                 # one new report folder under --out
    assert folder.name.startswith("report-resnet20-layer2.0.conv2-")
    assert f"report written to {folder}/index.html" in text
    payload = json.loads((folder / "report.json").read_text())
    assert payload["layers"] == ["layer2.0.conv2"]
    assert payload["geometry"]["layer2.0.conv2"]["input_shape"] == [1, 32, 16, 16]
    assert expect in payload["meta"]["weights"]
    assert payload["summary"][0]["nnz"] == round(0.1 * 32 * 32 * 9)       # pruned to exactly 90 %


def test_break_even_figure_from_rows(report_dir, tmp_path):
    """Break-even rendering on hand-made benchmark rows (the benchmark itself is slow: --bench)."""
    _, d = report_dir
    rows = [{"kernel": k, "sparsity": s, "speedup": sp, "status": "ok"}
            for s, sp in ((0.5, 0.3), (0.9, 0.8), (0.99, 2.5)) for k, sp in (("dense", 1.0), ("direct", sp))]
    d2 = dict(d, break_even={"4": {"available": True, "reason": None, "rows": rows,
                                   "break_even": {"direct": 0.93}, "break_even_label": {"direct": "0.930"}}})
    d2["timings_s"] = dict(d["timings_s"])
    out = write_report(d2, tmp_path / "be", {})
    assert (out / "break_even.png").exists() and (out / "break_even.svg").exists()
    with open(out / "break_even.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 6 and {r["kernel"] for r in got} == {"dense", "direct"}
    assert "break-even 0.930" in (out / "index.html").read_text()
