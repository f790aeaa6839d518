"""Evolutionary pruning with rewinding (sparsecnn.prune.evolutionary)."""

import math

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from sparsecnn import data, models, prune
from sparsecnn.prune import EvolutionaryPruner, EvolutionConfig, recipes
from sparsecnn.prune.evolutionary import fit_total, zeros_per_layer


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and robust to a busy machine
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ sparsity vectors
@pytest.mark.parametrize("total", [0.0, 0.05, 0.5, 0.9, 0.97])
def test_fit_total_hits_the_total(total):
    rng = np.random.default_rng(0)
    n = np.array([432, 2304, 2304, 4608, 9216, 36864], dtype=np.int64)
    dmin = 1.0 / n
    ld = np.log(rng.uniform(0.05, 1.0, n.size))
    s = fit_total(ld, n, total, dmin)
    assert (s >= 0).all() and (s <= 1 - dmin + 1e-12).all()
    assert float((s * n).sum() / n.sum()) == pytest.approx(total, abs=1e-6)
    # one common shift keeps the order of the densities
    for i in range(n.size):
        for j in range(n.size):
            if ld[i] > ld[j]:
                assert s[i] <= s[j] + 1e-12
    # weighted: layers with weight 0 stay as they were while the others can carry the total
    base = np.full(n.size, 0.2)
    w = np.array([0, 0, 1, 1, 1, 1.0])
    s2 = fit_total(np.log(1 - base), n, max(total, 0.25), dmin, w)
    assert float((s2 * n).sum() / n.sum()) == pytest.approx(max(total, 0.25), abs=1e-6)
    if max(total, 0.25) < 0.85:  # reachable by the weighted layers alone
        np.testing.assert_allclose(s2[:2], 0.2)


def test_fit_total_spills_over_and_caps():
    n = np.array([100, 100, 10000])
    dmin = np.array([0.5, 0.5, 0.5])  # no layer above 50 %
    s = fit_total(np.zeros(3), n, 0.6, dmin)  # unreachable: everything at the cap
    np.testing.assert_allclose(s, 0.5)
    w = np.array([1.0, 0.0, 0.0])  # the small layer cannot carry 40 % of all weights
    s = fit_total(np.zeros(3), n, 0.4, dmin, w)
    assert float((s * n).sum() / n.sum()) == pytest.approx(0.4, abs=1e-6)
    assert s[0] == pytest.approx(0.5)


@pytest.mark.parametrize("total", [0.0, 0.3, 0.9, 0.92])
def test_zeros_per_layer_exact(total):
    n = np.array([432, 2304, 4608, 36864, 7])
    cap = n - 1
    s = np.array([0.3, 0.91, 0.2, 0.97, 0.5])
    z = zeros_per_layer(s, n, total, cap)
    assert int(z.sum()) == round(total * n.sum())
    assert (z >= 0).all() and (z <= cap).all()


def test_config_validation():
    EvolutionConfig().validate()
    for bad in [dict(population_size=1), dict(accepted_drop=-0.1), dict(alpha=0, beta=0),
                dict(grad_decay=1.0), dict(layer_fraction=0), dict(mutation_scale=0),
                dict(init_sensitivity="magic"), dict(max_layer_sparsity=1.0),
                dict(interval=0), dict(probe_sparsity=1.5), dict(patience=True)]:
        key = next(iter(bad))
        with pytest.raises(ValueError, match=key.split("_")[0]):
            EvolutionConfig(**bad).validate()


# ------------------------------------------------------------------ the pruner
def _digits():
    train, test = data.load_digits()
    train_set, val_set = recipes.split_validation(train, 0.15, seed=0)
    return train_set, val_set, test


def _pretrained(seed=0):
    torch.manual_seed(seed)
    model = models.build("smallcnn")
    train_set, _, _ = _digits()
    prune.train(model, prune.make_loader(train_set, 64, seed=seed), 4, 0.05, seed=seed,
                progress=False)
    return model


def _evo_run(model, *, epochs=4, sparsity=0.8, checkpoint=None, budget=None, **cfg):
    train_set, val_set, _ = _digits()
    loader = prune.make_loader(train_set, 64, seed=0)
    steps = epochs * len(loader)
    pruner = EvolutionaryPruner(model, sparsity, 0, int(0.6 * steps),
                                prune.make_loader(val_set, 256, shuffle=False),
                                config=EvolutionConfig(interval=6, **cfg), seed=0)
    res = prune.train(model, loader, epochs, 0.02, pruner=pruner, seed=0, progress=False,
                      checkpoint=checkpoint, time_budget_s=budget)
    return pruner, res


