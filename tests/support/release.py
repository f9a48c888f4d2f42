"""The previous release (the commit named in tests/previous_release.txt), built from this
repository's own history into an environment of its own, for the upgrade test.

The commit's files come out of git (`git archive`) into a cache directory keyed by the commit,
with a virtualenv beside them that imports that commit's `services` package, never the code
under test. The dependencies the release declares are taken from the test's own environment
when it satisfies them (a path file shares its site-packages; no download, seconds to build);
when it does not, they are pip-installed into the release's environment. A build is reused by
later runs (VIEWCOUNTER_RELEASE_CACHE, default .viewcounter/releases in the checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
RELEASE_FILE = REPO / "tests" / "previous_release.txt"
CACHE_ENV = "VIEWCOUNTER_RELEASE_CACHE"
READY_MARK = "ready"


class ReleaseMissing(Exception):
    """The previous release's commit cannot be read from this checkout's history."""


@dataclass(frozen=True)
class Release:
    """A built release: run `python -m services.cli …` with `python`, in `source`."""

    commit: str
    source: Path
    python: Path
    shared_dependencies: bool


def previous_commit() -> str:
    """The commit named in tests/previous_release.txt (the first line that is not a comment)."""
    for line in RELEASE_FILE.read_text("utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise ValueError(f"{RELEASE_FILE} names no commit")


def _git(*args: str, **options: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], check=False, **options)  # type: ignore[call-overload, no-any-return]


def resolve(commit: str) -> str:
    """The full hash of `commit`; ReleaseMissing when this clone does not hold it."""
    found = _git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", capture_output=True)
    if found.returncode != 0:
        shallow = _git("rev-parse", "--is-shallow-repository", capture_output=True)
        hint = (
            " (this clone is shallow: git fetch --unshallow)"
            if shallow.stdout.strip() == b"true"
            else " (clone the repository with its full history, without --depth)"
        )
        raise ReleaseMissing(f"the previous release {commit} is not in {REPO}'s history{hint}")
    return found.stdout.decode().strip()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / ".viewcounter" / "releases")


def build(commit: str) -> Release:
    """The release at `commit`, built once into the cache and reused."""
    full = resolve(commit)
    home = cache_dir() / full
    stale = (home / "shared").exists() and not all(
        _satisfied(req) for req in _dependencies(home / "src" / "pyproject.toml")
    )  # the test environment changed since: the shared packages no longer fit the release
    if stale or not (home / READY_MARK).exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{full[:12]}-", dir=home.parent))
        try:
            _build_into(full, work, home)
            shutil.rmtree(home, ignore_errors=True)
            work.rename(home)  # whole or not at all, also against a concurrent build
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    shared = (home / "shared").exists()
    return Release(full, home / "src", home / "venv" / "bin" / "python", shared)


def _build_into(commit: str, work: Path, home: Path) -> None:
    """Build into `work`, which will be renamed to `home` (the paths written name `home`)."""
    source = work / "src"
    source.mkdir()
    archive = _git("archive", "--format=tar", commit, capture_output=True)
    if archive.returncode != 0:
        raise ReleaseMissing(f"git archive {commit} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    venv = work / "venv"
    requirements = _dependencies(source / "pyproject.toml")
    if all(_satisfied(req) for req in requirements):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        # The release's own code first, then the test environment's third-party packages
        # (a path file in a path file's directory is not read: the code under test, installed
        # editable there, stays invisible).
        purelib = Path(sysconfig.get_paths()["purelib"])
        paths = [str(home / "src"), str(purelib)]
        (_site_packages(venv) / "viewcounter_release.pth").write_text("\n".join(paths) + "\n")
        (work / "shared").touch()
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(source)], check=True
        )
    (work / READY_MARK).write_text(commit + "\n")


def _dependencies(pyproject: Path) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    return [Requirement(spec) for spec in project.get("dependencies", [])]


def _satisfied(req: Requirement) -> bool:
    """Whether the test environment has a version of `req` (and of its extras' packages it
    already holds) that `req` accepts."""
    try:
        have = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(have, prereleases=True)


def _site_packages(venv: Path) -> Path:
    found = list((venv / "lib").glob("python3*/site-packages"))
    assert len(found) == 1, found
    return found[0]
