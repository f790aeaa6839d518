"""Fine-tuning under torch.distributed: 2 local gloo processes started by torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from sparsecnn import data, models, pipeline, prune
from sparsecnn.prune import distributed as D

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["SPARSECNN_CACHE_DIR"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(args, tmp_path, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_context_without_process_group():
    ctx = D.context()
    assert not ctx.active and ctx.is_main and ctx.world_size == 1
    assert D.all_reduce_sum(1.5, 2) == (1.5, 2.0)
    assert D.broadcast_object({"a": 1}) == {"a": 1} and D.gather_object(3) == [3]
    assert D.any_rank(True) and not D.any_rank(False)
    model = models.build("smallcnn")
    prune.magnitude_prune_(model, 0.5)
    D.check_masks_identical(model)  # no-op on one process
    d = D.mask_digests(model)
    assert set(d) == {"conv1", "conv2", "fc"}
    assert d["fc"][0] == round(0.5 * model.fc.weight.numel())
    loader = prune.make_loader(data.load_digits()[1], 64)
    assert D.shard_train_loader(loader) is loader and D.shard_eval_loader(loader) is loader
    with pytest.raises(ValueError, match="backend"):
        D.init_from_env("mpi")


def test_sync_batchnorm_roundtrip():
    model = models.build("resnet20")
    D._convert_sync_bn_(model)
    assert isinstance(model.bn1, torch.nn.SyncBatchNorm)
    w = model.bn1.weight
    D.revert_sync_bn(model)
    assert type(model.bn1) is torch.nn.BatchNorm2d and model.bn1.weight is w
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    model.eval()(torch.randn(1, 3, 32, 32))


def test_ddp_training_loop_two_gloo_processes(tmp_path):
    """AGP under DDP: the same masks and history on both ranks, resume from a checkpoint gives
    the uninterrupted model, sharded evaluation counts every image once, and a mask that differs
    on one rank raises."""
    _torchrun([str(ROOT / "tests" / "_dist_worker.py"), str(tmp_path)], tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["context"]["world_size"] == 2 and r0["context"]["backend"] == "gloo"
    assert {r0["context"]["rank"], r1["context"]["rank"]} == {0, 1}
    assert r0["steps_per_epoch"] == 8  # 512 images, global batch 64 = 2 ranks x 32
    assert r0["digests"] == r1["digests"]
    assert r0["weights_sum"] == r1["weights_sum"]
    assert r0["history"] == [{**h, "seconds": r0["history"][i]["seconds"]}
                             for i, h in enumerate(r1["history"])]  # reduced: the same rows
    assert r0["history"][-1]["sparsity"] == pytest.approx(0.7)
    assert not r0["part_finished"] and r0["part_epochs"] == 1 and r0["ckpt_exists_after_part"]
    assert r0["resumed_equal"] and r1["resumed_equal"]
    assert r0["eval_full"] == pytest.approx(r0["eval_sharded"], abs=1.5 / 360)
    assert r0["eval_sharded"] == r1["eval_sharded"]
    assert r0["mismatch_caught"] and r1["mismatch_caught"]


@pytest.fixture
def dense_smallcnn(tmp_path):
    torch.manual_seed(0)
    model = models.build("smallcnn")
    train, _ = data.load_digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and robust to a busy machine
    try:
        prune.train(model, prune.make_loader(train, 64, seed=0), 4, 0.05, progress=False)
    finally:
        torch.set_num_threads(threads)
    path = tmp_path / "dense.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_torchrun_optimize_evolutionary_two_processes(tmp_path, dense_smallcnn, monkeypatch):
    """``torchrun --nproc-per-node 2 -m sparsecnn optimize --method evolutionary``: one results
    folder (rank 0), the same masks on both ranks, the checkpoint written, and top-1 within
    noise of the same command on one process."""
    monkeypatch.setenv("SPARSECNN_CACHE_DIR", str(tmp_path / "cache"))
    common = dict(weights=dense_smallcnn, sparsity=0.8, method="evolutionary", epochs=6,
                  batch_sizes=[1], tune=False, time_s=0.05, quantize=())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = pipeline.optimize("smallcnn", out_dir=tmp_path / "single", progress=False,
                                   **common)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "multi"
    ck = tmp_path / "optimize.ckpt"
    _torchrun(["-m", "sparsecnn", "optimize", "--model", "smallcnn", "--weights",
               str(dense_smallcnn), "--sparsity", "0.8", "--method", "evolutionary",
               "--epochs", "6", "--batch-sizes", "1", "--no-tune", "--time", "0.05",
               "--quantize", "none", "--threads", "2", "--out", str(out),
               "--checkpoint", str(ck)], tmp_path)
    folders = [p for p in out.iterdir()]
    assert len(folders) == 1 and folders[0].name.startswith("optimize-smallcnn-")
    res = json.loads((folders[0] / "results.json").read_text())
    dd = res["pruning"]["distributed"]
    assert dd["world_size"] == 2 and dd["backend"] == "gloo" and dd["per_rank_batch"] == 32
    assert dd["masks_identical"] and dd["mask_digests"][0] == dd["mask_digests"][1]
    assert ck.exists()
    assert res["pruning"]["schedule"].startswith("evolutionary")
    assert res["pruning"]["data_split"] == single["pruning"]["data_split"]
    layers = res["pruning"]["layer_sparsity"]
    n = {"conv1": 144, "conv2": 4608, "fc": 5120}  # smallcnn's weights per layer
    zeros = sum(layers[k] * n[k] for k in n)
    assert zeros / sum(n.values()) == pytest.approx(0.8, abs=1e-3)
    assert res["verify"]["same_predictions"]
    a_multi, a_single = res["accuracy"]["pruned_top1"], single["accuracy"]["pruned_top1"]
    assert a_single >= 0.9 and abs(a_multi - a_single) <= 0.04, (a_multi, a_single)


def test_exit_process_flushes_and_exits_with_the_code(tmp_path):
    """``exit_process`` ends the process with the given status (``os._exit``) after flushing
    what was printed; without a process group its cleanup is a no-op."""
    code = ("import sys; from sparsecnn.prune import distributed as D; print('out', end=''); "
            "print('err', end='', file=sys.stderr); D.exit_process(3); print('unreachable')")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out", "err")
