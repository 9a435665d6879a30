"""The model's code, written beside its weights so ``trust_remote_code=True`` loads it anywhere.

transformers copies a custom model's module and the modules it imports with a single leading dot
into the saved folder and imports them there as one flat package. Our model's modules live in
subpackages (``model/``, ``backbone/``, ``utils/``) and import each other with ``..``, which that
copier cannot follow. So the saved folder gets a flat copy of the model's import closure, with each
relative import rewritten to its flat sibling (``from ..backbone.encoded import X`` becomes
``from .encoded import X``). Module file names are unique across the closure, which keeps this exact.
"""

from __future__ import annotations

import re
from pathlib import Path

# the import closure of modeling.py and configuration.py, as paths below the package root
CLOSURE = (
    "errors",
    "utils/atomic_io",
    "backbone/encoded",
    "backbone/feature_cache",
    "backbone/loading",
    "backbone/backbone",
    "backbone/symbols",
    "model/core",
    "model/losses",
    "model/configuration",
    "model/modeling",
    "model/remote_code",
)
AUTO_MAP = {"AutoConfig": "configuration.HybridReasonerConfig", "AutoModel": "modeling.HybridReasoner"}
_RELATIVE = re.compile(r"^(\s*from\s+)\.+(?:\w+\.)*(\w+)(\s+import\b)", re.MULTILINE)


def flat_source(module: str) -> str:
    """The source of ``module`` (a CLOSURE entry) with relative imports pointing at flat siblings."""
    root = Path(__file__).resolve().parents[1]
    return _RELATIVE.sub(r"\1.\2\3", (root / f"{module}.py").read_text(encoding="utf-8"))


def write_remote_code(folder: str | Path) -> None:
    """Write the flat code closure into ``folder`` (next to config.json and the weights)."""
    for module in CLOSURE:
        (Path(folder) / f"{Path(module).name}.py").write_text(flat_source(module), encoding="utf-8")
