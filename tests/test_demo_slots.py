"""``demo_slots``: ARC demonstration grids as slots of the core's sequence, read through an LLM or `none`."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.tasks import IGNORE, ArcAugmentation, ArcTask, PromptBudget, RulesTask, build_task
from hybrid_reason.tasks.arc import CANVAS, PAD
from hybrid_reason.utils.testing import tiny_backbone

SIDE, DEMOS = 5, 10  # ARC-AGI-1 tasks with every grid at most 5x5 have up to 10 demonstrations
CELLS = CANVAS * CANVAS


@pytest.fixture(scope="module")
def task():
    return ArcTask(max_grid_side=SIDE, demo_slots=True, demo_side=SIDE, max_demos=DEMOS)


@pytest.fixture(scope="module")
def rows(task):
    ds = task.load("train")
    return [ds[int(i)] for i in np.random.default_rng(0).choice(len(ds), size=12, replace=False)]


def demo_block(k: int, g: int) -> int:
    """First slot of demonstration k's input (g = 0) or output (g = 1) block."""
    return CELLS + (2 * k + g) * SIDE * SIDE


def expected_demo_cells(row: dict, aug: ArcAugmentation, shown: list[int]) -> dict[int, str]:
    """Slot -> the colour digit it must read: every cell of every demonstration shown, augmented."""
    cells = {}
    for k in shown:
        pair = row["demonstrations"][k]
        for g, grid in enumerate((aug.grid(pair["input"]), aug.grid(pair["output"]))):
            for (i, j), colour in np.ndenumerate(grid):
                cells[demo_block(k, g) + i * SIDE + j] = str(colour)
    return cells


def test_num_slots_and_options(task):
    assert task.num_slots == CELLS + DEMOS * 2 * SIDE * SIDE
    assert ArcTask().num_slots == CELLS and ArcTask(demo_slots=True).num_slots == CELLS + 4 * 2 * 100
    for options, named in (
        ({"demo_side": 0}, "demo_side"),
        ({"demo_side": 31}, "demo_side"),
        ({"max_demos": 0}, "max_demos"),
    ):
        with pytest.raises(HybridReasonError, match=named):
            build_task("arc1", demo_slots=True, **options)


def test_every_demonstration_cell_has_a_slot_that_reads_its_digit(task, rows):
    rng = np.random.default_rng(1)
    plain = ArcTask(max_grid_side=SIDE)
    for row in rows:
        for train in (True, False):  # dihedral x colours, with and without the query's translation
            aug = task.sample_augmentation(rng, train=train)
            ex = task.render(row, aug)
            assert len(ex.slot_spans) == len(ex.labels) == task.num_slots
            want = expected_demo_cells(row, aug, list(range(len(row["demonstrations"]))))
            got = {j: ex.text[s[0] : s[1]] for j, s in enumerate(ex.slot_spans) if s is not None and j >= CELLS}
            assert got == want
            assert all(label == IGNORE for label in ex.labels[CELLS:])
            canvas = plain.render(row, aug)  # the canvas is what it is without demo slots
            assert ex.text == canvas.text and ex.slot_spans[:CELLS] == canvas.slot_spans
            assert ex.labels[:CELLS] == canvas.labels


def test_decode_of_a_perfect_prediction_round_trips(task, rows):
    rng = np.random.default_rng(2)
    for row in rows:
        ex = task.render(row, task.sample_augmentation(rng, train=True))
        labels = np.asarray(ex.labels)
        assert task.decode(np.where(labels == IGNORE, PAD, labels), ex.meta) == task.target(row)
    with pytest.raises(ValueError, match=f"{task.num_slots} slot predictions"):
        task.decode(np.zeros(CELLS, dtype=int), ex.meta)  # the canvas alone is not this task's prediction


def test_demonstrations_dropped_for_the_budget_keep_their_slots_empty(task, rows):
    row = max(rows, key=lambda r: len(r["demonstrations"]))
    full = task.render(row)
    ex = task.render(row, budget=PromptBudget(len(full.text) - 1))
    dropped = ex.meta["dropped_demonstrations"]
    assert dropped >= 1
    sizes = [len(np.ravel(d["input"])) + len(np.ravel(d["output"])) for d in row["demonstrations"]]
    gone = sorted(range(len(sizes)), key=lambda k: -sizes[k])[:dropped]  # the largest go first
    shown = [k for k in range(len(sizes)) if k not in gone]
    got = {j: ex.text[s[0] : s[1]] for j, s in enumerate(ex.slot_spans) if s is not None and j >= CELLS}
    assert got == expected_demo_cells(row, ArcAugmentation(), shown)
    for k in gone:
        assert all(s is None for s in ex.slot_spans[demo_block(k, 0) : demo_block(k + 1, 0)])