def test_evolutionary_reaches_exact_total_and_keeps_accuracy():
    model = _pretrained()
    _, _, test = _digits()
    dense = prune.evaluate(model, prune.make_loader(test, 512, shuffle=False))
    pruner, res = _evo_run(model, beta=0.2)
    layers = pruner.layer_names
    assert layers == ["conv1", "conv2", "fc"]
    n = {name: dict(model.named_modules())[name].weight.numel() for name in layers}
    zeros = sum(int((dict(model.named_modules())[k].weight == 0).sum()) for k in layers)
    assert zeros == round(0.8 * sum(n.values()))  # exactly the target in all
    assert pruner.current_sparsity == pytest.approx(0.8, abs=1e-3)
    sp = pruner.sparsities
    assert len(set(round(v, 3) for v in sp.values())) > 1  # not uniform: the evolution chose
    s = pruner.summary()
    c = s["counts"]
    assert c["accepted"] >= 1 and c["evaluations"] >= 1 + len(layers) + 8
    assert c["accepted"] + c["rejected"] == len(s["history"])
    assert c["rewinds"] == c["rejected"] and c["mutations"] + c["crossovers"] == c["rejected"]
    assert len(s["population"]) <= 8 and s["initial"]["probe_sparsity"] == pytest.approx(0.7)
    assert math.isclose(np.exp(np.mean(np.log(list(s["sensitivity"].values())))), 1.0,
                        rel_tol=1e-6)
    prune.finalize_(model)
    top1 = prune.evaluate(model, prune.make_loader(test, 512, shuffle=False))
    assert top1 >= dense - 0.05, (top1, dense)


def test_masks_follow_the_score_and_gradient_migrates_weights_back():
    """With beta > 0 pruned weights come back (migration counted); with beta = 0 the masks
    recomputed every step are the magnitude masks at the layers' sparsities."""
    model = _pretrained()
    pruner, _ = _evo_run(model, epochs=3, beta=1.0)
    assert pruner.counts["mask_updates"] > 10
    assert pruner.counts["migrated_in"] > 0
    # magnitude only: every mask is exactly the top-|w| set of its layer's count
    model = _pretrained()
    pruner, _ = _evo_run(model, epochs=3, beta=0.0)
    assert pruner.counts["migrated_in"] == 0
    for name, module in zip(pruner.layer_names, pruner._modules):
        w = module.weight.detach().abs().reshape(-1)
        kept = w[w > 0]
        pruned_raw = prune.raw_weight(module).detach().reshape(-1)[w == 0]
        assert torch.all(pruned_raw == 0)  # re-applied: zero in storage too
        if kept.numel() and kept.numel() < w.numel():
            assert float(kept.min()) >= float(w[w == 0].max())


