"""The report read as a paper's reader would: colour scales from the data, one colour bar per
kernel size, depthwise grids that are not lines, nothing overlapping the plotly toolbar or the
data, labels not clipped, bins of 1 visible, no legend entry without a bar, the top-1 of the
weights shown stated, the published weights used by default, and no "hybrid" gain that is noise.
"""

import json

import numpy as np
import pytest
import torch

from sparsecnn import analysis as A
from sparsecnn.cli.main import main
from sparsecnn.report import interactive, static, write_report
from sparsecnn.report._common import grid_view


def _weights(k, c, r, s, max_nnz, seed=0):
    """A conv weight whose densest filter holds exactly ``max_nnz`` nonzeros."""
    g = np.random.default_rng(seed)
    w = np.zeros((k, c, r, s), np.float32)
    for kk in range(k):
        for cc in range(c):
            n = g.integers(0, max_nnz + 1) if (kk, cc) != (0, 0) else max_nnz
            idx = g.choice(r * s, size=n, replace=False)
            w[kk, cc].reshape(-1)[idx] = g.standard_normal(n) + 3
    return w


def _data(weights: dict) -> dict:
    names = list(weights)
    return {"layers": names, "detail_layers": names[:1], "weights": weights,
            "profiles": {n: A.density_profile(w) for n, w in weights.items()},
            "summary": A.model_sparsity(weights)}


def test_grid_colour_scale_from_the_real_max():
    """AlexNet conv4 at 99.3 %: the densest filter holds 3 nonzeros; 1, 2 and 3 must differ."""
    d = _data({"conv4": _weights(32, 48, 3, 3, 3)})
    hm = interactive.filter_grid(d).data[0]
    assert hm.zmax == pytest.approx(3.5) and hm.zmin == pytest.approx(-0.5)
    colours = []
    for v in (0, 1, 2, 3):          # the colour each integer value gets
        frac = (v + 0.5) / 4
        colours.append(next(c for f, c in hm.colorscale[::-1] if f <= frac))
    assert len(set(colours)) == 4
    assert list(hm.colorbar.tickvals) == [0, 1, 2, 3]
    fig = static.filter_grid(d)
    cbar = fig.axes[-1]
    assert cbar.get_ylim()[1] == pytest.approx(3.5)


def test_whole_model_has_a_colour_bar_per_kernel_size():
    d = _data({"a": _weights(8, 8, 1, 1, 1), "b": _weights(8, 8, 5, 5, 7, 1),
               "c": _weights(8, 8, 3, 3, 4, 2), "d": _weights(8, 8, 5, 5, 12, 3)})
    fig = static.filter_grid(d)
    labels = sorted(a.get_ylabel() for a in fig.axes if a.get_ylabel().startswith("nnz per"))
    assert labels == ["nnz per 1x1 filter", "nnz per 3x3 filter", "nnz per 5x5 filter"]
    tops = {a.get_ylabel(): a.get_ylim()[1] for a in fig.axes if a.get_ylabel().startswith("nnz")}
    assert tops["nnz per 5x5 filter"] == pytest.approx(12.5)        # the 5x5 layers' densest
    assert tops["nnz per 1x1 filter"] == pytest.approx(1.5)


def test_depthwise_grid_is_not_a_one_pixel_line():
    w = _weights(64, 1, 3, 3, 5)
    grid, cols = grid_view(A.density_profile(w)["filter_nnz"])
    assert grid.shape == (8, 8) and cols == 8
    d = _data({"dw": w, "pw": _weights(16, 64, 1, 1, 1)})
    fig = interactive.filter_grid(d)
    assert np.asarray(fig.data[0].z).shape == (8, 8)
    assert np.asarray(fig.data[1].z).shape == (16, 64)           # a normal grid stays as it is
    assert "wrapped" in fig.layout.title.text
    sfig = static.filter_grid(dict(d, layers=["dw"]))
    img = sfig.axes[0].images[0].get_array()
    assert img.shape == (8, 8)


def test_histogram_bin_of_one_is_visible_on_the_log_axis():
    d = _data({"conv4": _weights(32, 48, 3, 3, 3)})
    hist = d["profiles"]["conv4"]["filter_nnz_hist"]
    assert hist[3] >= 1
    fig = interactive.local_density(d)
    low = fig.layout.yaxis.range[0]
    assert np.log10(1) - low >= 0.5        # a count of 1 is half a decade tall, not 0.1
    ax = static.local_density(d).axes[0]
    assert np.log10(1) - np.log10(ax.get_ylim()[0]) >= 0.5


