"""The training and evaluation metrics of the module, as torchmetrics objects (summed over DDP ranks).

Training metrics are TRM's: accuracy and halting step of the slots that *halted* in a logging window
(``trainer.log_every_n_steps`` steps), halt accuracy over every slot-step of the window, throughput,
and run-long ratios of the counters the module keeps (backbone passes per example, padding, prompt
budget drops). Evaluation metrics are means over every evaluated example (cell accuracy: over every
labelled cell), and the test-time compute curve: exact accuracy after 1, 2, 4 ... supervision steps.

The window's metric states are not checkpointed: a resumed run starts a fresh window at the step it
resumes from, so its logged windows are those of an unbroken run whenever checkpoints fall on window
boundaries (``every_n_train_steps`` a multiple of ``log_every_n_steps``). The run-long counters are
checkpointed per rank with the carry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, SumMetric

from ..model.losses import IGNORE, exact_correct, example_loss, halt_loss

COUNTERS = (
    "encoded_rows",  # rows sent to the backbone
    "backbone_runs",  # rows the backbone computed (the others came from its feature cache)
    "admitted",  # examples that entered the carry
    "slot_steps",  # slot-steps trained
    "finished",  # examples that halted
    "real_tokens",  # prompt tokens the backbone's forward passes held
    "padded_tokens",  # positions they held, padding included
    "prompts_with_drops",  # admitted examples whose prompt lost demonstrations to the prompt budget
    "demonstrations_dropped",  # demonstrations those prompts lost
)


def new_counters() -> dict[str, int]:
    """Zeroed run-long counters."""
    return dict.fromkeys(COUNTERS, 0)


def counters_of_rank(saved: dict, world: int, rank: int) -> dict[str, int]:
    """This rank's counters from a checkpoint's ``training_counters`` (one dict per rank). Under another
    world size rank 0 takes the totals and the others start at 0, so the sums over ranks stay right."""
    if "ranks" not in saved:  # a single dict (checkpoints of earlier versions)
        return dict(saved)
    if saved["world_size"] == world:
        return dict(saved["ranks"][rank])
    return {k: sum(r.get(k, 0) for r in saved["ranks"]) if rank == 0 else 0 for k in COUNTERS}


def counter_metrics(totals: dict[str, float]) -> dict[str, float]:
    """The run-long training metrics from the counters (summed over ranks)."""
    per = lambda a, b: totals[a] / max(1, totals[b])  # noqa: E731
    out = {
        "train/encodes_per_example": per("encoded_rows", "admitted"),
        "train/encodes_per_slot_step": per("encoded_rows", "slot_steps"),
        "train/backbone_runs_per_example": per("backbone_runs", "admitted"),
        "train/prompts_with_drops": totals["prompts_with_drops"],
        "train/demonstrations_dropped": totals["demonstrations_dropped"],
    }
    if totals["real_tokens"]:
        out["train/backbone_real_tokens"] = totals["real_tokens"]
        out["train/backbone_padded_per_real"] = per("padded_tokens", "real_tokens")
    return out


class WindowMetrics(nn.Module):
    """Training metrics of one logging window: exact and cell accuracy and halting step of the slots
    that halted in it, halt accuracy of every slot-step, and examples finished per second."""

    def __init__(self):
        super().__init__()
        self.exact_acc, self.cell_acc, self.steps, self.halt_acc = (MeanMetric() for _ in range(4))
        self.finished = SumMetric()
        self.start = time.perf_counter()

    def update(self, done: Tensor, exact: Tensor, cells: Tensor, steps: Tensor, halt_right: Tensor) -> None:
        """Add one step: ``done`` [B] the slots that halted, their exactness, cell accuracy and step
        count; ``halt_right`` [B] whether each slot's halt logit agreed with its exactness."""
        self.exact_acc.update(exact[done].float())
        self.cell_acc.update(cells[done].float())
        self.steps.update(steps[done].float())
        self.halt_acc.update(halt_right.float())
        self.finished.update(done.sum().float())

    def compute(self) -> dict[str, Tensor]:
        """The window's metrics over all ranks (a collective call: every rank calls it at the same
        step), then a fresh window. Accuracies and steps only when a slot halted in the window."""
        finished = self.finished.compute()
        elapsed = max(1e-9, time.perf_counter() - self.start)
        out = {"train/halt_acc": self.halt_acc.compute(), "train/examples_per_s": finished / elapsed}
        if finished > 0:
            out |= {f"train/{k}": getattr(self, k).compute() for k in ("exact_acc", "cell_acc", "steps")}
        for metric in (self.exact_acc, self.cell_acc, self.steps, self.halt_acc, self.finished):
            metric.reset()
        self.start = time.perf_counter()
        return out


