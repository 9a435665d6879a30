"""Joint LoRA under DDP on CPU (gloo, 2 ranks): the backbone's LoRA weights are in the module tree, so DDP
averages their gradients and they stay identical on both ranks (and equal to the tensors each rank's
backbone runs), the frozen base never moves, and a run resumed from a checkpoint ends where an unbroken
one does.

``strategy="ddp"`` re-launches the running script for rank 1, so the run lives in a standalone script
started with ``subprocess`` (as in tests/test_training_ddp.py).
"""

from __future__ import annotations

import textwrap

import torch
from ddp_launch import run_two_ranks

SCRIPT = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[3])
    from test_training_common import make_data, make_module, make_trainer
    from hybrid_reason.backbone import BackboneSpec

    backbone, out = sys.argv[1], sys.argv[2]

    def run(root, ckpt_path=None, steps=6):
        # N_sup 3 in lockstep: the steps without a refill train the adapter through the re-encoded slots
        module = make_module(backbone, backbone=BackboneSpec(name=backbone, lora_rank=4), halt_max_steps=3)
        init = {k: v.clone() for k, v in module.model.state_dict().items() if k.startswith("backbone_lora.")}
        trainer = make_trainer(root, steps, strategy="ddp", devices=2, val_check_interval=4)
        trainer.fit(module, make_data(batch_size=4), ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
        return trainer, module, init

    trainer, module, init = run(out + "/unbroken")
    run(out + "/part", steps=4)  # stops at step 4 ...
    _, resumed, _ = run(out + "/part", ckpt_path=out + "/part/ckpt/last.ckpt")  # ... and goes on to step 6
    backbone = module.model.backbone
    names = {id(p): "backbone_lora." + n for n, p in module.model.backbone_lora.named_parameters()}
    torch.save({
        "weights": module.model.state_dict(), "init": init, "resumed": resumed.model.state_dict(),
        "forward_lora": {names[id(p)]: p.detach() for p in backbone.lora_parameters()},
        "base": {n: p for n, p in backbone.model.get_base_model().named_parameters() if not p.requires_grad},
        "counters": module.counters,
    }, f"{out}/rank{trainer.global_rank}.pt")
    """
)


def test_joint_lora_under_two_cpu_ranks(backbone_path, tmp_path):
    ranks = run_two_ranks(SCRIPT, backbone_path, tmp_path)
    lora = [k for k in ranks[0]["weights"] if k.startswith("backbone_lora.")]
    assert len(lora) == 16 and ranks[0]["init"].keys() == set(lora)
    for key, value in ranks[0]["weights"].items():  # the adapter included
        assert torch.equal(value, ranks[1]["weights"][key]), key
    for key in lora:
        assert not torch.equal(ranks[0]["weights"][key], ranks[0]["init"][key]), key  # it trained
        for rank in ranks:  # what each rank's backbone runs is what its module holds
            assert torch.equal(rank["forward_lora"][key], rank["weights"][key]), key
    from transformers import AutoModel

    base = dict(AutoModel.from_pretrained(backbone_path).named_parameters())
    for rank in ranks:
        frozen = {n.replace(".base_layer.", "."): p for n, p in rank["base"].items()}  # peft's wrapped layers
        assert frozen.keys() == base.keys() and all(torch.equal(p, base[n]) for n, p in frozen.items())
        assert rank["counters"]["encoded_rows"] == rank["counters"]["slot_steps"] == 6 * 4
    for key, value in ranks[0]["weights"].items():  # resumed from step 4 on both ranks: the same end
        assert torch.equal(value, ranks[0]["resumed"][key]), key
        assert torch.equal(value, ranks[1]["resumed"][key]), key
