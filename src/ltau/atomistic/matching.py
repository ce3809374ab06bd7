"""Which configuration of a structure file a trainer's graph is, found from its atoms.

Trainers (mace, nequip with datasets not read from the file) hand out graphs without saying
which configuration of the training file they are; :class:`ConfigurationMatcher` finds it
from the atom count, the elements and the positions.
"""

from __future__ import annotations

import numpy as np

POSITION_TOLERANCE = 1e-4
"""Largest coordinate difference (Å) between a batch graph and its training configuration."""
_GRID = 1e-2
"""Cell size (Å) of the centroid grid that finds a graph's candidate configurations."""


class ConfigurationMatcher:
    """Finds which configuration of a file a batch graph is, from its atoms.

    ``numbers`` and ``positions`` of every configuration, concatenated in file order
    (``(n_atoms,)`` ints, ``(n_atoms, 3)`` Å) with ``sizes`` ``(n_configs,)``. A graph matches
    a configuration with the same atom count and elements in the same order whose positions
    agree within :data:`POSITION_TOLERANCE`. Identical configurations are handed out in file
    order, once each per :meth:`new_epoch`.
    """

    def __init__(self, numbers: np.ndarray, positions: np.ndarray, sizes: np.ndarray) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self.numbers = np.asarray(numbers, dtype=np.int64)
        self.positions = np.asarray(positions, dtype=np.float64)
        self.centroids = (
            np.add.reduceat(self.positions, self.offsets[:-1], axis=0)
            / np.maximum(self.sizes, 1)[:, None]
        )
        self._cells: dict[tuple, list[int]] = {}
        for config, (size, centroid) in enumerate(zip(self.sizes, self.centroids, strict=True)):
            for key in self._keys(int(size), centroid):
                self._cells.setdefault(key, []).append(config)
        self._used: set[int] = set()

    @staticmethod
    def _keys(size: int, centroid: np.ndarray) -> list[tuple]:
        """The grid cells of a centroid on two grids offset by half a cell: a point within
        ``POSITION_TOLERANCE`` of it shares a cell on at least one grid unless it sits on a
        corner of both, which :meth:`match` then resolves by a direct search."""
        return [
            (size, offset, *np.floor(centroid / _GRID + offset).astype(np.int64).tolist())
            for offset in (0.0, 0.5)
        ]

    def new_epoch(self) -> None:
        """Hand out every configuration again."""
        self._used.clear()

    def match(self, numbers: np.ndarray, positions: np.ndarray) -> int:
        """The configuration of one graph (``(n,)`` atomic numbers, ``(n, 3)`` positions in Å),
        or -1 if the file has none."""
        size = len(numbers)
        centroid = positions.mean(axis=0)
        candidates = {c for key in self._keys(size, centroid) for c in self._cells.get(key, [])}
        if not candidates:
            same_size = np.flatnonzero(self.sizes == size)
            near = np.max(np.abs(self.centroids[same_size] - centroid), axis=1)
            candidates = set(same_size[near <= POSITION_TOLERANCE].tolist())
        matches = [c for c in sorted(candidates) if self._is(c, numbers, positions)]
        if not matches:
            return -1
        config = next((c for c in matches if c not in self._used), matches[0])
        self._used.add(config)
        return config

    def _is(self, config: int, numbers: np.ndarray, positions: np.ndarray) -> bool:
        start, stop = self.offsets[config], self.offsets[config + 1]
        return bool(
            np.array_equal(self.numbers[start:stop], numbers)
            and np.max(np.abs(self.positions[start:stop] - positions)) <= POSITION_TOLERANCE
        )
