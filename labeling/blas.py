"""How many threads the BLAS libraries loaded in this process may use.

numpy and scipy each load their own OpenBLAS, and each starts as many threads as the machine
has cores. A worker process that shares those cores with other workers (the Procfile runs
two on the labels queue) then has its threads wait for each other: the Bradley-Terry fit,
whose BLAS calls are dot products and norms over score vectors, measured twice as slow with
the default threads as with one when another process ran beside it
(docs/benchmarks.md, "Bradley–Terry fit"). So the aggregation task runs its fit with a deliberate number.

The count is set through OpenBLAS's own entry point (what threadpoolctl does), found among
the libraries this process has mapped; OPENBLAS_NUM_THREADS would have to be set before
numpy is first imported. Where no OpenBLAS is found (another BLAS, another OS) nothing
happens. Pure Python; no Django.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

# OpenBLAS builds name their entry points with the suffix of their integer size and, in the
# wheels numpy and scipy ship, a "scipy_" prefix.
_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "")


def _openblas_libraries() -> list[tuple[ctypes.CDLL, str]]:
    """(library, name prefix of its setter/getter) for every OpenBLAS mapped here."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower()})
    found = []
    for path in paths:
        if not path.startswith("/"):
            continue
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        names = [f"{prefix}_%s_num_threads{suffix}" for prefix in _PREFIXES for suffix in _SUFFIXES]
        usable = [n for n in names if hasattr(library, n % "set") and hasattr(library, n % "get")]
        if usable:
            found.append((library, usable[0]))
    return found


def blas_threads() -> list[int]:
    """The thread count of each OpenBLAS loaded in this process."""
    return [int(getattr(lib, name % "get")()) for lib, name in _openblas_libraries()]


@contextlib.contextmanager
def blas_threads_limited(*, threads: int) -> Iterator[None]:
    """Run the block with every loaded OpenBLAS on ``threads`` threads, then restore them."""
    libraries = _openblas_libraries()
    before = [int(getattr(lib, name % "get")()) for lib, name in libraries]
    for lib, name in libraries:
        getattr(lib, name % "set")(ctypes.c_int(threads))
    try:
        yield
    finally:
        for (lib, name), count in zip(libraries, before, strict=True):
            getattr(lib, name % "set")(ctypes.c_int(count))
