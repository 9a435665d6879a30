"""Suites: typed entries with named errors, a whole tiny suite end to end, no half-written report."""

import glob
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml

import hybrid_reason  # noqa: F401
from hybrid_reason import HybridReasoner, HybridReasonerConfig
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.evaluation import suite as C
from hybrid_reason.evaluation.commands import compare_main
from hybrid_reason.tasks import build_task

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
SORT = {"name": "sort", "length": 6, "min_length": 4, "num_train": 50, "num_validation": 10, "num_test": 30}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny backbone, a recursive model and a fixed-depth one (T = n = N_sup = 1) trained on nothing."""
    from hybrid_reason.utils.testing import tiny_backbone

    root = tmp_path_factory.mktemp("suite")
    backbone = tiny_backbone(str(root / "bb"), hidden_size=32, num_layers=2, max_positions=1024)
    task = build_task(**SORT)
    paths = {}
    for name, (T, n, N) in {"hybrid": (2, 2, 3), "fixed": (1, 1, 1)}.items():
        config = HybridReasonerConfig(
            backbone={"name": backbone, "hidden_layer": 1},
            task=SORT,
            core={"d_model": 32, "num_heads": 4, "num_layers": 1, "n": n, "T": T},
            answer_vocab_size=task.vocab_size,
            num_slots=task.num_slots,
            halt_max_steps=N,
        )
        torch.manual_seed(0)
        HybridReasoner(config).save_pretrained(root / name)
        paths[name] = str(root / name)
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
        **extra,
        "systems": [
            {"name": "hybrid", "model": models["hybrid"], "curve_steps": 4},
            {"name": "fixed depth", "kind": "fixed-depth", "model": models["fixed"]},
            {"name": "cot", "kind": "cot", "limit": 3, "max_new_tokens": 8, "chat_template": TEMPLATE},
            {"name": "direct", "kind": "direct", "limit": 3, "max_new_tokens": 4, "chat_template": TEMPLATE},
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
            r"systems\[1\]\.kind: 'tree' is not one of hybrid, fixed-depth",
        ),
        (lambda s: s["systems"][0].pop("model"), r"systems\[0\]: missing key 'model'"),
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
    assert {os.path.basename(p) for p in paths} >= {"cpu_demo.yaml", "arc1_gpu.yaml", "sudoku_gpu.yaml"}
    for path in paths:
        suite = C.load_suite(path)
        kinds = {s.kind for s in suite.systems}
        assert kinds == {"hybrid", "fixed-depth", "cot", "direct"}, path


# ------------------------------------------------------------------------------ running a suite
def test_a_tiny_suite_runs_every_system_on_the_same_puzzles(models, tmp_path):
    out = tmp_path / "results"
    reports = compare_main(
        ["--suite", write_suite(tmp_path / "tiny.yaml", tiny_suite(models)), "--out", str(out), "--progress", "false"]
    )
    assert [r.name for r in reports] == ["hybrid", "fixed depth", "cot", "direct"]
    assert [r.puzzles for r in reports] == [6, 6, 3, 3]
    assert set(reports[2].solved) <= set(reports[0].solved)  # the LLMs ran the first puzzles of the same list
    assert sorted(os.listdir(out)) == ["report.md", "report.png", "results.json", "systems"]
    assert sorted(os.listdir(out / "systems")) == ["cot", "direct", "fixed_depth", "hybrid"]
    report = (out / "report.md").read_text()
    assert "| system | kind | puzzles | exact | exact on the 3 common | cell accuracy | trainable params |" in report
    for name in (
        "| hybrid | hybrid | 6 |",
        "| fixed depth | fixed-depth | 6 |",
        "| cot | cot | 3 |",
        "| direct | direct | 3 |",
    ):
        assert name in report
    assert "## Test-time compute: hybrid" in report and "| 4 (> N_sup) |" in report
    assert "hybrid-reason compare --suite" in report and "1 thread," in report
    assert "| system | token cap (max_new_tokens) | replies that hit the cap |" in report  # the CoT budget, stated
    assert f"| cot | 8 | {100 * reports[2].metrics['unfinished']:.0f}% |" in report
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    hybrid, fixed, cot = results["systems"][:3]
    assert hybrid["trainable_params"] == fixed["trainable_params"] > 0  # T and n do not change the parameters
    assert hybrid["flops_per_puzzle"] > fixed["flops_per_puzzle"] > hybrid["backbone_flops_per_puzzle"]
    assert cot["trainable_params"] == 0 and 0 < cot["tokens_per_puzzle"] <= 8
    assert len(hybrid["curve"]) == 4 and len(fixed["curve"]) == 2


def test_an_interrupted_suite_leaves_the_previous_report(models, tmp_path, monkeypatch):
    out = tmp_path / "results"
    out.mkdir()
    (out / "report.md").write_text("previous report")

    def interrupted(self, entry):
        raise KeyboardInterrupt

    monkeypatch.setattr(C.Runner, "run_llm", interrupted)
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
