"""``rules``: ARC-style puzzles generated offline, each with a hidden rule, 2-4 demonstrations and a query.

A rule is a composition of 1-3 primitives of ``rule_library`` with fixed parameters (a fixed set of
tasks, as ARC has), drawing unlimited fresh inputs. Rows have ARC's exact columns (``ARC_FEATURES``)
and ``RulesTask`` is an ``ArcTask``: rendering, the 30x30 canvas, augmentations, decoding and voting are
ARC's own code, so a model trained here evaluates on any ARC folder and the other way round.

Splits (every row a pure function of the seed, the options and its indices; ``rules-train-0042`` is
the same rule whatever ``num_train_rules`` is):

- ``train``: ``train_examples_per_rule`` rows per training rule, each with its own demonstrations and
  query (with ``split_mode: trm``, the same rows as ``trm_protocol``);
- ``test_seen``: per training rule, one ARC-like task (fixed demonstrations, ``test_examples_per_rule``
  queries) on fresh inputs;
- ``test_unseen`` (alias ``test`` and ``validation``, as ARC's evaluation tasks): the same for the
  evaluation rules, whose primitive combinations (the set of primitive names) never occur in training;
- ``trm_protocol``: ``train`` plus each evaluation task's demonstrations, each held out as the query
  with the others in context, as TRM trains on ARC.

Which combinations are for evaluation is a hash of (seed, combination): 30 % of them. Which inputs may
be test queries is a hash of the grid: 20 % of grids, and no other row ever uses one as an input, so
test queries never occur in training. A task is kept only when it is inferable: no simpler rule (the
identity, any single primitive with any setting, any two-step sub-rule of a three-step rule) explains
its demonstrations, a one-primitive rule has no rival setting that answers a query differently, the
query's colours occur in the demonstrations (its output's: there or in its input), and no query's
output equals its input.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
from datasets import Dataset, concatenate_datasets

from ..errors import HybridReasonError
from . import rule_inputs, rule_library, rule_primitives
from .arc import ArcTask
from .arc_data import ARC_FEATURES, query_rows
from .base import code_version
from .rule_inputs import GENERATORS, grid_share
from .rule_library import PRIMITIVES, Rule, Step, allowed_styles, explaining, simpler_explanation
from .rule_primitives import COLOURS, MAX_OUT, Pair, Undefined

SIDES = (3, 10)  # the allowed range of min_side / max_side
EVAL_SHARE = 0.3  # share of primitive combinations reserved for evaluation rules
TEST_INPUT_SHARE = 0.2  # share of input grids that may only be test queries
FAMILIES = {"train": 1, "eval": 2}  # rng keys
KINDS = {"probe": 0, "train": 1, "test": 2}
RULE_ATTEMPTS, PROBE_ATTEMPTS, TASK_ATTEMPTS, QUERY_ATTEMPTS, INPUT_ATTEMPTS = 2000, 8, 200, 10, 20
SPLIT_NAMES = ("train", "trm_protocol", "test_seen", "test_unseen", "test", "validation")
ALIASES = {"test": "test_unseen", "validation": "test_unseen"}


@dataclass(frozen=True)
class RuleConfig:
    """What shapes a rule and its tasks: input sides, demonstrations per task, primitives per rule."""

    min_side: int = 3
    max_side: int = 10
    min_demos: int = 2
    max_demos: int = 4
    min_primitives: int = 1
    max_primitives: int = 3
    max_out: int = MAX_OUT  # the canvas side: no output may be larger


def task_id(family: str, index: int) -> str:
    """The stable id of rule ``index`` of ``family`` ("train" or "eval"): ``rules-train-0042``."""
    return f"rules-{family}-{index:04d}"


def combination_family(seed: int, names: tuple[str, ...] | list[str]) -> str:
    """ "eval" for the 30 % of primitive combinations (sets of names) kept for evaluation, else "train"."""
    key = f"{seed}:{'+'.join(sorted(names))}".encode()
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64
    return "eval" if u < EVAL_SHARE else "train"


# ---- rules --------------------------------------------------------------------------------------
def _draw_rule(rng: np.random.Generator, seed: int, family: str, config: RuleConfig) -> Rule | None:
    """One candidate rule of ``family`` (None when the draw does not fit the family or the options)."""
    names = list(PRIMITIVES)
    depth = int(rng.integers(config.min_primitives, config.max_primitives + 1))
    picked = [names[int(i)] for i in rng.choice(len(names), size=depth, replace=False)]
    if combination_family(seed, picked) != family:
        return None
    palette = tuple(sorted(int(c) for c in rng.choice(COLOURS, size=int(rng.integers(2, 5)), replace=False)))
    steps = tuple(Step(n, PRIMITIVES[n].sample(rng, palette)) for n in picked)
    styles = allowed_styles(steps)
    if not styles:
        return None
    rule = Rule(steps, styles[int(rng.integers(len(styles)))], palette)
    return rule if rule.growth() * config.min_side <= config.max_out else None


@lru_cache(maxsize=8192)
def sample_rule(seed: int, family: str, index: int, config: RuleConfig) -> Rule:
    """Rule ``index`` of ``family``: drawn from (seed, family, index) alone, kept once a probe task
    built with it passes every check."""
    rng = np.random.default_rng([seed, FAMILIES[family], index])
    for attempt in range(RULE_ATTEMPTS):
        rule = _draw_rule(rng, seed, family, config)
        probe = np.random.default_rng([seed, FAMILIES[family], index, KINDS["probe"], attempt])
        if rule is not None and make_task(rule, probe, config, 1, "train", PROBE_ATTEMPTS) is not None:
            return rule
    raise HybridReasonError(
        f"rules: found no {family} rule {index} in {RULE_ATTEMPTS} draws; widen min_primitives/max_primitives "
        f"(now {config.min_primitives}/{config.max_primitives}) or min_side/max_side"
    )


# ---- tasks --------------------------------------------------------------------------------------
def draw_pair(rule: Rule, rng: np.random.Generator, sides: tuple[int, int], bucket: str, seen: set) -> Pair | None:
    """A fresh input of the rule's style in the input ``bucket`` ("train" or "test") and its output;
    None after ``INPUT_ATTEMPTS`` failures. ``seen`` (grid keys) keeps inputs distinct."""
    for _ in range(INPUT_ATTEMPTS):
        h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        grid = GENERATORS[rule.style](rng, h, w, rule.palette)
        key = bytes(grid.shape) + grid.tobytes()
        if not grid.any() or key in seen or (grid_share(grid) < TEST_INPUT_SHARE) != (bucket == "test"):
            continue
        try:
            out = rule.apply(grid)
        except Undefined:
            continue
        if not out.any():  # an all-background output
            continue
        seen.add(key)
        return grid, out
    return None


def query_ok(demos: list[Pair], query: Pair) -> bool:
    """A query is fair: its output differs from its input, its input colours occur in the
    demonstrations' inputs and its output colours in the demonstrations' outputs or its own input."""
    q_in, q_out = query
    if q_in.shape == q_out.shape and np.array_equal(q_in, q_out):
        return False
    seen_in = set(np.unique(np.concatenate([i.ravel() for i, _ in demos]))) | {0}
    seen_out = set(np.unique(np.concatenate([o.ravel() for _, o in demos]))) | set(np.unique(q_in)) | {0}
    return set(np.unique(q_in)) <= seen_in and set(np.unique(q_out)) <= seen_out


def _queries(
    rule: Rule,
    rng: np.random.Generator,
    sides: tuple[int, int],
    demos: list[Pair],
    count: int,
    bucket: str,
    seen: set,
    rivals: list,
) -> list[Pair] | None:
    """``count`` fair queries that no rival setting answers differently, or None."""
    queries: list[Pair] = []
    for _ in range(count * QUERY_ATTEMPTS):
        pair = draw_pair(rule, rng, sides, bucket, seen)
        if pair is not None and query_ok(demos, pair) and simpler_explanation(rule, demos, [pair], rivals) is None:
            queries.append(pair)
            if len(queries) == count:
                return queries
    return None


def make_task(
    rule: Rule, rng: np.random.Generator, config: RuleConfig, num_queries: int, bucket: str, attempts: int
) -> dict | None:
    """An inferable ARC task of ``rule``: ``{"train": demonstrations, "test": queries}``, pairs as
    ``{"input", "output"}`` lists; queries' inputs from ``bucket``. None after ``attempts`` failures."""
    sides = (config.min_side, min(config.max_side, config.max_out // rule.growth()))
    for _ in range(attempts):
        seen: set = set()
        demos = [
            draw_pair(rule, rng, sides, "train", seen)
            for _ in range(int(rng.integers(config.min_demos, config.max_demos + 1)))
        ]
        if any(d is None for d in demos):
            continue
        rivals = explaining(demos)
        if simpler_explanation(rule, demos, [], rivals) is not None:
            continue
        queries = _queries(rule, rng, sides, demos, num_queries, bucket, seen, rivals)
        if queries is not None:
            return {"train": _as_json(demos), "test": _as_json(queries)}
    return None


def _as_json(pairs: list[Pair]) -> list[dict]:
    """Pairs as ARC JSON: ``[{"input": rows, "output": rows}]``."""
    return [{"input": i.tolist(), "output": o.tolist()} for i, o in pairs]


@lru_cache(maxsize=2048)
def fixed_task(seed: int, family: str, index: int, config: RuleConfig, num_queries: int) -> dict:
    """The fixed test task of a rule: its demonstrations and ``num_queries`` queries from the test bucket."""
    rng = np.random.default_rng([seed, FAMILIES[family], index, KINDS["test"]])
    return _required(
        make_task(sample_rule(seed, family, index, config), rng, config, num_queries, "test", TASK_ATTEMPTS),
        family,
        index,
    )


def train_task(seed: int, index: int, config: RuleConfig, example: int) -> dict:
    """Training example ``example`` of training rule ``index``: its own demonstrations and one query."""
    rng = np.random.default_rng([seed, FAMILIES["train"], index, KINDS["train"], example])
    return _required(
        make_task(sample_rule(seed, "train", index, config), rng, config, 1, "train", TASK_ATTEMPTS), "train", index
    )


def _required(task: dict | None, family: str, index: int) -> dict:
    """``task``, or a RuntimeError: a probed rule failing every attempt is a bug of the library."""
    if task is None:
        raise RuntimeError(f"{task_id(family, index)}: no inferable task in {TASK_ATTEMPTS} attempts")
    return task


# ---- rows ---------------------------------------------------------------------------------------
def rule_rows(part: str, seed: int, index: int, config: RuleConfig, examples: int) -> list[dict]:
    """The ARC-form rows of one rule for one part of a split: "train" (``examples`` rows of training
    rule ``index``), "seen" / "unseen" (the test task of training / evaluation rule ``index``) or "trm"
    (the evaluation task's demonstrations, each held out)."""
    family = "train" if part in ("train", "seen") else "eval"
    tid, origin = task_id(family, index), "rules:" + sample_rule(seed, family, index, config).describe()
    if part == "train":
        return [
            row | {"id": f"rules/{tid}/train{j}", "query": f"train{j}"}
            for j in range(examples)
            for row in query_rows("rules", tid, train_task(seed, index, config, j), origin, "tests")
        ]
    task = fixed_task(seed, family, index, config, examples)
    return query_rows("rules", tid, task, origin, "demos" if part == "trm" else "tests")


def generate_rows(
    parts: str,
    seed: int,
    num_train_rules: int,
    num_eval_rules: int,
    train_examples: int,
    test_examples: int,
    min_side: int,
    max_side: int,
    min_demos: int,
    max_demos: int,
    min_primitives: int,
    max_primitives: int,
    max_out: int,
    version: str,
) -> Iterator[dict]:
    """Yield the rows of ``parts`` ("train", "trm", "seen", "unseen", joined by "+"), rule by rule.
    Every option is an argument, so ``Dataset.from_generator``'s cache keys on all of them."""
    config = RuleConfig(min_side, max_side, min_demos, max_demos, min_primitives, max_primitives, max_out)
    counts = {
        "train": (num_train_rules, train_examples),
        "seen": (num_train_rules, test_examples),
        "unseen": (num_eval_rules, test_examples),
        "trm": (num_eval_rules, test_examples),
    }
    for part in parts.split("+"):
        rules, examples = counts[part]
        for index in range(rules):
            yield from rule_rows(part, seed, index, config, examples)


GENERATOR_VERSION = code_version(
    rule_primitives, rule_inputs, rule_library, sys.modules[__name__]
)  # part of the datasets cache key


# ---- the task family ----------------------------------------------------------------------------
@dataclass
class RulesTask(ArcTask):
    """Generated ARC-style rule induction, rendered, decoded and scored exactly as ``arc1``.

    Options:
        num_train_rules / num_eval_rules: the fixed sets of training and evaluation rules.
        train_examples_per_rule: training rows per training rule (each with fresh demonstrations).
        test_examples_per_rule: queries of each rule's fixed test task (``test_seen``, ``test_unseen``).
        min_demos / max_demos: demonstrations per task (2-5).  min_side / max_side: input sides (3-10).
        min_primitives / max_primitives: primitives per rule (1-3).  seed: generation seed.
        split_mode: "strict" (default): ``train`` = the training rules' rows; "trm": ``train`` =
            ``trm_protocol`` (evaluation demonstrations too, each held out).
        translate: random canvas translation for training augmentations (as ``arc1``).
        on_too_long: a query that cannot fit the prompt budget is an "error" or is "skip"ped (as ``arc1``).
        canvas_side: the answer canvas (as ``arc1``'s), at least ``max_side``; rules whose outputs could
            outgrow it (scale, tile) get smaller inputs or are not drawn. 30 (the default) keeps every
            rule and task id of the full canvas; a smaller canvas draws a different set of rules.
    """

    name: ClassVar[str] = "rules"
    source: str = field(default="generate", init=False)
    split_mode: Literal["trm", "strict"] = "strict"
    require_test_outputs: bool = field(default=True, init=False)
    exclude_arc1_eval: bool = field(default=False, init=False)
    max_grid_side: int | None = field(default=None, init=False)  # ARC source filters: rules has max_side
    task_ids: list[str] | str | None = field(default=None, init=False)
    num_train_rules: int = 400
    num_eval_rules: int = 200
    train_examples_per_rule: int = 8
    test_examples_per_rule: int = 2
    min_demos: int = 2
    max_demos: int = 4
    min_side: int = 3
    max_side: int = 10
    min_primitives: int = 1
    max_primitives: int = 3
    seed: int = 0
    _parts: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for option, low, high in (
            ("min_side", *SIDES),
            ("max_side", *SIDES),
            ("min_demos", 2, 5),
            ("max_demos", 2, 5),
            ("min_primitives", 1, 3),
            ("max_primitives", 1, 3),
            ("num_train_rules", 1, None),
            ("num_eval_rules", 1, None),
            ("train_examples_per_rule", 1, None),
            ("test_examples_per_rule", 1, None),
            ("seed", 0, None),
        ):
            _check_range(option, getattr(self, option), low, high)
        for low, high in (("min_side", "max_side"), ("min_demos", "max_demos"), ("min_primitives", "max_primitives")):
            if getattr(self, low) > getattr(self, high):
                raise HybridReasonError(
                    f"rules: option {low!r} ({getattr(self, low)}) must not exceed {high!r} ({getattr(self, high)})"
                )
        for option, allowed in (("split_mode", ("trm", "strict")), ("on_too_long", ("error", "skip"))):
            if getattr(self, option) not in allowed:
                raise HybridReasonError(
                    f"rules: option {option!r} must be one of {allowed}, got {getattr(self, option)!r}"
                )
        super().__post_init__()

    def _check_canvas(self) -> None:
        """Every input fits on the canvas (outputs are kept on it by construction)."""
        if self.max_side > self.canvas_side:
            raise HybridReasonError(
                f"rules: option 'canvas_side' ({self.canvas_side}) must be at least 'max_side' ({self.max_side})"
            )

    @property
    def splits(self) -> tuple[str, ...]:
        """train, trm_protocol, test_seen, test_unseen, and test / validation (aliases of test_unseen)."""
        return SPLIT_NAMES

    @property
    def config(self) -> RuleConfig:
        """The options that shape rules and tasks."""
        return RuleConfig(
            self.min_side,
            self.max_side,
            self.min_demos,
            self.max_demos,
            self.min_primitives,
            self.max_primitives,
            self.canvas_side,
        )

    def rule(self, family: str, index: int) -> Rule:
        """Rule ``index`` of "train" or "eval" (any index: it does not depend on the rule counts)."""
        return sample_rule(self.seed, family, index, self.config)

    def rule_of(self, task_id_: str) -> Rule:
        """The rule behind a task id such as ``rules-eval-0007``."""
        _, family, index = task_id_.split("-")
        return self.rule(family, int(index))

    def tasks(self) -> tuple[dict, dict]:
        """(training, evaluation) test tasks in ``ArcTask.tasks`` form: task id -> (task, origin)."""
        out = []
        for family, count in (("train", self.num_train_rules), ("eval", self.num_eval_rules)):
            out.append(
                {
                    task_id(family, k): (
                        fixed_task(self.seed, family, k, self.config, self.test_examples_per_rule),
                        "rules:" + self.rule(family, k).describe(),
                    )
                    for k in range(count)
                }
            )
        return out[0], out[1]

    def _build(self, split: str) -> Dataset:
        """Rows of ``split``: aliases load the split they stand for; ``trm_protocol`` joins the training
        rows and the held-out evaluation demonstrations."""
        if split in ALIASES or (split == "train" and self.split_mode == "trm"):
            return self.load(ALIASES.get(split, "trm_protocol"))
        if split == "trm_protocol":
            return concatenate_datasets([self._part("train"), self._part("trm")])
        return self._part({"train": "train", "test_seen": "seen", "test_unseen": "unseen"}[split])

    def _part(self, part: str) -> Dataset:
        """One part of the rows ("train", "trm", "seen", "unseen"), built once (and cached on disk by
        ``datasets``, keyed on every option and the generator's source)."""
        if part not in self._parts:
            kwargs = dict(
                parts=part,
                seed=self.seed,
                num_train_rules=self.num_train_rules,
                num_eval_rules=self.num_eval_rules,
                train_examples=self.train_examples_per_rule,
                test_examples=self.test_examples_per_rule,
                min_side=self.min_side,
                max_side=self.max_side,
                min_demos=self.min_demos,
                max_demos=self.max_demos,
                min_primitives=self.min_primitives,
                max_primitives=self.max_primitives,
                max_out=self.canvas_side,
                version=GENERATOR_VERSION,
            )
            self._parts[part] = Dataset.from_generator(generate_rows, gen_kwargs=kwargs, features=ARC_FEATURES)
        return self._parts[part]


def _check_range(option: str, value: int, low: int, high: int | None) -> None:
    """A HybridReasonError naming ``option`` when ``value`` is outside [low, high]."""
    if value < low or (high is not None and value > high):
        bounds = f"in {low}..{high}" if high is not None else f">= {low}"
        raise HybridReasonError(f"rules: option {option!r} must be {bounds}, got {value}")