def test_rewinding_restores_the_parent():
    """A candidate that loses more than accepted_drop is rewound: weights, masks and the
    optimizer state are those of the last accepted solution again."""
    model = _pretrained()
    train_set, val_set, _ = _digits()
    loader = prune.make_loader(train_set, 64, seed=0)
    pruner = EvolutionaryPruner(model, 0.95, 0, 40, prune.make_loader(val_set, 256, shuffle=False),
                                config=EvolutionConfig(interval=4, accepted_drop=0.0,
                                                       patience=5, population_size=3,
                                                       init_sensitivity="uniform"), seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner.bind(opt)
    x, y = next(iter(loader))
    seen_reject = False
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        n_rej = pruner.counts["rejected"]
        pruner.step()
        if pruner.counts["rejected"] > n_rej:
            seen_reject = True
            parent = pruner.parent["state"]["model"]
            # the candidate's masks were replaced by new ones; the weights are the parent's
            # where both masks keep them
            for name, module in zip(pruner.layer_names, pruner._modules):
                raw = prune.raw_weight(module).detach()
                saved = parent[f"{name}.parametrizations.weight.original"]
                keep = module.parametrizations.weight[0].mask > 0
                old = parent[f"{name}.parametrizations.weight.0.mask"] > 0
                both = keep & old
                torch.testing.assert_close(raw[both], saved[both])
            break
    assert seen_reject


def test_evolutionary_deterministic_and_resume(tmp_path):
    m1 = _pretrained()
    p1, r1 = _evo_run(m1, epochs=4, beta=0.2)
    m2 = _pretrained()
    ck = tmp_path / "evo.ckpt"
    _, part = _evo_run(m2, epochs=4, beta=0.2, checkpoint=ck, budget=0.0)
    assert not part.finished and part.epochs_done == 1
    m3 = _pretrained()
    p3, r3 = _evo_run(m3, epochs=4, beta=0.2, checkpoint=ck)
    assert r3.finished
    assert p1.history == p3.history and p1.counts == p3.counts
    for (k, v), (_, v3) in zip(m1.state_dict().items(), m3.state_dict().items()):
        torch.testing.assert_close(v, v3, msg=k)


def test_evolutionary_needs_validation_and_bad_args():
    model = models.build("smallcnn")
    with pytest.raises(ValueError, match="validation"):
        EvolutionaryPruner(model, 0.5, 0, 10, None)
    with pytest.raises(ValueError, match="start_step"):
        EvolutionaryPruner(model, 0.5, 5, 5, [])
    with pytest.raises(ValueError, match="final_sparsity"):
        EvolutionaryPruner(model, 1.5, 0, 5, [])
    with pytest.raises(ValueError, match="val_fraction"):
        recipes.run_recipe(recipes.smallcnn_digits(method="evolutionary"), progress=False)
    with pytest.raises(ValueError, match="unknown evolution parameter"):
        recipes.apply_overrides(recipes.smallcnn_digits(), {"evolution.nope": 1})
    with pytest.raises(ValueError, match="unknown recipe field"):
        recipes.apply_overrides(recipes.smallcnn_digits(), {"nope": 1})
    r = recipes.apply_overrides(recipes.smallcnn_digits(), {"lr": 0.1, "evolution.beta": 0.5})
    assert r.lr == 0.1 and r.evolution.beta == 0.5


def test_split_validation_stratified_and_disjoint():
    ds = TensorDataset(torch.randn(200, 2), torch.arange(200) % 4)
    tr, va = recipes.split_validation(ds, 0.1, seed=3)
    assert len(va) == 20 and len(tr) == 180
    assert not set(tr.indices) & set(va.indices)
    labels = ds.tensors[1][va.indices]
    assert torch.bincount(labels).tolist() == [5, 5, 5, 5]
    tr2, va2 = recipes.split_validation(ds, 0.1, seed=3)
    assert va2.indices == va.indices
    for bad in (0.0, 1.0, -0.1, True):
        with pytest.raises(ValueError, match="val_fraction"):
            recipes.split_validation(ds, bad)
    sub = Subset(ds, range(50))  # a Subset (labels read item by item)
    _, va3 = recipes.split_validation(sub, 0.2)
    assert len(va3) == 10


def test_evolutionary_recipe_on_digits():
    res = recipes.run_recipe(recipes.smallcnn_digits(method="evolutionary", val_fraction=0.15),
                             progress=False)
    assert res["finished"] and res["top1"] >= 0.95
    assert res["pruned_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert res["data"] == {"train": 1221, "val": 216, "test": 360}
    ev = res["evolution"]
    assert ev["counts"]["accepted"] >= 1 and ev["total_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert recipes.resnet20_cifar_evolutionary().method == "evolutionary"
    assert recipes.resnet20_cifar_evolutionary().val_fraction == 0.1


def test_allowed_drop_grows_with_the_density_cut():
    model = models.build("smallcnn")
    p = EvolutionaryPruner(model, 0.9, 0, 10, [], config=EvolutionConfig(accepted_drop=0.02,
                                                                        drop_unit=0.1))
    n = int(p.numel.sum())
    p.parent = {"zeros": [0, 0, 0]}
    p.zeros = np.array([0, 0, 0])
    assert p._allowed_drop() == pytest.approx(0.02)  # nothing removed: the floor
    z = round(n * (1 - math.exp(-0.3)))  # a cut of 0.3 in log-density: three units
    p.zeros = zeros_per_layer(np.full(3, z / n), p.numel, z / n, p.max_zeros)
    assert p._allowed_drop() == pytest.approx(0.06, rel=1e-3)
    p.parent = {"zeros": p.zeros.tolist()}  # the same density as the parent
    assert p._allowed_drop() == pytest.approx(0.02)
