"""The Lua scripts, loaded once from package files and called by sha.

Only `store.py` calls these; nothing else sees KEYS or ARGV.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Script:
    """A Lua script's source and sha1, as Redis names it for EVALSHA."""

    name: str
    source: str
    sha: str


def _load(name: str) -> Script:
    source = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


HITS = _load("hits")
COUNTS = _load("counts")
LOAD_PAGES = _load("load_pages")
LOAD_SITE = _load("load_site")
SNAPSHOT = _load("snapshot")
REHOME = _load("rehome")
SET_CONFIG = _load("set_config")
LEASE = _load("lease")
RELEASE = _load("release")
VISITORS = _load("visitors")
APPLY_BASELINE = _load("apply_baseline")
MERGE_VISITORS = _load("merge_visitors")
FLUSHERS = _load("flushers")
MIGRATE_PAGES = _load("migrate_pages")
ALL = (
    HITS,
    COUNTS,
    LOAD_PAGES,
    LOAD_SITE,
    SNAPSHOT,
    REHOME,
    SET_CONFIG,
    LEASE,
    RELEASE,
    VISITORS,
    APPLY_BASELINE,
    MERGE_VISITORS,
    FLUSHERS,
    MIGRATE_PAGES,
)