def test_no_legend_entry_without_a_bar():
    d = _data({"a": _weights(8, 8, 3, 3, 9)})
    assert d["summary"][0]["bytes"]["nm"] is None                 # not an N:M pattern
    names = [t.name for t in interactive.memory(d).data]
    assert "nm" not in names and "csr" in names and "dense" in names
    assert "nm" in interactive.memory(d).layout.title.text     # said why, once
    labels = static.memory(d).axes[0].get_legend_handles_labels()[1]
    assert "nm" not in labels and "csr" in labels


def test_hybrid_without_a_dense_block_is_the_sparse_run():
    """No dense block: the hybrid plan runs exactly the sparse kernel on the same weight, so
    it must not be timed again (a faster 'hybrid measured' would be noise shown as gain)."""
    from sparsecnn.kernels import registry
    if not [k for k in registry.kernels("conv2d") if k.accepts("csr") and k.unavailable() is None]:
        pytest.skip("no runnable sparse conv2d kernel for CSR")
    w = _weights(16, 16, 3, 3, 1)
    blocks = A.dense_blocks(w, threshold=1.0, tile=(4, 4))
    assert blocks["blocks"] == []
    x = torch.randn(1, 16, 10, 10)
    meas = A.measure_hybrid(w, blocks, x, (1, 1), (1, 1), (1, 1), repeats=5)
    assert meas["same_as_sparse"] and meas["hybrid_ms"] == meas["sparse_ms"]
    est = A.hybrid_estimate(blocks, meas)
    assert est["hybrid_ms"] == meas["sparse_ms"]
    d = _data({"c": w})
    d["hybrid"] = {"c": {"rates": meas, "estimate": est, "measured": meas}}
    fig = interactive.hybrid(d)
    # nothing measured apart from the sparse run: no "hybrid, measured" bar, so no legend entry
    assert [t.name for t in fig.data] == ["dense (torch conv2d)", "sparse (all nnz)",
                                          "hybrid, cost model"]
    assert "the sparse run itself" in fig.layout.title.text
    sfig = static.hybrid(d)
    labels = [t.get_text() for t in sfig.axes[0].get_legend().get_texts()]
    assert "hybrid, measured" not in labels and len(labels) == 3
    # a second layer with a dense block: its measured hybrid is shown (and the first one's gap)
    d["layers"] = ["c", "e"]
    d["hybrid"]["e"] = {"rates": meas, "estimate": dict(est, hybrid_ms=0.5),
                        "measured": dict(meas, same_as_sparse=False, hybrid_ms=0.7)}
    measured = next(t for t in interactive.hybrid(d).data if t.name == "hybrid, measured")
    assert list(measured.y) == [None, 0.7]


# -- the page in a real browser: geometry of every figure -----------------------------------------
def _overlap(a, b, tol=1.0):
    return (a["x"] + tol < b["x"] + b["w"] and b["x"] + tol < a["x"] + a["w"]
            and a["y"] + tol < b["y"] + b["h"] and b["y"] + tol < a["y"] + a["h"])


def _inside(a, b, tol=1.0):
    return (a["x"] >= b["x"] - tol and a["y"] >= b["y"] - tol
            and a["x"] + a["w"] <= b["x"] + b["w"] + tol and a["y"] + a["h"] <= b["y"] + b["h"] + tol)


