"""DDP on CPU (gloo, 2 ranks): identical weights on both ranks, disjoint data shards, the carry of both
ranks in the checkpoint, and an exact resume from it.

``strategy="ddp"`` re-launches the running script for rank 1, so the run lives in a standalone script
started with ``subprocess`` (under pytest the launcher would re-run pytest itself).
"""

from __future__ import annotations

import textwrap

import torch
from ddp_launch import run_two_ranks

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from lightning.pytorch.callbacks import Callback
    sys.path.insert(0, sys.argv[3])
    from test_training_common import make_data, make_module, make_trainer

    backbone, out = sys.argv[1], sys.argv[2]

    class SeenIds(Callback):
        def __init__(self):
            self.ids = []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.ids += list(batch.ids)

    def run(root, ckpt_path=None, steps=8):
        seen = SeenIds()
        module = make_module(backbone)
        trainer = make_trainer(root, steps, callbacks=[seen], strategy="ddp", devices=2, val_check_interval=4)
        trainer.fit(module, make_data(batch_size=4), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
        return trainer, module, seen

    trainer, module, seen = run(out + "/unbroken")
    run(out + "/part", steps=4)  # stops at step 4 ...
    _, resumed, _ = run(out + "/part", ckpt_path=out + "/part/ckpt/last.ckpt")  # ... and goes on to step 8
    rank = trainer.global_rank
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    torch.save({"weights": module.model.state_dict(), "resumed": resumed.model.state_dict(), "ids": seen.ids,
                "carry_ids": module.carry.ids, "metrics": metrics, "counters": module.counters}, f"{out}/rank{rank}.pt")
    """
)


def test_ddp_two_cpu_ranks_hold_identical_weights(backbone_path, tmp_path):
    ranks = run_two_ranks(SCRIPT, backbone_path, tmp_path)
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == 8 * 4
    assert set(ranks[0]["ids"]).isdisjoint(ranks[1]["ids"])  # each rank reads its own shard (64 < 200 rows)

    ckpt = torch.load(tmp_path / "unbroken" / "ckpt" / "last.ckpt", weights_only=True)
    assert ckpt["carry"]["world_size"] == 2 and len(ckpt["carry"]["ranks"]) == 2
    assert ckpt["carry"]["ranks"][0]["ids"] != ckpt["carry"]["ranks"][1]["ids"]
    assert ckpt["carry"]["ranks"][1]["ids"] == ranks[1]["carry_ids"]
    assert ckpt["training_counters"]["ranks"] == [ranks[0]["counters"], ranks[1]["counters"]]  # each rank's own
    # Metrics are over both ranks' examples: every rank logs the same values, though their shards differ.
    for key in (
        "train/loss",
        "train/halt_acc",
        "train/encodes_per_slot_step",
        "val/loss",
        "val/cell_acc",
        "val/exact_acc",
    ):
        assert ranks[0]["metrics"][key] == ranks[1]["metrics"][key], key
    for key, value in ranks[0]["weights"].items():  # resumed from step 4 on both ranks: the same end
        assert torch.equal(value, ranks[0]["resumed"][key]), key
        assert torch.equal(value, ranks[1]["resumed"][key]), key
