"""Back large allocations with transparent huge pages, set up before JAX starts.

XLA:CPU allocates the temporaries of a compiled program (about 2 GB for one training update on the reference
config) afresh on every call, and glibc serves each large block with its own `mmap`: every update then
page-faults some 450,000 fresh 4 KiB pages, about a third of its wall time on a 2-core machine
(bench/results.md, "Settings that change the speed"). glibc 2.35 and later can ask for transparent huge pages
on those mappings (the tunable
`glibc.malloc.hugetlb=1`, honoured where /sys/kernel/mm/transparent_hugepage/enabled says `always` or
`madvise`), which cuts the faults about 16-fold. glibc reads tunables only when a process starts, so the
command-line scripts re-execute themselves once with it set. Nothing changes in what is computed.

Set DREAMER_NO_HUGE_PAGES=1 to leave the environment as it is."""

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "DREAMER_NO_HUGE_PAGES"


def tunables_with_huge_pages(environ) -> str | None:
    """The GLIBC_TUNABLES value that adds huge pages to `environ`'s, or None where nothing is to be done
    (not glibc >= 2.35, opted out, or the tunable already set either way)."""
    if environ.get(OPT_OUT) or not sys.platform.startswith("linux"):
        return None
    library, version = platform.libc_ver()
    try:
        if library != "glibc" or tuple(int(part) for part in version.split(".")[:2]) < (2, 35):
            return None
    except ValueError:
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in current:
        return None
    return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def reexec_with_huge_pages() -> None:
    """Re-executes this process (same pid, interpreter options and arguments) with huge pages for large
    allocations, once; returns at once where that is not needed or not possible. Call it before importing jax."""
    tunables = tunables_with_huge_pages(os.environ)
    if tunables is None:
        return
    os.environ["GLIBC_TUNABLES"] = tunables
    try:
        os.execv(sys.executable, sys.orig_argv)
    except OSError:  # cannot re-execute (unusual launcher): run on without huge pages
        return


def active() -> bool:
    """Whether this process started with huge pages for large allocations."""
    return f"{TUNABLE}=1" in os.environ.get("GLIBC_TUNABLES", "")
