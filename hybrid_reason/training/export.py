"""Training checkpoints as a user meets them: reading one (``--ckpt_path``, ``export``), finding a
run's last one (``--ckpt_path last``), and ``hybrid-reason export CKPT OUT``.

Export never deletes or moves anything it did not write. The model folder is built in a temporary
sibling of OUT and renamed into place only when complete. An existing non-empty OUT is refused
unless ``--overwrite`` is given, and even then only a model folder (``config.json`` of model_type
``hybrid_reason``) that does not hold the checkpoint itself is replaced. A plain file at OUT is
never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..errors import HybridReasonError
from ..model.configuration import HybridReasonerConfig
from ..model.modeling import HybridReasoner
from ..utils.atomic_io import write_dir_atomically

LAST = "last.ckpt"
_VERSION = re.compile(r"version_(\d+)$")
_UNREADABLE = (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A hybrid_reason training checkpoint, its tensors memory-mapped (cheap even for a big file).

    A missing, empty, truncated or random file, or another program's checkpoint, is a one-line
    ``HybridReasonError`` naming the path."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise HybridReasonError(f"checkpoint {path}: no such file")
    if not os.path.isfile(path):
        raise HybridReasonError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut or random file is not one
        raise HybridReasonError(
            f"checkpoint {path} is not a PyTorch checkpoint (empty, truncated or another kind of file)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except _UNREADABLE as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HybridReasonError(f"checkpoint {path} cannot be read ({reason})") from None
    if not isinstance(ckpt, dict) or "hybrid_reasoner_config" not in ckpt or "state_dict" not in ckpt:
        raise HybridReasonError(f"{path} is not a hybrid_reason training checkpoint (no hybrid_reasoner_config)")
    return ckpt


def find_last_checkpoint(root: str | os.PathLike, dirpath: str | os.PathLike | None = None) -> str | None:
    """What ``--ckpt_path last`` means: ``last.ckpt`` in the checkpoint callback's ``dirpath`` when the
    recipe sets one, else in the highest ``<root>/version_N/checkpoints`` that has one (or in
    ``<root>/checkpoints``, the place without a logger). None when there is none."""
    if dirpath:
        candidates = [Path(dirpath) / LAST]
    else:
        runs = [p for p in Path(root).glob(f"version_*/checkpoints/{LAST}") if _VERSION.match(p.parent.parent.name)]
        runs.sort(key=lambda p: int(_VERSION.match(p.parent.parent.name).group(1)), reverse=True)
        candidates = [*runs, Path(root) / "checkpoints" / LAST]
    return next((str(p) for p in candidates if p.is_file()), None)


def check_folder_path(path: str | os.PathLike, key: str) -> None:
    """A folder may be created at ``path``: neither it nor any existing parent is a file (one line
    naming ``key`` otherwise). Checked before any work, not after it."""
    target = Path(path).expanduser().absolute()
    for place in (target, *target.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == target else f"is inside {place}, which is a file"
                raise HybridReasonError(f"{key} {path} {where}: give a folder")
            return


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` holds a saved HybridReasoner (``config.json`` with model_type hybrid_reason)."""
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type") == "hybrid_reason"
    except (OSError, ValueError, AttributeError):
        return False


def check_export_target(out: str, checkpoint: str, overwrite: bool) -> None:
    """Refuse an OUT that export would have to delete without the user's leave (see module docstring)."""
    check_folder_path(out, "OUT")
    target = Path(out)
    if not target.exists() or not any(target.iterdir()):
        return  # a new or empty folder
    if not overwrite:
        raise HybridReasonError(
            f"OUT {out} exists and is not empty: choose a new folder, or pass --overwrite "
            "to replace a model folder written by an earlier export"
        )
    final, ckpt = target.resolve(), Path(checkpoint).resolve()
    if final in ckpt.parents:
        raise HybridReasonError(
            f"OUT {out} holds the checkpoint {checkpoint}: --overwrite would delete it, choose another folder"
        )
    if not is_model_folder(target):
        raise HybridReasonError(
            f"OUT {out} is not a model folder (no config.json of model_type hybrid_reason): "
            "--overwrite replaces only those; remove it yourself or choose another folder"
        )


def export_checkpoint(checkpoint: str, out: str, overwrite: bool = False) -> str:
    """Write a training checkpoint's (EMA) weights as a Hugging Face folder loadable with AutoModel."""
    check_export_target(out, checkpoint, overwrite)  # before the work: nothing is read if OUT is wrong
    ckpt = read_checkpoint(checkpoint)
    try:
        config = HybridReasonerConfig.from_dict(ckpt["hybrid_reasoner_config"])
        model = HybridReasoner(config)
        prefix = "model."
        state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
        model.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError) as err:  # HybridReasonError is a ValueError
        reason = str(err).strip().splitlines()[0]
        raise HybridReasonError(
            f"checkpoint {checkpoint}: its weights do not fit its own model config ({reason})"
        ) from None
    write_dir_atomically(Path(out), model.save_pretrained)  # a temporary sibling, renamed into place when complete
    return out


def export_main(argv: list[str] | None = None) -> None:
    """``hybrid-reason export CKPT OUT [--overwrite]``: the checkpoint's EMA weights as a HF model folder."""
    parser = argparse.ArgumentParser(prog="hybrid-reason export", description=export_checkpoint.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by `hybrid-reason fit` (EMA weights are exported)")
    parser.add_argument("out", help="the folder to write (config.json + model.safetensors); must be new or empty")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is a model folder written before (never one that holds CKPT)",
    )
    args = parser.parse_args(argv)
    path = export_checkpoint(args.checkpoint, args.out, args.overwrite)
    print(f"hybrid-reason: exported {args.checkpoint} to {path} (AutoModel.from_pretrained({path!r}))")
