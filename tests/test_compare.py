"""Suites: typed entries with named errors, a whole tiny suite end to end, no half-written report."""

import glob
import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

import hybrid_reason  # noqa: F401
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.evaluation import suite as C
from hybrid_reason.evaluation import systems as R
from hybrid_reason.evaluation.commands import compare_main
from hybrid_reason.tasks import build_task
from hybrid_reason.utils.testing import CHAT_TEMPLATE

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SORT = {"name": "sort", "length": 6, "min_length": 4, "num_train": 50, "num_validation": 10, "num_test": 30}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny backbone, a recursive model, a fixed-depth one (T = n = N_sup = 1) and a deep one (unrolled
    core, N_sup = 1), trained on nothing."""
    from hybrid_reason.utils.testing import tiny_backbone

    root = tmp_path_factory.mktemp("suite")
    backbone = tiny_backbone(str(root / "bb"), hidden_size=32, num_layers=2, max_positions=1024)
    task = build_task(**SORT)
    paths = {}
    for name, (T, n, N) in {"hybrid": (2, 2, 3), "fixed": (1, 1, 1), "deep": (2, 1, 1)}.items():
        config = HybridReasonerConfig(
            backbone={"name": backbone, "hidden_layer": 1},
            task=SORT,
            core={"d_model": 32, "num_heads": 4, "num_layers": 1, "n": n, "T": T, "unrolled": name == "deep"},
            answer_vocab_size=task.vocab_size,
            num_slots=task.num_slots,
            halt_max_steps=N,
        )
        torch.manual_seed(0)
        HybridReasoner(config).save_pretrained(root / name)
        paths[name] = str(root / name)
    paths["backbone"] = backbone
    return paths


def write_suite(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def tiny_suite(models, **extra):
    return {
        "name": "tiny",
        "limit": 6,
        "description": "A tiny suite.",
        "threads": 1,
        "runs": os.path.join(os.path.dirname(models["hybrid"]), "runs"),  # the suite's feature cache: not in the repo
        **extra,
        "systems": [
            {"name": "hybrid", "model": models["hybrid"], "curve_steps": 4},
            {"name": "fixed depth", "kind": "fixed-depth", "model": models["fixed"]},
            {
                "name": "cot",
                "kind": "cot",
                "limit": 3,
                "max_new_tokens": 8,
                "chat_template": CHAT_TEMPLATE,
                "fallback_limit": 2,
            },
            {
                "name": "direct",
                "kind": "direct",
                "limit": 3,
                "max_new_tokens": 4,
                "chat_template": CHAT_TEMPLATE,
                "fallback_limit": None,
            },
        ],
    }


# ------------------------------------------------------------------------------ suite files
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(puzzles=5), r"suite .*: unknown key 'puzzles'; known keys: name, systems"),
        (
            lambda s: s["systems"][2].update(max_tokens=5),
            r"systems\[2\]: unknown key 'max_tokens'; known keys: name, kind",
        ),
        (lambda s: s["systems"][0].update(steps="many"), r"systems\[0\]\.steps: 'many' is not int > 0 \| null"),
        (
            lambda s: s["systems"][1].update(kind="tree"),
            r"systems\[1\]\.kind: 'tree' is not one of hybrid, fixed-depth, deep, no-llm, sft, cot, direct",
        ),
        (lambda s: s["systems"][0].pop("model"), r"systems\[0\]: give either model .* or recipe"),
        (lambda s: s["systems"][0].update(recipe="r.yaml"), r"systems\[0\]: give either model .* or recipe .*not both"),
        (lambda s: s["systems"][0].update(overrides=["--x 1"]), r"systems\[0\]: overrides need a recipe"),
        (lambda s: s["systems"][0].update(kind="deep", recipe=3), r"systems\[0\]\.recipe: 3 is not str \| null"),
        (lambda s: s.update(seeds=[0, "one"]), r"suite .*\.seeds: \[0, 'one'\] is not"),
        (lambda s: s["systems"][2].update(fallback_limit=0), r"systems\[2\]\.fallback_limit: 0 is not int > 0 \| null"),
        (
            lambda s: s["systems"].append({"name": "ft", "kind": "sft", "lora_rank": 0}),
            r"systems\[4\]\.lora_rank: 0 is not int > 0",
        ),
        (
            lambda s: s["systems"].append({"name": "ft", "kind": "sft", "epochs": 3}),
            r"systems\[4\]: unknown key 'epochs'; known keys: name, kind, model, limit, dtype, chat_template, .*max_steps",
        ),
        (lambda s: s["systems"][1].update(name="hybrid"), r"duplicate system name 'hybrid'"),
        (lambda s: s.update(systems=[]), r"systems: expected a non-empty list"),
        (lambda s: s.update(limit=0), r"suite .*\.limit: 0 is not int > 0 \| null"),
        (lambda s: s["systems"][2].update(attempts=0), r"systems\[2\]\.attempts: 0 is not int > 0"),
        (lambda s: s["systems"][3].update(temperature="hot"), r"systems\[3\]\.temperature: 'hot' is not float"),
        (lambda s: s["systems"][2].update(attempts=3), r"systems\[2\]: attempts=3 needs temperature > 0"),
        (lambda s: s["systems"][3].update(dtype="float8"), r"systems\[3\]\.dtype: 'float8' is not one of float32"),
    ],
)
def test_suite_errors_name_the_culprit(tmp_path, change, message):
    data = tiny_suite({"hybrid": "h", "fixed": "f"})
    change(data)
    with pytest.raises(ValueError, match=message):
        C.load_suite(write_suite(tmp_path / "s.yaml", data))


def test_committed_suites_are_valid():
    paths = sorted(glob.glob(os.path.join(ROOT, "eval", "suites", "*.yaml")))
    needs = {  # what each committed suite compares (issue 12 names the evidence suites' systems)
        "cpu_demo": {"hybrid", "fixed-depth", "deep", "no-llm", "sft", "cot", "direct"},
        "arc1_gpu": {"hybrid", "fixed-depth", "cot", "direct"},
        "sudoku_gpu": {"hybrid", "fixed-depth", "cot", "direct"},
        "evidence_incontext": {"hybrid", "no-llm", "sft", "cot", "direct"},
        "evidence_incontext_seen": {"hybrid", "no-llm"},
        "evidence_depth": {"hybrid", "fixed-depth", "deep", "no-llm", "sft", "cot"},
        "evidence_arc_small": {"hybrid", "no-llm"},
    }
    assert {os.path.splitext(os.path.basename(p))[0] for p in paths} >= set(needs) - {"evidence_incontext_seen"}
    for path in paths:
        suite = C.load_suite(path)
        assert {s.kind for s in suite.systems} >= needs[suite.name], path
    cpu = C.load_suite(os.path.join(ROOT, "eval", "suites", "cpu_demo.yaml"))
    assert {s.kind for s in cpu.systems} >= {"hybrid", "fixed-depth", "deep", "sft", "cot", "direct"}
    assert cpu.seeds == [0, 1, 2] and all(s.recipe == "recipes/demo_cpu.yaml" for s in cpu.systems[:3])


# ------------------------------------------------------------------------------ running a suite
def test_compare_scores_another_split_with_chosen_systems_and_task_options_keep_the_puzzles(models, tmp_path):
    suite = write_suite(tmp_path / "tiny.yaml", tiny_suite(models, task=SORT))
    out = tmp_path / "seen"
    argv = ["--suite", suite, "--out", str(out), "--progress", "false", "--split", "validation"]
    reports = compare_main([*argv, "--systems", "[hybrid]"])
    assert [r.name for r in reports] == ["hybrid"] and reports[0].puzzles == 6
    assert json.loads((out / "results.json").read_text())["split"] == "validation"
    with pytest.raises(HybridReasonError, match="no system named 'cot2'; it has hybrid, fixed depth, cot, direct"):
        compare_main([*argv, "--systems", "[hybrid, cot2]"])
    data = tiny_suite(models, task=SORT)
    data["systems"][0]["task_options"] = {"seed": 1}  # other puzzles under the same ids: refused
    with pytest.raises(HybridReasonError, match="task_options change which puzzles"):
        compare_main(["--suite", write_suite(tmp_path / "other.yaml", data), *argv[2:]])


def test_a_tiny_suite_runs_every_system_on_the_same_puzzles(models, tmp_path):
    out = tmp_path / "results"
    reports = compare_main(
        ["--suite", write_suite(tmp_path / "tiny.yaml", tiny_suite(models)), "--out", str(out), "--progress", "false"]
    )
    cot, direct = reports[2], reports[4]
    assert cot.metrics["unfinished"] > 0.1 and direct.metrics["unfinished"] > 0.1  # a random LM rarely stops
    # cot hit its 8-token cap too often: its first 2 puzzles ran again at 4 x 8; direct's rerun is off (null)
    assert [r.name for r in reports] == ["hybrid", "fixed depth", "cot", "cot (32 tokens)", "direct"]
    assert [r.puzzles for r in reports] == [6, 6, 3, 2, 3]
    assert reports[3].max_new_tokens == 32 and reports[3].fallback_of == "cot" and reports[3].tokens_per_puzzle > 8
    assert set(reports[3].solved) == set(list(cot.solved)[:2])  # the first puzzles of the same list
    assert set(cot.solved) <= set(reports[0].solved)  # the LLMs ran the first puzzles of the same list
    assert sorted(os.listdir(out)) == ["report.md", "report.png", "results.json", "systems"]
    assert sorted(os.listdir(out / "systems")) == ["cot", "cot_32_tokens", "direct", "fixed_depth", "hybrid"]
    report = (out / "report.md").read_text()
    assert (
        "| system | kind | seeds | puzzles | exact | exact on the 3 common | cell accuracy | trainable params |"
        in report
    )
    for name in (
        "| hybrid | hybrid | — | 6 |",
        "| fixed depth | fixed-depth | — | 6 |",
        "| cot | cot | — | 3 |",
        "| cot (32 tokens) | cot | — | 2 | 0.0% | — |",  # a rerun is not scored on the common puzzles
        "| direct | direct | — | 3 |",
    ):
        assert name in report
    assert "## Test-time compute: hybrid" in report and "| 4 (> N_sup) |" in report
    assert "hybrid-reason compare --suite" in report and "1 thread," in report
    assert "| system | puzzles | token cap (max_new_tokens) | replies that hit the cap |" in report  # the CoT budget
    assert f"| cot | 3 | 8 | {100 * cot.metrics['unfinished']:.1f}% |" in report
    assert "so its first 2 puzzles ran again with 32 tokens (`cot (32 tokens)`)" in report
    assert "## Training" not in report and "## Per seed" not in report  # nothing trained here
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    hybrid, fixed, cot_row = results["systems"][:3]
    assert hybrid["trainable_params"] == fixed["trainable_params"] > 0  # T and n do not change the parameters
    assert hybrid["flops_per_puzzle"] > fixed["flops_per_puzzle"] > hybrid["backbone_flops_per_puzzle"]
    assert cot_row["trainable_params"] == 0 and 0 < cot_row["tokens_per_puzzle"] <= 8
    assert len(hybrid["curve"]) == 4 and len(fixed["curve"]) == 2
    assert [a["name"] for a in results["aggregate"]] == [r.name for r in reports]
    assert results["systems"][3]["exact_on_common"] is None and results["common_puzzles"] == 3


def test_an_interrupted_suite_leaves_the_previous_report(models, tmp_path, monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("previous report")

    def interrupted(self, entry):
        raise KeyboardInterrupt

    monkeypatch.setattr(R.Runner, "run_llm", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare_main(
            [
                "--suite",
                write_suite(tmp_path / "tiny.yaml", tiny_suite(models)),
                "--out",
                str(out),
                "--progress",
                "false",
            ]
        )
    assert os.listdir(out) == ["report.md"] and (out / "report.md").read_text() == "previous report"


@pytest.mark.parametrize(
    "kind, model, message",
    [
        ("deep", "hybrid", r"'wrong': .* is not deep \(core.unrolled=False, halt_max_steps=3; need true and 1"),
        ("deep", "fixed", r"'wrong': .* is not deep \(core.unrolled=False, halt_max_steps=1;"),
        (
            "no-llm",
            "hybrid",
            r"'wrong': .* is not no-llm \(its backbone is '.*bb'; train it with --model.backbone.name none",
        ),
        ("fixed-depth", "deep", r"'wrong': .* is not fixed-depth \(T=2, n=1, halt_max_steps=1"),
    ],
)
def test_model_kinds_are_checked(models, tmp_path, kind, model, message):
    data = tiny_suite(models)
    data["systems"] = [{"name": "wrong", "kind": kind, "model": models[model]}]
    with pytest.raises(HybridReasonError, match=message):
        compare_main(
            ["--suite", write_suite(tmp_path / "s.yaml", data), "--out", str(tmp_path / "o"), "--progress", "false"]
        )


def test_a_deep_model_runs_as_the_deep_kind(models, tmp_path):
    data = tiny_suite(models)
    data["systems"] = [{"name": "deep", "kind": "deep", "model": models["deep"]},
                       {"name": "hybrid", "model": models["hybrid"]}]  # fmt: skip
    out = tmp_path / "o"
    deep, hybrid = compare_main(
        ["--suite", write_suite(tmp_path / "s.yaml", data), "--out", str(out), "--progress", "false"]
    )
    assert deep.kind == "deep" and deep.n_sup == 1 and deep.puzzles == hybrid.puzzles == 6
    assert deep.trainable_params > hybrid.trainable_params  # T(n+1)L = 4 distinct blocks against 1 shared
    assert "| deep | deep | — | 6 |" in (out / "report.md").read_text()


def test_fixed_depth_entries_must_be_single_step(models, tmp_path):
    data = tiny_suite(models)
    data["systems"] = [{"name": "wrong", "kind": "fixed-depth", "model": models["hybrid"]}]
    with pytest.raises(HybridReasonError, match=r"'wrong': .* is not fixed-depth \(T=2, n=2, halt_max_steps=3"):
        compare_main(
            ["--suite", write_suite(tmp_path / "s.yaml", data), "--out", str(tmp_path / "o"), "--progress", "false"]
        )
    data["systems"] = [{"name": "missing", "model": str(tmp_path / "nowhere")}]
    with pytest.raises(HybridReasonError, match=r"'missing': model .* is not a saved HybridReasoner folder"):
        compare_main(
            ["--suite", write_suite(tmp_path / "s.yaml", data), "--out", str(tmp_path / "o"), "--progress", "false"]
        )


def test_compare_flags_and_files_are_checked_first(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        compare_main(["--suite", str(tmp_path / "s.yaml"), "--threads", "0"])
    assert exit_.value.code == 2 and '"threads"' in capsys.readouterr().err
    with pytest.raises(HybridReasonError, match=r"suite .*nowhere.yaml: .*No such file"):
        compare_main(["--suite", str(tmp_path / "nowhere.yaml")])
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(HybridReasonError, match=r"suite .*bad.yaml: "):
        compare_main(["--suite", str(tmp_path / "bad.yaml")])


# ------------------------------------------------------------------------------ seeds: recipes trained per seed
def tiny_recipe(path, backbone: str) -> str:
    """A tiny CPU training recipe on the suite's Sort task (4 steps, no validation)."""
    recipe = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "limit_val_batches": 0,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 2, "enable_progress_bar": False,
                    "enable_model_summary": False},
        "model": {"backbone": {"name": backbone, "hidden_layer": 1},
                  "core": {"d_model": 32, "num_heads": 4, "num_layers": 1, "n": 2, "T": 2}, "halt_max_steps": 3,
                  "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-3}}},
        "data": {"task": SORT, "batch_size": 6},
        "ema": {"decay": 0.9},
        "checkpoint": {"every_n_train_steps": 2},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_recipe_and_sft_systems_train_once_per_seed_and_recipe_runs_are_cached(models, tmp_path, capsys):
    from safetensors.torch import load_file

    recipe = tiny_recipe(tmp_path / "tiny_recipe.yaml", models["backbone"])
    data = {
        "name": "seeded", "limit": 4, "threads": 1, "seeds": [0, 1], "runs": str(tmp_path / "runs"), "task": SORT,
        "systems": [
            {"name": "hybrid", "recipe": recipe, "overrides": ["--model.core.n 3"]},
            {"name": "given", "model": models["hybrid"]},
            {"name": "ft", "kind": "sft", "model": models["backbone"], "max_steps": 2, "lora_rank": 2,
             "train_limit": 8, "max_new_tokens": 4, "limit": 2, "chat_template": CHAT_TEMPLATE},
        ],
    }  # fmt: skip
    suite, out = write_suite(tmp_path / "seeded.yaml", data), tmp_path / "results"
    reports = compare_main(["--suite", suite, "--out", str(out), "--progress", "false"])
    assert [(r.name, r.seed) for r in reports] == [("hybrid", 0), ("hybrid", 1), ("given", None), ("ft", 0), ("ft", 1)]
    log = capsys.readouterr().err
    # the systems that need no training ran first, holding the one process slot (jobs: 1): then the training
    assert (
        log.index("running ft (sft, seed 1)")
        < log.index("system 'hybrid' seed 0: training")
        < log.index("running hybrid")
    )
    runs = sorted((tmp_path / "runs").glob("tiny_recipe-*/seed_*"))
    assert [p.name for p in runs] == ["seed_0", "seed_1"] and runs[0].parent == runs[1].parent
    for seed, run in enumerate(runs):
        log = (run / "fit.log").read_text()
        features = tmp_path / "runs" / "features"  # every run keeps the backbone's features there, outside the key
        assert f"--model.core.n 3 --model.feature_cache_dir {features} --seed_everything {seed} " in log
        assert json.loads((run / "model" / "config.json").read_text())["core"]["n"] == 3  # the override reached it
        record = json.loads((run / "training.json").read_text())
        assert record["seed"] == seed and record["steps"] == 4 and record["examples_seen"] >= 6
    assert len(list(features.glob("*.safetensors"))) >= 6  # at least one batch of distinct prompts
    weights = [load_file(run / "model" / "model.safetensors") for run in runs]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the seeds differ
    hybrid0, hybrid1 = reports[:2]
    assert hybrid0.model == str(runs[0] / "model") and hybrid0.training["cached"] is False
    assert hybrid0.training["examples_seen"] == json.loads((runs[0] / "training.json").read_text())["examples_seen"]
    ft0, ft1 = reports[3:]
    assert ft0.training["steps"] == 2 and ft0.training["examples_seen"] == 16 and ft0.trainable_params > 0
    assert ft0.training["train_puzzles"] == 8 and ft0.training["settings"]["lora_rank"] == 2

    report = (out / "report.md").read_text()
    assert re.search(r"\| hybrid \| hybrid \| 2 \| 4 \| \d+\.\d% ± \d+\.\d \|", report), report
    assert re.search(r"\| given \| hybrid \| — \| 4 \| \d+\.\d% \|", report) and "| ft | sft | 2 | 2 |" in report
    assert "## Training" in report and "| hybrid | hybrid | 0, 1 | 4 |" in report and "| 0 of 2 |" in report
    assert "| ft | sft | 0, 1 | 2 | 16 |" in report
    assert "## Per seed" in report and "| system | seed 0 | seed 1 |" in report
    assert "2 recipe runs, 0 of them found in" in report and "Fine-tuning the LLM took" in report
    assert sorted(os.listdir(out / "systems" / "hybrid")) == ["seed_0", "seed_1"]
    assert "adapter" in os.listdir(out / "systems" / "ft" / "seed_1") and os.path.isfile(
        out / "systems/given/summary.md"
    )
    results = json.loads((out / "results.json").read_text())
    assert [(s["name"], s["seed"]) for s in results["systems"]] == [(r.name, r.seed) for r in reports]
    hybrid = results["aggregate"][0]
    assert hybrid["seeds"] == [0, 1] and hybrid["std"]["exact"] is not None
    assert hybrid["mean"]["cell"] == pytest.approx((hybrid0.metrics["cell"] + hybrid1.metrics["cell"]) / 2)

    again = compare_main(["--suite", suite, "--out", str(tmp_path / "again"), "--progress", "false"])
    assert [r.training["cached"] for r in again[:2]] == [True, True]  # found, not trained again
    assert [r.metrics for r in again[:3]] == [r.metrics for r in reports[:3]]
    assert "2 recipe runs, 2 of them found in" in (tmp_path / "again" / "report.md").read_text()
    assert sorted(p.name for p in runs[0].iterdir()) == ["fit.log", "model", "training.json", "version_0"]


def test_a_last_checkpoint_before_the_last_step_is_refused(tmp_path):
    from hybrid_reason.evaluation.runs import check_final

    version = tmp_path / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    (version / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_steps": 400}}))
    ckpt = version / "checkpoints" / "last.ckpt"
    with pytest.raises(
        HybridReasonError, match=r"'x' seed 0: .*last.ckpt is from step 300 but training ran to step 400"
    ):
        check_final(ckpt, 300, "system 'x' seed 0")
    check_final(ckpt, 400, "system 'x' seed 0")  # the last step: fine


def test_overrides_the_suite_sets_itself_are_refused(models, tmp_path):
    data = tiny_suite(models)
    recipe = tiny_recipe(tmp_path / "r.yaml", models["backbone"])
    data["systems"] = [{"name": "h", "recipe": recipe, "overrides": ["--seed_everything=3"]}]
    with pytest.raises(HybridReasonError, match=r"system 'h' seed 0: --seed_everything is set by the suite"):
        compare_main(["--suite", write_suite(tmp_path / "s.yaml", data), "--out", str(tmp_path / "o")])
    data["systems"] = [{"name": "h", "recipe": str(tmp_path / "none.yaml")}]
    with pytest.raises(HybridReasonError, match=r"system 'h' seed 0: recipe .*none.yaml': no such file"):
        compare_main(["--suite", write_suite(tmp_path / "s.yaml", data), "--out", str(tmp_path / "o")])
