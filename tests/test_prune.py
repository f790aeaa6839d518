"""Pruning: exact sparsities, N:M / unified patterns, fixed masks, AGP schedule, training loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset, TensorDataset

from sparsecnn import data, models, prune


def _model(name="resnet20", seed=0):
    torch.manual_seed(seed)
    return models.build(name)


def _zeros(t):
    return int((t == 0).sum())


# ------------------------------------------------------------------ magnitude
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.99])
def test_magnitude_layer_exact(sparsity):
    model = _model()
    masks = prune.magnitude_prune_(model, sparsity)
    layers = dict(models.conv_layers(model))
    assert set(masks) == set(layers)
    for name, module in layers.items():
        w = module.weight
        assert _zeros(w) == round(sparsity * w.numel()), name
        assert torch.equal(masks[name], w != 0)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_magnitude_global_exact_and_threshold(sparsity):
    model = _model()
    before = {n: m.weight.detach().abs().clone() for n, m in models.conv_layers(model)}
    masks = prune.magnitude_prune_(model, sparsity, scope="global")
    total = sum(v.numel() for v in before.values())
    zeros = sum(_zeros(m.weight) for _, m in models.conv_layers(model))
    assert zeros == round(sparsity * total)
    kept_min = min(float(before[n][masks[n]].min()) for n in masks)
    pruned_max = max(float(before[n][~masks[n]].max()) for n in masks if (~masks[n]).any())
    assert kept_min >= pruned_max
    per_layer = prune.sparsity_of(model)
    assert len({round(v, 3) for v in per_layer.values()}) > 1  # global: layers differ
    assert prune.total_sparsity(model) == pytest.approx(sparsity, abs=1e-5)


def test_skip_first_conv_and_classifier():
    model = _model()
    masks = prune.magnitude_prune_(model, 0.8, skip_first_conv=True, skip_classifier=True)
    assert "conv1" not in masks and "linear" not in masks and "layer1.0.conv1" in masks
    sp = prune.sparsity_of(model)
    assert sp["conv1"] == 0.0 and sp["linear"] == 0.0
    assert sp["layer3.2.conv2"] == pytest.approx(0.8, abs=1e-3)


def test_layers_subset_and_unknown():
    model = _model()
    masks = prune.magnitude_prune_(model, 0.5, layers=["layer2.0.conv1"])
    assert list(masks) == ["layer2.0.conv1"]
    assert prune.sparsity_of(model)["layer2.0.conv2"] == 0.0
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['conv9'\].*layer1.0.conv1"):
        prune.magnitude_prune_(model, 0.5, layers=["conv9"])
    with pytest.raises(TypeError):
        prune.magnitude_prune_(model, 0.5, layers="conv1")


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_bad_sparsity(bad):
    model = _model("smallcnn")
    for fn in (prune.magnitude_prune_, prune.unified_prune_, prune.filter_prune_,
               prune.channel_prune_):
        with pytest.raises(ValueError, match=re_escape(repr(bad))):
            fn(model, bad)


def re_escape(s):
    import re

    return re.escape(s)


def test_bad_scope_and_method():
    model = _model("smallcnn")
    with pytest.raises(ValueError, match="scope"):
        prune.magnitude_prune_(model, 0.5, scope="network")
    with pytest.raises(ValueError, match="unknown pruning method 'random'"):
        prune.prune_(model, "random", 0.5)
    with pytest.raises(ValueError, match="N:M"):
        prune.prune_(model, "4:2")


# ------------------------------------------------------------------ N:M
def _check_nm(weight, n, m):
    mat = weight.detach().reshape(weight.shape[0], -1)
    cols = mat.shape[1]
    for start in range(0, cols, m):
        group = mat[:, start:start + m]
        nnz = (group != 0).sum(dim=1)
        assert int(nnz.max()) <= n
        assert torch.all(nnz == min(n, group.shape[1]))  # random weights: exactly n kept


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_nm_pattern(n, m):
    model = _model()
    before = {k: v.detach().clone() for k, v in
              ((nm, mod.weight) for nm, mod in models.conv_layers(model))}
    prune.nm_prune_(model, n, m)
    for name, module in models.conv_layers(model):
        _check_nm(module.weight, n, m)
        # the kept weights of a group are its largest |w|
        w0 = before[name].reshape(before[name].shape[0], -1).abs()
        w1 = module.weight.detach().reshape(w0.shape)
        for start in range(0, w0.shape[1] - m + 1, m):
            g0, g1 = w0[:, start:start + m], w1[:, start:start + m]
            kept_min = torch.where(g1 != 0, g0, torch.inf).min(dim=1).values
            dropped_max = torch.where(g1 == 0, g0, -torch.inf).max(dim=1).values
            assert torch.all(kept_min >= dropped_max)
    sp = prune.sparsity_of(model)
    assert sp["layer1.0.conv1"] == pytest.approx(1 - n / m)  # 144 columns: a multiple of m


def test_nm_partial_group_and_errors():
    conv = nn.Conv2d(3, 5, 3)  # 27 columns: 6 full groups of 4 and one of 3
    torch.manual_seed(1)
    model = nn.Sequential(conv)
    prune.nm_prune_(model, 2, 4)
    _check_nm(conv.weight, 2, 4)
    assert _zeros(conv.weight) == 5 * (6 * 2 + 1)
    for n, m in [(0, 4), (4, 4), (5, 4), (2.0, 4)]:
        with pytest.raises(ValueError, match="n"):
            prune.nm_prune_(model, n, m)


def test_nm_matches_formats_checker():
    from sparsecnn.formats import NMWeight, check_nm, first_violation

    model = _model()
    prune.nm_prune_(model, 2, 4)
    for _, module in models.conv_layers(model):
        w = module.weight.detach()
        assert check_nm(w, 2, 4) and first_violation(w, 2, 4) is None
        assert not check_nm(w, 1, 4)
        nm = NMWeight.from_dense(w, n=2, m=4)
        torch.testing.assert_close(nm.to_dense(), w)


def test_unified_fits_unified_csr_without_padding():
    from sparsecnn.formats import to_sparse

    model = _model()
    prune.unified_prune_(model, 0.9)
    w = dict(models.conv_layers(model))["layer3.0.conv2"].weight.detach()
    u = to_sparse(w, "unified_csr")
    assert u.nstored == u.nnz == int((w != 0).sum())  # equal rows: no explicit zeros stored


# ------------------------------------------------------------------ structured
def test_filter_prune_rows():
    model = _model()
    before = {n: m.weight.detach().clone() for n, m in models.conv_layers(model)}
    masks = prune.filter_prune_(model, 0.25)
    assert "linear" not in masks  # classifier skipped by default
    for name in masks:
        w = dict(models.conv_layers(model))[name].weight.detach()
        rows_zero = (w.reshape(w.shape[0], -1) == 0).all(dim=1)
        assert int(rows_zero.sum()) == round(0.25 * w.shape[0])
        l1 = before[name].reshape(w.shape[0], -1).abs().sum(1)
        assert float(l1[~rows_zero].min()) >= float(l1[rows_zero].max())


def test_channel_prune_columns():
    model = _model()
    masks = prune.channel_prune_(model, 0.5)
    assert "conv1" not in masks  # first conv skipped by default
    for name, module in models.conv_layers(model):
        if name not in masks:
            continue
        w = module.weight.detach()
        dims = [d for d in range(w.dim()) if d != 1]
        chan_zero = (w == 0).all(dim=dims[0]).all(dim=-1).all(dim=-1) if w.dim() == 4 else (w == 0).all(0)
        assert int(chan_zero.sum()) == round(0.5 * w.shape[1])


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_unified_equal_nnz_per_channel(sparsity):
    model = _model()
    prune.unified_prune_(model, sparsity)
    for name, module in models.conv_layers(model):
        mat = module.weight.detach().reshape(module.weight.shape[0], -1)
        nnz = (mat != 0).sum(dim=1)
        assert torch.all(nnz == mat.shape[1] - round(sparsity * mat.shape[1])), name


# ------------------------------------------------------------------ masks in training
def test_masks_fixed_through_training_and_finalize(tmp_path):
    model = _model("smallcnn")
    masks = prune.magnitude_prune_(model, 0.7)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    before = {n: m.weight.detach().clone() for n, m in models.conv_layers(model)}
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name, module in models.conv_layers(model):
        w = module.weight.detach()
        assert torch.all(w[~masks[name]] == 0)
        assert not torch.equal(w[masks[name]], before[name][masks[name]])  # it trained
        assert torch.all(prune.raw_weight(module)[~masks[name]] == 0)
    assert set(prune.masks_of(model)) == set(masks)
    prune.finalize_(model)
    assert prune.masks_of(model) == {}
    assert not any("parametrizations" in k for k in model.state_dict())
    assert prune.sparsity_of(model)["conv2"] == pytest.approx(0.7, abs=1e-3)
    models.load_weights(models.build("smallcnn"), model.state_dict())


def test_apply_masks_roundtrip():
    a, b = _model("smallcnn", 0), _model("smallcnn", 1)
    masks = prune.unified_prune_(a, 0.6)
    prune.apply_masks_(b, masks)
    for name, mask in prune.masks_of(b).items():
        assert torch.equal(mask, masks[name])
    with pytest.raises(ValueError, match="bn1"):
        prune.apply_masks_(b, {"bn1": torch.ones(16)})


# ------------------------------------------------------------------ AGP
def test_agp_schedule_values():
    s = lambda t: prune.agp_sparsity(t, 0.0, 0.9, 100, 1100)  # noqa: E731
    assert s(0) == 0.0 and s(100) == 0.0
    assert s(600) == pytest.approx(0.9 - 0.9 * 0.5 ** 3)  # 0.7875
    assert s(350) == pytest.approx(0.9 - 0.9 * 0.75 ** 3)  # 0.5203125
    assert s(1100) == 0.9 and s(5000) == 0.9
    assert prune.agp_sparsity(50, 0.5, 0.8, 0, 100) == pytest.approx(0.8 - 0.3 * 0.125)
    vals = [s(t) for t in range(100, 1101, 100)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="end_step"):
        prune.agp_sparsity(0, 0, 0.5, 10, 10)
    with pytest.raises(ValueError, match="final_sparsity"):
        prune.agp_sparsity(0, 0, 1.0, 0, 10)


def test_gradual_pruner_steps():
    model = _model("smallcnn")
    p = prune.GradualPruner(model, 0.8, start_step=2, end_step=12, frequency=4)
    assert set(prune.masks_of(model)) == {"conv1", "conv2", "fc"}  # ones-masks attached
    applied = {}
    for t in range(15):
        s = p.step()
        if s is not None:
            applied[t] = s
            for name, module in models.conv_layers(model):
                w = module.weight
                assert _zeros(w) == round(s * w.numel())
    assert sorted(applied) == [2, 6, 10, 12]
    assert applied[6] == pytest.approx(0.8 - 0.8 * 0.6 ** 3)
    assert applied[12] == 0.8 and p.current_sparsity == 0.8
    with pytest.raises(ValueError, match="frequency"):
        prune.GradualPruner(model, 0.5, 0, 10, 0)
    with pytest.raises(ValueError, match="start_step"):
        prune.GradualPruner(model, 0.5, 5, 5, 1)
    with pytest.raises(ValueError, match="1.2"):
        prune.GradualPruner(model, 1.2, 0, 10, 1)


# ------------------------------------------------------------------ training loop
def _digits_small():
    train, test = data.load_digits()
    return Subset(train, range(256)), test


def _run(seed, epochs=2, pruner_sparsity=None, checkpoint=None, budget=None):
    train_set, _ = _digits_small()
    torch.manual_seed(123)
    model = models.build("smallcnn")
    loader = prune.make_loader(train_set, 64, seed=seed)
    pruner = None
    if pruner_sparsity is not None:
        pruner = prune.GradualPruner(model, pruner_sparsity, 0, len(loader) * epochs - 2, 2)
    res = prune.train(model, loader, epochs, 0.05, pruner=pruner, seed=seed, progress=False,
                      checkpoint=checkpoint, time_budget_s=budget)
    return model, res


def test_train_deterministic_and_resume(tmp_path):
    m1, r1 = _run(0, pruner_sparsity=0.5)
    m2, _ = _run(0, pruner_sparsity=0.5)
    for (k, v), (_, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(v, v2), k
    assert r1.finished and len(r1.history) == 2 and r1.history[-1]["sparsity"] == 0.5
    assert math.isfinite(r1.history[-1]["loss"])
    ck = tmp_path / "ck.pt"
    _, part = _run(0, pruner_sparsity=0.5, checkpoint=ck, budget=0.0)  # stops after epoch 1
    assert not part.finished and part.epochs_done == 1 and ck.exists()
    m3, r3 = _run(0, pruner_sparsity=0.5, checkpoint=ck)
    assert r3.finished and len(r3.history) == 2
    for (k, v), (_, v3) in zip(m1.state_dict().items(), m3.state_dict().items()):
        torch.testing.assert_close(v, v3, msg=k)


def test_train_bad_args():
    train_set, _ = _digits_small()
    model = models.build("smallcnn")
    loader = prune.make_loader(train_set, 64)
    with pytest.raises(ValueError, match="epochs"):
        prune.train(model, loader, 0, 0.1, progress=False)
    with pytest.raises(ValueError, match="lr"):
        prune.train(model, loader, 1, -1.0, progress=False)
    with pytest.raises(ValueError, match="pruner ends at step 100"):
        prune.train(model, loader, 1, 0.1, progress=False,
                    pruner=prune.GradualPruner(model, 0.5, 0, 100, 10))
    with pytest.raises(ValueError, match="teacher"):
        prune.train(model, loader, 1, 0.1, progress=False, kd_alpha=0.5)


def test_evaluate_and_empty_loader():
    model = models.build("smallcnn").train()
    ds = TensorDataset(torch.randn(10, 1, 8, 8), torch.randint(0, 10, (10,)))
    acc = prune.evaluate(model, prune.make_loader(ds, 4, shuffle=False))
    assert 0.0 <= acc <= 1.0 and model.training
    with pytest.raises(ValueError, match="no samples"):
        prune.evaluate(model, [])


def test_smallcnn_digits_recipe_accuracy():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is as fast and robust to a busy machine
    try:
        _digits_recipe_checks()
    finally:
        torch.set_num_threads(threads)


def _digits_recipe_checks():
    dense = prune.recipes.run_recipe(prune.recipes.smallcnn_digits(final_sparsity=0.0),
                                     progress=False)
    assert dense["top1"] >= 0.97
    res = prune.recipes.run_recipe(prune.recipes.smallcnn_digits(), progress=False)
    assert res["finished"] and res["top1"] >= 0.96
    assert res["pruned_sparsity"] == pytest.approx(0.8, abs=2e-3)


def test_sensitivity_sweep_restores_model():
    train_set, test = _digits_small()
    model = models.build("smallcnn")
    prune.train(model, prune.make_loader(train_set, 64), 2, 0.05, progress=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    loader = prune.make_loader(test, 512, shuffle=False)
    rows = prune.sensitivity_sweep(model, loader, [0.5, 0.99], layers=["conv1", "fc"],
                                   progress=False)
    assert rows[0]["layer"] is None and len(rows) == 5
    assert {(r["layer"], r["sparsity"]) for r in rows[1:]} == {
        ("conv1", 0.5), ("conv1", 0.99), ("fc", 0.5), ("fc", 0.99)}
    assert all(0 <= r["top1"] <= 1 for r in rows)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="unknown layer"):
        prune.sensitivity_sweep(model, loader, [0.5], layers=["conv7"], progress=False)


def test_distillation_loss_and_kd_training():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert float(prune.distillation_loss(s, s, y, 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    ce = nn.functional.cross_entropy(s, y)
    torch.testing.assert_close(prune.distillation_loss(s, t, y, 0.0, 4.0), ce)
    kl = nn.functional.kl_div(nn.functional.log_softmax(s / 2, 1), nn.functional.softmax(t / 2, 1),
                              reduction="batchmean") * 4
    torch.testing.assert_close(prune.distillation_loss(s, t, y, 0.5, 2.0), 0.5 * ce + 0.5 * kl)
    train_set, _ = _digits_small()
    teacher = models.build("smallcnn")
    student = models.build("smallcnn")
    res = prune.train(student, prune.make_loader(train_set, 64), 1, 0.05, teacher=teacher,
                      kd_alpha=0.5, progress=False)
    assert math.isfinite(res.history[0]["loss"]) and teacher.training is False


def test_recipes_are_consistent():
    r = prune.recipes.resnet20_cifar_90()
    assert r.model == "resnet20" and r.final_sparsity == pytest.approx(0.9, abs=0.01)
    assert r.replace(epochs=3).epochs == 3 and r.epochs != 3
    assert set(prune.recipes.RECIPES) >= {"resnet20_cifar_90", "smallcnn_digits"}
    with pytest.raises(ValueError, match="dataset"):
        prune.recipes.run_recipe(prune.recipes.smallcnn_digits(dataset="mnist"), progress=False)


def test_resnet20_recipes_scopes():
    assert prune.recipes.resnet20_cifar_90().scope == "global"
    uni = prune.recipes.resnet20_cifar_90_uniform()
    assert uni.scope == "layer" and uni.epochs == prune.recipes.resnet20_cifar_90().epochs
    assert prune.recipes.resnet20_cifar_90_uniform(seed=3).seed == 3


def test_run_recipe_with_given_model_and_data():
    """run_recipe on a caller's model and data sets (as ``sparsecnn optimize`` calls it): the
    named dataset is not loaded, the given model is pruned in place, ``method`` reaches the
    pruner, and a ramp with too few steps is a ValueError."""
    train_set, test = _digits_small()
    test = Subset(test, range(100))
    model = _model("smallcnn")
    recipe = prune.recipes.smallcnn_digits(dataset="not-a-dataset", final_sparsity=0.75,
                                           epochs=2, method="unified")
    res = prune.recipes.run_recipe(recipe, model=model, train_set=train_set, test_set=test,
                                   progress=False)
    assert res["finished"] and res["model"] is model and res["dense_top1"] is None
    assert res["schedule"] == {"start_step": 1, "end_step": 4, "total_steps": 8, "frequency": 2,
                               "distillation": False, "augment": False}
    for name in ("conv1", "conv2", "fc"):  # unified: the same nnz in every output channel
        w = dict(model.named_modules())[name].weight.detach().reshape(
            dict(model.named_modules())[name].weight.shape[0], -1)
        nnz = (w != 0).sum(1)
        assert int(nnz.min()) == int(nnz.max()), name
        assert 1 - float(nnz.sum()) / w.numel() == pytest.approx(0.75, abs=0.05), name
    with pytest.raises(ValueError, match="too few for gradual pruning"):
        prune.recipes.run_recipe(recipe.replace(epochs=1), model=_model("smallcnn"),
                                 train_set=Subset(train_set, range(64)), test_set=test,
                                 progress=False)
