"""Small filesystems of a test's own that it can fill up: a size-limited tmpfs mounted (as
root) on a directory under the test's tmp_path, a filler file that takes every free byte, and
its removal. Only ever mounts on directories this test made; unmounts them at the end."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler"
CHUNK = 1 << 20


def require_root(what: str) -> None:
    """Skip (outside CI) or fail (under CI=true) unless this runs as root, which mounting
    needs."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} needs root (mount -t tmpfs); CI runs as root")
    pytest.skip(f"{what} needs root to mount a small tmpfs (mount -t tmpfs -o size=...)")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str, *, uid: int = 0, gid: int = 0) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: "4m") mounted on `path` (made here), its root
    owned by uid:gid with mode 0700; unmounted at the end."""
    path.mkdir(parents=True)
    options = f"size={size},mode=0700,uid={uid},gid={gid}"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"mount -t tmpfs -o {options} {path} failed: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        # Lazy: a server the test killed may still be closing its files there.
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, *, uid: int = 0, gid: int = 0) -> Path:
    """Write a filler file in `directory` until its filesystem has no byte left; its path."""
    filler = directory / FILLER
    block = b"\0" * CHUNK
    with filler.open("wb", buffering=0) as out:
        os.fchown(out.fileno(), uid, gid)
        size = CHUNK
        while size:
            try:
                out.write(block[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                size //= 2  # the last free pages, down to one byte
    return filler


def free(filler: Path) -> None:
    """Give the filler's space back."""
    filler.unlink()
