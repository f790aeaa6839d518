"""Run by tests/test_distributed.py under ``torchrun --nproc-per-node 2`` (gloo): checks of the
DDP training loop that need several processes. Each rank writes ``<out>/rank<r>.json``."""

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import Subset

from sparsecnn import data, models, prune
from sparsecnn.prune import distributed as D


def _run(ckpt=None, budget=None):
    train, _ = data.load_digits()
    torch.manual_seed(123)
    model = models.build("smallcnn")
    loader = prune.make_loader(Subset(train, range(512)), 64, seed=0)
    steps = 2 * len(D.shard_train_loader(loader))
    pruner = prune.GradualPruner(model, 0.7, 0, steps - 2, 2)
    res = prune.train(model, loader, 2, 0.05, pruner=pruner, seed=0, progress=False,
                      checkpoint=ckpt, time_budget_s=budget)
    return model, res


def main(out: str) -> int:
    out = Path(out)
    ctx = D.init_from_env()
    torch.set_num_threads(1)
    report = {"context": ctx.as_dict()}
    # AGP under DDP, uninterrupted
    m1, r1 = _run()
    report["steps_per_epoch"] = len(D.shard_train_loader(prune.make_loader(
        Subset(data.load_digits()[0], range(512)), 64)))
    report["history"] = r1.history
    report["digests"] = {k: list(v) for k, v in D.mask_digests(m1).items()}
    report["weights_sum"] = float(sum(p.double().sum() for p in m1.state_dict().values()))
    # interrupted after epoch 1 (time budget 0), then resumed from the checkpoint: same model
    ck = out / "ck.pt"
    _, part = _run(ck, budget=0.0)
    report["part_finished"], report["part_epochs"] = part.finished, part.epochs_done
    report["ckpt_exists_after_part"] = ck.exists()
    m3, r3 = _run(ck)
    report["resumed_equal"] = all(torch.allclose(a, b) for a, b in
                                  zip(m1.state_dict().values(), m3.state_dict().values()))
    # sharded evaluation counts every test image once
    _, test = data.load_digits()
    full = prune.evaluate(m1, prune.make_loader(test, 100, shuffle=False))
    shard = D.evaluate(m1, D.shard_eval_loader(prune.make_loader(test, 100, shuffle=False)))
    report["eval_full"], report["eval_sharded"] = full, shard
    # a mask that differs on one rank is caught
    modules = dict(m1.named_modules())
    prune.apply_masks_(m1, prune.masks_of(m1))
    if ctx.rank == 1:
        mask = prune.masks_of(m1)["conv2"]
        mask.view(-1)[0] = ~mask.view(-1)[0]
        prune.set_mask_(modules["conv2"], mask)
    try:
        D.check_masks_identical(m1)
        report["mismatch_caught"] = False
    except RuntimeError as exc:
        report["mismatch_caught"] = "conv2" in str(exc)
    (out / f"rank{ctx.rank}.json").write_text(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    D.exit_process(main(sys.argv[1]))  # not sys.exit: see D.exit_process