class EvalMetrics(nn.Module):
    """Evaluation metrics of one stage (val or test), each a ``MeanMetric`` that Lightning computes
    over all ranks and resets at the end of the epoch.

    exact_acc / cell_acc: after all steps. exact_acc_at_halt and steps: at the first step whose halt
    logit is > 0 (or the last): what a deployed model would answer and when. halt_acc: halt logit > 0
    agrees with exactness after all steps. loss: the training loss after all steps.
    exact_acc_step{k}: after k = 1, 2, 4 ... < steps supervision steps (the test-time compute curve).
    """

    NAMES = ("exact_acc", "exact_acc_at_halt", "cell_acc", "steps", "halt_acc", "loss")

    def __init__(self):
        super().__init__()
        self.means = nn.ModuleDict({name: MeanMetric() for name in self.NAMES})
        self.curve = nn.ModuleDict()  # "exact_acc_step{k}" -> MeanMetric, made when first reached

    def update_rollout(self, outputs: Iterable, labels: Tensor, steps: int, config) -> None:
        """Add a batch from the outputs of its ``steps`` supervision steps (``HybridReasoner.iterate``);
        ``config`` gives the loss (``loss``, ``halt_loss_weight``)."""
        halted = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        halt_step = torch.full((len(labels),), steps, device=labels.device)
        exact_at_halt = torch.zeros_like(halted)
        for k, out in enumerate(outputs, start=1):
            exact = exact_correct(out.logits, labels)
            stop = ~halted & ((out.halt_logits > 0) | (k == steps))  # the step a deployed model would stop at
            halt_step = torch.where(stop, k, halt_step)
            exact_at_halt = torch.where(stop, exact, exact_at_halt)
            halted |= stop
            if k & (k - 1) == 0 and k < steps:  # exact accuracy after 1, 2, 4, ... steps: what the recursion adds
                self.update_curve(k, exact)
        loss = example_loss(out.logits, labels, config.loss) + config.halt_loss_weight * halt_loss(
            out.halt_logits, exact
        )
        right = cell_right(out.logits, labels, IGNORE)[labels != IGNORE]
        self.update({"exact_acc": exact, "exact_acc_at_halt": exact_at_halt, "steps": halt_step, "loss": loss,
                     "cell_acc": right, "halt_acc": (out.halt_logits > 0) == exact})  # fmt: skip

    def update_curve(self, k: int, exact: Tensor) -> None:
        """Exact accuracy after step ``k``."""
        name = f"exact_acc_step{k}"
        if name not in self.curve:
            self.curve[name] = MeanMetric().to(exact.device)
        self.curve[name].update(exact.float())

    def update(self, values: dict[str, Tensor]) -> None:
        """Add a batch: per-example values of ``NAMES`` (``cell_acc``: one value per labelled cell)."""
        for name, value in values.items():
            self.means[name].update(value.float())

    def items(self, prefix: str) -> list[tuple[str, MeanMetric, str]]:
        """(logged name, metric, its attribute path below ``prefix``) of every metric with updates."""
        out = [(name, m, f"{prefix}.means.{name}") for name, m in self.means.items()]
        out += [(name, m, f"{prefix}.curve.{name}") for name, m in self.curve.items() if m.update_called]
        return out


def cell_right(logits: Tensor, labels: Tensor, ignore: int) -> Tensor:
    """[B, S] bool: the labelled cells whose argmax is right (False where unlabelled)."""
    return (logits.argmax(-1) == labels) & (labels != ignore)


def per_example_cell_acc(logits: Tensor, labels: Tensor, ignore: int) -> Tensor:
    """[B] fraction of each example's labelled cells that are right (0 when it has none)."""
    mask = labels != ignore
    return cell_right(logits, labels, ignore).sum(-1).float() / mask.sum(-1).clamp_min(1)