def test_demonstrations_that_do_not_fit_are_errors_at_load_time_naming_the_task():
    with pytest.raises(
        HybridReasonError,
        match=r"ARC task '\w+' .*demonstration \d+ (input|output) is \dx\d, larger "
        r"than demo_side 4.*more queries",
    ):
        ArcTask(max_grid_side=SIDE, demo_slots=True, demo_side=4, max_demos=DEMOS).load("train")
    with pytest.raises(HybridReasonError, match=r"ARC task '\w+' .*demonstrations, more than max_demos 3"):
        ArcTask(max_grid_side=SIDE, demo_slots=True, demo_side=SIDE, max_demos=3).load("test")


def test_rules_with_demo_slots_loads_and_renders():
    options = dict(num_train_rules=4, num_eval_rules=2, train_examples_per_rule=2, max_side=4, demo_slots=True)
    with pytest.raises(HybridReasonError, match="rules-train-0001.*output is 8x12, larger than demo_side 10"):
        RulesTask(**options).load("train")  # a rule that scales its input grows past the default demo_side
    task = RulesTask(**options, demo_side=30)  # rules may grow a side up to 30 (the canvas)
    assert task.num_slots == CELLS + 4 * 2 * 30 * 30  # max_demos (4): the generator's cap and the slot pairs
    for split in ("train", "test"):
        ds = task.load(split)
        ex = task.render(ds[0], task.sample_augmentation(np.random.default_rng(0), train=True))
        demo_cells = [s for s in ex.slot_spans[CELLS:] if s is not None]
        assert len(demo_cells) == sum(np.size(d["input"]) + np.size(d["output"]) for d in ds[0]["demonstrations"])
        assert all(ex.text[a:b] in "0123456789" for a, b in demo_cells)


# ---------------------------------------------------------------------------- the model sees them
@pytest.fixture(scope="module")
def llm_path(tmp_path_factory) -> str:
    return tiny_backbone(str(tmp_path_factory.mktemp("bb") / "qwen"), hidden_size=32, num_layers=2, max_positions=2048)


def make_model(backbone: str, task: ArcTask) -> HybridReasoner:
    torch.manual_seed(0)
    config = HybridReasonerConfig(
        backbone={"name": backbone},
        core={"d_model": 32, "num_heads": 2, "num_layers": 1, "n": 1, "T": 1},
        answer_vocab_size=task.vocab_size,
        num_slots=task.num_slots,
        halt_max_steps=1,
    )
    return HybridReasoner(config).eval()


@pytest.mark.parametrize("backbone", ["none", "llm"])
def test_the_core_sees_every_demonstration_cell(task, rows, backbone, llm_path):
    model = make_model(llm_path if backbone == "llm" else "none", task)
    row = rows[0]
    aug = task.sample_augmentation(np.random.default_rng(3), train=True)
    ex = task.render(row, aug)
    enc = model.encode([ex.text], [ex.slot_spans])
    cells = expected_demo_cells(row, aug, list(range(len(row["demonstrations"]))))
    assert sorted(np.nonzero(~enc.empty[0, CELLS:].numpy())[0] + CELLS) == sorted(cells)
    bb = model.backbone
    if backbone == "none":
        for slot, digit in cells.items():
            assert int(enc.features[0, slot].argmax()) == ord(digit) and enc.features[0, slot].sum() == 1
    else:  # a one-character span pools the one token over that character
        batch = bb.tokenizer([ex.text], return_offsets_mapping=True)
        states = bb.hidden_states(
            torch.tensor(batch["input_ids"]), torch.ones(1, len(batch["input_ids"][0]), dtype=torch.long)
        )
        offsets = batch["offset_mapping"][0]
        for slot in cells:
            a = ex.slot_spans[slot][0]
            token = next(t for t, (s, e) in enumerate(offsets) if s <= a < e)
            torch.testing.assert_close(enc.features[0, slot], states[0, token].float())


def flip_demo_cell(row: dict) -> dict:
    """The row with one cell of its first demonstration's input recoloured."""
    pair = row["demonstrations"][0]
    grid = [list(r) for r in pair["input"]]
    grid[0][0] = (grid[0][0] + 1) % 10
    return row | {"demonstrations": [{"input": grid, "output": pair["output"]}, *row["demonstrations"][1:]]}


def test_without_an_llm_only_demo_slots_carry_the_demonstrations_to_the_answer(task, rows):
    plain = ArcTask(max_grid_side=SIDE)
    changed = {}
    for name, t in (("demo_slots", task), ("plain", plain)):
        model = make_model("none", t)
        logits = []
        for row in (rows[0], flip_demo_cell(rows[0])):
            ex = t.render(row)
            with torch.no_grad():
                logits.append(model(texts=[ex.text], slot_spans=[ex.slot_spans]).logits[0, :CELLS])
        changed[name] = not torch.equal(*logits)
    assert changed == {"demo_slots": True, "plain": False}  # the core attends from the canvas to the demonstrations
