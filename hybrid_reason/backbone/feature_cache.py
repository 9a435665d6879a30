"""FeatureCache: a frozen backbone's per-example outputs, keyed by what determines them.

A key is the sha256 of (backbone identity, layer, text, slot spans). Entries are small dicts of CPU
tensors (``features`` [S, d], ``empty`` [S], optionally ``tokens`` [L, d]). The cache keeps them in
memory, least recently used first out when the byte bound is passed, and optionally in a directory
of safetensors files named ``<key>.safetensors`` that survive the process (each written atomically).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

from cachetools import LRUCache
from safetensors.torch import load_file, save
from torch import Tensor

from ..utils.atomic_io import atomic_write

Entry = dict[str, Tensor]


def entry_nbytes(entry: Entry) -> int:
    """Bytes held by an entry's tensors."""
    return sum(t.numel() * t.element_size() for t in entry.values())


class FeatureCache:
    """An LRU of backbone outputs bounded by ``max_bytes`` in memory, optionally backed by ``directory``.

    An entry larger than ``max_bytes`` is not kept in memory (it still goes to disk). ``hits`` and
    ``misses`` count ``get`` results, disk hits included in ``hits``.
    """

    def __init__(self, max_bytes: int = 1 << 30, directory: str | os.PathLike | None = None):
        if max_bytes < 0:
            raise ValueError(f"FeatureCache max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self.directory = os.fspath(directory) if directory is not None else None
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
        self._memory: LRUCache[str, Entry] = LRUCache(maxsize=max_bytes, getsizeof=entry_nbytes)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def make_key(backbone: str, layer: int, text: str, spans: Sequence[tuple[int, int] | None]) -> str:
        """The sha256 (hex) of (backbone identity, layer, text, spans)."""
        spans = [None if s is None else [int(s[0]), int(s[1])] for s in spans]
        payload = json.dumps([backbone, int(layer), text, spans], ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    @property
    def nbytes(self) -> int:
        """Bytes of the entries held in memory."""
        return int(self._memory.currsize)

    def __len__(self) -> int:
        return len(self._memory)

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (self._path(key) is not None and os.path.exists(self._path(key)))

    def get(self, key: str) -> Entry | None:
        """The entry under ``key`` (memory first, then disk), or None. Marks it most recently used."""
        entry = self._memory.get(key)  # a hit makes it the most recently used
        if entry is None and (path := self._path(key)) is not None and os.path.exists(path):
            entry = load_file(path)
            self._remember(key, entry)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(self, key: str, entry: Entry) -> None:
        """Store ``entry`` (copied to contiguous CPU tensors) in memory and, with a directory, on disk."""
        entry = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in entry.items()}
        if (path := self._path(key)) is not None:
            atomic_write(path, save(entry))  # a reader sees the old file, the new one, or none
        self._remember(key, entry)

    def clear(self) -> None:
        """Forget the in-memory entries (files on disk stay)."""
        self._memory.clear()

    def _path(self, key: str) -> str | None:
        """The file of ``key`` on disk, or None without a directory."""
        return None if self.directory is None else os.path.join(self.directory, f"{key}.safetensors")

    def _remember(self, key: str, entry: Entry) -> None:
        """Insert into the in-memory LRU, which evicts the oldest entries past the byte bound."""
        self._memory.pop(key, None)
        if entry_nbytes(entry) <= self.max_bytes:
            self._memory[key] = entry
