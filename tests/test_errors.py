"""User errors as a user meets them through the `hybrid-reason` entry point: one line `error: ...` on
stderr, exit status 2, no traceback and nothing written; and `export`, which never deletes or moves
anything it did not write. Real parts throughout: a tiny random backbone, a real training run, real
checkpoints and model folders (damaged on disk where the case needs it)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch
from test_training_cli import write_recipe
from transformers import AutoModel

from hybrid_reason import cli
from hybrid_reason.errors import HybridReasonError
from hybrid_reason.model.configuration import HybridReasonerConfig
from hybrid_reason.model.modeling import HybridReasoner, check_saved_model
from hybrid_reason.training.recipe_cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    """The CLI is called with an argument list, as from Python: pytest's own argv is not its business."""
    monkeypatch.setattr(sys, "argv", ["hybrid-reason"])


def user_error(argv: list[str], capsys) -> str:
    """Run ``hybrid-reason ARGV`` expecting a user error; its one line on stderr (without ``error: ``)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]) and "Traceback" not in err, err[-3000:]
    return lines[0][len("error: ") :]


def listing(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (to prove that nothing changed)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(backbone_path, tmp_path_factory) -> Path:  # noqa: F811
    """A finished tiny training run (under umask 027): its root holds version_0/{checkpoints,hf_model}."""
    root = tmp_path_factory.mktemp("trained") / "runs"
    recipe = write_recipe(root.parent / "tiny.yaml", backbone_path, str(root))
    old = os.umask(0o027)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", ["hybrid-reason"])
            cli.main(["fit", "--config", recipe, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0"])
    finally:
        os.umask(old)
    return root


# ------------------------------------------------------------------------------ the entry point
def test_only_user_errors_become_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch, tmp_path):
    assert (
        user_error(["export", str(tmp_path / "no.ckpt"), str(tmp_path / "out")], capsys)
        == f"checkpoint {tmp_path / 'no.ckpt'}: no such file"
    )
    assert user_error(["fitt"], capsys) == "unknown command 'fitt'"
    monkeypatch.setitem(cli.COMMANDS, "bug", ("json", "loads", "a command whose failure is a bug"))
    with pytest.raises(TypeError):  # json.loads(["x"]): not a user error, so the traceback stays
        cli.main(["bug", "x"])


def test_a_user_error_is_found_where_a_library_wrapped_it():
    try:
        try:
            raise HybridReasonError("bad row 3\n of file x.csv")
        except HybridReasonError as err:
            raise RuntimeError("An error occurred while generating the dataset") from err
    except RuntimeError as wrapped:
        found = cli.user_error(wrapped)
    assert str(found) == "bad row 3 of file x.csv"  # and always one line
    try:
        try:
            raise HybridReasonError("user error")
        except HybridReasonError:
            raise KeyError("a bug while handling it")  # noqa: B904 (implicit context, not a cause)
    except KeyError as bug:
        assert cli.user_error(bug) is None


# ------------------------------------------------------------------------------ recipes
def damaged_model(folder: Path) -> str:
    """A saved model folder whose weights file is cut in half."""
    config = HybridReasonerConfig(
        core={"d_model": 16, "num_heads": 2, "num_layers": 1, "n": 1, "T": 1},
        task={"name": "sort"},
        answer_vocab_size=6,
        num_slots=4,
        backbone_hidden_size=32,
    )
    HybridReasoner(config).save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return str(folder)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.core.n", "0"], r"model.core.n must be an integer >= 1, got 0"),
        (["--model.core.d_model", "30"], r"model.core.d_model / core.num_heads = 15 must be even"),
        (
            ["--model.backbone.hidden_layer", "7"],
            r"model.backbone.hidden_layer 7 out of range for a model with 2 layers",
        ),
        (["--data.batch_size", "-2"], r"data.batch_size must be >= 1, got -2"),
        (
            ["--model.backbone.name", "no-such-backbone"],
            r"model.backbone.name: backbone 'no-such-backbone' is not a local "
            r"folder, a .gguf file, an alias .* or a hub id of the form org/name",
        ),
        (
            ["--model.backbone.name", "someorg/not-cached"],
            r"'someorg/not-cached' is not a local folder and, as a hub id, "
            r"it is not in the local Hugging Face cache while HF_HUB_OFFLINE",
        ),
        (
            ["--model.init_from", "DAMAGED"],
            r"model.init_from: .*/damaged/model.safetensors is damaged or not a safetensors",
        ),
        (["--trainer.default_root_dir", "FILE"], r"trainer.default_root_dir .*/a-file is a file: give a folder"),
        (["--ckpt_path", "RANDOM"], r"checkpoint .*/random.ckpt is not a PyTorch checkpoint"),
        (["--ckpt_path", "last"], r"--ckpt_path last: no last.ckpt under .*/runs/version_\*/checkpoints"),
    ],
)
def test_bad_values_stop_fit_in_one_line_naming_the_key_and_write_nothing(
    backbone_path, tmp_path, capsys, monkeypatch, args, message
):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # an empty cache
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "a-file").write_text("the user's file")
    (tmp_path / "random.ckpt").write_bytes(os.urandom(4096))
    places = {
        "DAMAGED": damaged_model(tmp_path / "damaged"),
        "FILE": str(tmp_path / "a-file"),
        "RANDOM": str(tmp_path / "random.ckpt"),
    }
    args = [places.get(a, a) for a in args]
    recipe = write_recipe(tmp_path / "tiny.yaml", backbone_path, str(tmp_path / "runs"))
    assert __import__("re").search(message, user_error(["fit", "--config", recipe, *args], capsys))
    assert not (tmp_path / "runs").exists() and (tmp_path / "a-file").read_text() == "the user's file"


def test_a_wrong_type_or_choice_is_still_an_argument_error(backbone_path, tmp_path, capsys):  # noqa: F811
    recipe = write_recipe(tmp_path / "tiny.yaml", backbone_path, str(tmp_path / "runs"))
    with pytest.raises(SystemExit) as exited:
        cli.main(["fit", "--config", recipe, "--model.backbone.dtype", "bf16"])  # a Literal: refused at parse time
    assert exited.value.code == 2 and 'key "model.backbone.dtype"' in capsys.readouterr().err


ARC_PAIR = {"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}


@pytest.mark.parametrize(
    "task_json, named",
    [
        ({"train": [{"input": [[1, 2], [3, 12]], "output": [[1]]}], "test": [ARC_PAIR]}, "colour 12"),
        ({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [ARC_PAIR]}, "ragged"),
        ({"train": [ARC_PAIR], "test": [{"input": [[1] * 31] * 31, "output": [[1]]}]}, "31x31"),
        ('{"train": [', "bad.json"),
    ],
)
def test_fit_on_a_bad_arc_folder_fails_in_one_line_before_the_run_folder_exists(
    backbone_path, tmp_path, capsys, task_json, named
):  # noqa: F811
    folder = tmp_path / "arc"
    folder.mkdir()
    (folder / "good.json").write_text(json.dumps({"train": [ARC_PAIR, ARC_PAIR], "test": [ARC_PAIR]}))
    (folder / "bad.json").write_text(task_json if isinstance(task_json, str) else json.dumps(task_json))
    recipe = write_recipe(
        tmp_path / "arc.yaml",
        backbone_path,
        str(tmp_path / "runs"),
        data__task={"name": "arc1", "source": str(folder)},
        data__batch_size=2,
    )
    line = user_error(["fit", "--config", recipe, "--trainer.limit_val_batches", "0"], capsys)
    assert named in line and "bad" in line
    assert not (tmp_path / "runs").exists()  # no version_0/config.yaml, hparams.yaml left behind


# ------------------------------------------------------------------------------ saved model folders
@pytest.fixture
def saved(tmp_path) -> Path:
    """A saved tiny HybridReasoner (its backbone is never loaded: only its hidden size is recorded)."""
    config = HybridReasonerConfig(
        core={"d_model": 16, "num_heads": 2, "num_layers": 1, "n": 1, "T": 1},
        task={"name": "sort"},
        answer_vocab_size=6,
        num_slots=4,
        backbone_hidden_size=32,
    )
    HybridReasoner(config).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda w: w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2]),
            "model.safetensors is damaged or not a safetensors file",
        ),
        (lambda w: w.write_bytes(b""), "model.safetensors is damaged or not a safetensors file"),
        (lambda w: w.write_bytes(os.urandom(3000)), "model.safetensors is damaged or not a safetensors file"),
        (lambda w: w.unlink(), "no model.safetensors"),
        (lambda w: (w.parent / "config.json").write_text("{ not json"), "config.json is not a readable JSON file"),
    ],
)
def test_a_damaged_model_folder_is_one_line_naming_it(saved, damage, message):
    damage(saved / "model.safetensors")
    loads = [HybridReasoner.from_pretrained, check_saved_model]
    if "config.json" not in message:  # (AutoModel: AutoConfig reads config.json before any code of ours runs)
        loads.append(AutoModel.from_pretrained)
    for load in loads:
        with pytest.raises(HybridReasonError, match=str(saved)) as caught:
            load(str(saved))
        assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_config_whose_sizes_disagree_with_the_weights_names_the_tensor(saved):
    config = json.loads((saved / "config.json").read_text())
    config["core"]["d_model"] = 32
    (saved / "config.json").write_text(json.dumps(config))
    expected = f"{saved}: tensor adapter.empty has shape [16] in model.safetensors, but config.json implies [32]"
    for load in (HybridReasoner.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(HybridReasonError) as caught:
            load(str(saved))
        assert str(caught.value) == expected
    config["core"]["d_model"], config["answer_vocab_size"] = 16, 7
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(HybridReasonError, match=r"tensor answer_head.weight has shape \[6, 16\] .* implies \[7, 16\]"):
        AutoModel.from_pretrained(str(saved))


def test_config_values_are_checked_where_they_are_declared():
    with pytest.raises(HybridReasonError, match="backbone.dtype must be one of"):
        HybridReasonerConfig(backbone={"dtype": "bf16"})
    with pytest.raises(HybridReasonError, match="loss must be one of"):
        HybridReasonerConfig(loss="hinge")
    with pytest.raises(HybridReasonError, match="halt_max_steps must be an integer >= 1, got 0"):
        HybridReasonerConfig(halt_max_steps=0)
    with pytest.raises(HybridReasonError, match="core.n must be an integer >= 1, got 0"):
        HybridReasonerConfig(core={"n": 0})


# ------------------------------------------------------------------------------ export and checkpoints
def test_fit_writes_with_the_users_umask(trained):
    folder = trained / "version_0" / "hf_model"
    assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o640  # safetensors alone makes 0600
    assert stat.S_IMODE((folder / "config.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750


def test_export_never_replaces_the_run_folder_that_holds_the_checkpoint(trained, capsys):
    run = trained / "version_0"
    ckpt, before = run / "checkpoints" / "last.ckpt", listing(run)
    for extra in ([], ["--overwrite"]):
        line = user_error(["export", str(ckpt), str(run), *extra], capsys)
        assert str(run) in line and ("holds the checkpoint" in line if extra else "is not empty" in line)
    assert listing(run) == before and sorted(os.listdir(trained)) == ["version_0"]


def test_export_refuses_the_users_folder_and_files(trained, tmp_path, capsys):
    ckpt = str(trained / "version_0" / "checkpoints" / "last.ckpt")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "data.csv").write_text("1,2\n")
    (tmp_path / "a-file").write_text("keep me too")
    before = listing(tmp_path)
    assert "exists and is not empty" in user_error(["export", ckpt, str(mine)], capsys)
    assert "is not a model folder" in user_error(["export", ckpt, str(mine), "--overwrite"], capsys)
    assert user_error(["export", ckpt, str(tmp_path / "a-file"), "--overwrite"], capsys).endswith(
        "a-file is a file: give a folder"
    )
    assert "which is a file" in user_error(["export", ckpt, str(tmp_path / "a-file" / "out")], capsys)
    assert listing(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["a-file", "mine"]  # no temporary left


def test_export_writes_a_new_folder_and_overwrites_only_a_model_folder(trained, tmp_path, capsys):
    ckpt = str(trained / "version_0" / "checkpoints" / "last.ckpt")
    out = tmp_path / "exported"
    cli.main(["export", ckpt, str(out)])
    assert "exported" in capsys.readouterr().out
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~_umask()
    first = (out / "model.safetensors").read_bytes()
    assert "exists and is not empty" in user_error(["export", ckpt, str(out)], capsys)
    (out / "model.safetensors").write_bytes(b"stale")
    cli.main(["export", ckpt, str(out), "--overwrite"])
    assert (out / "model.safetensors").read_bytes() == first and os.listdir(tmp_path) == ["exported"]
    assert isinstance(AutoModel.from_pretrained(str(out)), HybridReasoner)
    (tmp_path / "empty").mkdir()
    cli.main(["export", ckpt, str(tmp_path / "empty")])  # an empty folder holds nothing to lose
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "is not a PyTorch checkpoint (empty, truncated or another kind of file)"),
        ("empty", "is not a PyTorch checkpoint (empty, truncated or another kind of file)"),
        ("random", "is not a PyTorch checkpoint (empty, truncated or another kind of file)"),
        ("foreign", "is not a hybrid_reason training checkpoint"),
        ("folder", "is a folder, not a checkpoint file"),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_it_for_export_and_ckpt_path(
    trained, backbone_path, tmp_path, capsys, kind, message
):  # noqa: F811
    good = (trained / "version_0" / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / f"{kind}.ckpt"
    if kind == "folder":
        bad.mkdir()
    elif kind == "foreign":
        torch.save({"state_dict": {}, "epoch": 3}, bad)
    else:
        bad.write_bytes({"truncated": good[: len(good) // 2], "empty": b"", "random": os.urandom(len(good))}[kind])
    line = user_error(["export", str(bad), str(tmp_path / "out")], capsys)
    assert str(bad) in line and message in line
    recipe = write_recipe(tmp_path / "tiny.yaml", backbone_path, str(tmp_path / "runs"))
    for command in ("fit", "validate"):
        line = user_error([command, "--config", recipe, "--ckpt_path", str(bad)], capsys)
        assert str(bad) in line and message in line
    assert sorted(os.listdir(tmp_path)) == sorted([bad.name, "tiny.yaml"])  # no OUT, no run folder


def test_ckpt_path_last_resumes_the_newest_run_and_says_so(trained, backbone_path, tmp_path, capsys):  # noqa: F811
    root = tmp_path / "runs"
    shutil.copytree(trained / "version_0", root / "version_0")
    shutil.copytree(trained / "version_0", root / "version_10")  # the newest, by number (not by name order)
    (root / "version_2" / "checkpoints").mkdir(parents=True)  # a run that saved nothing
    recipe = write_recipe(tmp_path / "tiny.yaml", backbone_path, str(root))
    resumed = main(
        [
            "fit",
            "--config",
            recipe,
            "--ckpt_path",
            "last",
            "--trainer.max_steps",
            "6",
            "--trainer.limit_val_batches",
            "0",
        ]
    )
    assert f"--ckpt_path last is {root / 'version_10' / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().out
    assert resumed.trainer.ckpt_path == str(root / "version_10" / "checkpoints" / "last.ckpt")  # restored from it
    assert resumed.trainer.global_step == 6 and resumed.trainer.log_dir == str(root / "version_11")
    ckpt = torch.load(root / "version_11" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 and ckpt["epoch"] == 0  # continued from step 3, in the same stream