@pytest.fixture(scope="module")
def seed_case_report(tmp_path_factory):
    """The seed's case at small scale: one 99.3 %-sparse conv layer (bar labels drawn), a
    multi-layer model with a depthwise layer (the layer menu)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(64, 64, 3, padding=1, groups=64), torch.nn.ReLU(),
                            torch.nn.Conv2d(64, 96, 3, padding=1), torch.nn.ReLU())
    from sparsecnn import prune
    prune.magnitude_prune_(m, 0.993, layers=["4"])
    prune.magnitude_prune_(m, 0.9, layers=["0", "2"])
    prune.finalize_(m)
    x = torch.randn(4, 3, 12, 12)
    out = {}
    for tag, layers in (("one", ["4"]), ("all", None)):
        d = A.analyse_model(m, layers, inputs=x, input_source="random", threads=1, repeats=2,
                            sweep_fractions=(0.0, 0.5, 0.9), block_tile=(8, 8))
        out[tag] = write_report(d, tmp_path_factory.mktemp(tag) / "r", {"title": tag},
                                static=False)
    return out


@pytest.mark.parametrize("tag", ["one", "all"])
def test_page_geometry_nothing_overlaps(seed_case_report, tag, tmp_path):
    from test_report import check_in_browser
    status = check_in_browser(seed_case_report[tag], tmp_path)
    problems = []
    for r in status["rects"]:
        p, name = r["parts"], r["name"]
        for mb in p["modebar"]:
            for what in ("title", "menus", "legend"):
                if any(_overlap(mb, o) for o in p[what]):
                    problems.append(f"{name}: toolbar over the {what}")
        for t in p["title"]:            # a two-line title not pushed out of the figure's top
            if t["y"] < r["y"] - 0.5 or t["y"] + t["h"] > r["y"] + r["h"] + 0.5:
                problems.append(f"{name}: title outside the figure (clipped)")
        for mn in p["menus"]:
            if any(_overlap(mn, t) for t in p["title"]):
                problems.append(f"{name}: layer menu over the title")
        for lg in p["legend"]:
            if any(_overlap(lg, pl) for pl in p["plot"]):
                problems.append(f"{name}: legend on the data")
        for t in p["bartext"]:
            if not any(_inside(t, pl) for pl in p["plot"]):
                problems.append(f"{name}: bar label outside the plot area (clipped)")
    assert not problems, sorted(set(problems))
    names = {r["name"] for r in status["rects"]}
    assert {"sparsity_summary", "filter_grid", "memory", "local_density"} <= names
    if tag == "one":    # the 99.3 % bar label exists and was checked above
        summary = next(r for r in status["rects"] if r["name"] == "sparsity_summary")
        assert summary["parts"]["bartext"]


# -- the command: top-1 stated, published weights by default --------------------------------------
@pytest.fixture
def fake_shared(tmp_path, monkeypatch):
    """A shared-data folder holding (random) 'published' ResNet-20 weights and a labelled
    CIFAR-shaped test subset."""
    from sparsecnn import models
    root = tmp_path / "shared"
    (root / "resnet_cifar10").mkdir(parents=True)
    (root / "cifar10").mkdir()
    torch.manual_seed(1)
    torch.save({"state_dict": models.build("resnet20").state_dict()},
               root / "resnet_cifar10" / "resnet20-12fca82f.th")
    rng = np.random.default_rng(0)
    for split, n in (("test", 24), ("train", 8)):
        np.savez(root / "cifar10" / f"cifar10_{split}_subset.npz",
                 images=rng.integers(0, 255, (n, 3, 32, 32), dtype=np.uint8),
                 labels=rng.integers(0, 10, n))
    monkeypatch.setenv("SPARSECNN_SHARED_DATA", str(root))
    return root


def test_report_uses_published_weights_and_states_their_top1(fake_shared, tmp_path, capsys):
    from sparsecnn import data, models, prune
    out = tmp_path / "r"
    assert main(["report", "--arch", "resnet20", "--layer", "layer1.0.conv1", "--sparsity", "0.5",
                 "--threads", "1", "--images", "4", "--eval-images", "24", "--out", str(out),
                 "--no-static"]) == 0
    text = capsys.readouterr().out
    [folder] = list(out.iterdir())
    payload = json.loads((folder / "report.json").read_text())
    assert "published pretrained weights" in payload["meta"]["weights"]
    assert "resnet20-12fca82f.th" in payload["meta"]["weights"]
    # the top-1 the report states is that of the (pruned) weights it shows
    model = models.build("resnet20")
    models.load_weights(model, fake_shared / "resnet_cifar10" / "resnet20-12fca82f.th")
    model.eval()
    test = data.load_npz(fake_shared / "cifar10" / "cifar10_test_subset.npz")
    before = prune.evaluate(model, prune.make_loader(test, 64, shuffle=False))
    prune.magnitude_prune_(model, 0.5, layers=[n for n, m in model.named_modules()
                                               if isinstance(m, torch.nn.Conv2d)])
    prune.finalize_(model)
    after = prune.evaluate(model, prune.make_loader(test, 64, shuffle=False))
    acc = payload["accuracy"]
    assert acc["top1"] == pytest.approx(after) and acc["top1_before_pruning"] == pytest.approx(before)
    assert acc["images"] == 24
    stated = f"{100 * after:.2f} % on 24 images"
    assert stated in payload["meta"]["top-1 of these weights"] and stated in text
    page = (folder / "index.html").read_text()
    assert "Top-1 of the weights shown" in page and stated in page
