"""Small file systems of the test's own, for disks that fill up or turn read-only.

Mounting needs root (CI is root); without it, or where the kernel refuses,
the test is skipped with the reason. Every command has a time bound.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

COMMAND_TIMEOUT_S = 20.0


def run(*command: str) -> subprocess.CompletedProcess:
    """``command``, its output captured; never raises on a failure exit."""
    return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          check=False)


def require_root() -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("precisa de root para montar um sistema de arquivos de teste")


def unmount(mount_point: Path) -> None:
    """Unmount, lazily if something still holds it open."""
    if run("umount", str(mount_point)).returncode != 0:
        run("umount", "-l", str(mount_point))


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "2m") at ``mount_point``, created here; unmounted after."""
    require_root()
    mount_point.mkdir()
    result = run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                 str(mount_point))
    if result.returncode != 0:
        pytest.skip(f"mount não permitido aqui: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        unmount(mount_point)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full, to the last KiB; returns it."""
    filler = directory / "enchimento"
    with open(filler, "wb") as data:
        for _ in range(4096):  # 256 MiB at most, far above a test's tmpfs
            try:
                data.write(b"\0" * 65536)
                data.flush()
            except OSError:
                break
        else:
            pytest.fail("o sistema de arquivos de teste não encheu")
    with contextlib.suppress(OSError), open(filler, "ab") as data:
        for _ in range(64):
            data.write(b"\0" * 1024)
            data.flush()
    return filler
