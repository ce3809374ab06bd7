"""Read every object, attribute and dataset of an HDF5 file once.

ltau runs this file in a child process whose time it bounds (see ``ltau._io``), before it
parses a file that no seal vouches for: a damaged file on which HDF5 spins or crashes stops
the child, not the caller. It imports nothing from ltau. Exit status 0: everything was read;
otherwise the problem is the last line on standard error.
"""

from __future__ import annotations

import sys

import h5py

_SLAB = 1 << 24  # elements read at once


def walk(path: str) -> None:
    """Read all of the HDF5 file at ``path``, following no link that leaves it."""
    with h5py.File(path, "r") as handle:
        names: list[str] = []

        def note(name: str, link: h5py.HardLink | h5py.SoftLink | h5py.ExternalLink) -> None:
            if isinstance(link, h5py.HardLink):
                names.append(name)

        handle.visititems_links(note)
        _read_attributes(handle)
        for name in names:
            item = handle[name]
            _read_attributes(item)
            if isinstance(item, h5py.Dataset) and not (item.is_virtual or item.external):
                _read_dataset(item)


def _read_attributes(node: h5py.HLObject) -> None:
    for key in node.attrs:
        node.attrs[key]


def _read_dataset(dataset: h5py.Dataset) -> None:
    if dataset.ndim == 0 or dataset.size == 0:
        dataset[()]
        return
    rows = max(1, _SLAB // max(1, dataset.size // dataset.shape[0]))
    for start in range(0, dataset.shape[0], rows):
        dataset[start : start + rows]


if __name__ == "__main__":
    try:
        walk(sys.argv[1])
    except Exception as exc:  # reported to the parent, which raises LTAUFileError
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        sys.exit(1)
