"""Named queries: each repository module's SQL lives beside it in `<module>.sql`.

A file holds queries headed by `-- name: <name>` lines; `load` reads one file once, when its
module is imported, so a malformed file fails at start-up rather than on first use.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: (\w+)\n", flags=re.MULTILINE)


class Queries(dict[str, str]):
    """A file's queries by name; an unknown name raises KeyError naming the file."""

    def __init__(self, source: str, queries: dict[str, str]) -> None:
        super().__init__(queries)
        self.source = source

    def __missing__(self, name: str) -> str:
        raise KeyError(f"no query {name!r} in {self.source}")


def parse(source: str, text: str) -> Queries:
    """The named queries of `text` (the contents of the file `source`)."""
    parts = _NAME_LINE.split(text)
    names = parts[1::2]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{source}: queries named twice: {', '.join(duplicates)}")
    return Queries(source, {n: sql.strip() for n, sql in zip(names, parts[2::2], strict=True)})


def load(noun: str) -> Queries:
    """The named queries of `<noun>.sql` in this package."""
    source = f"{noun}.sql"
    return parse(source, resources.files(__package__).joinpath(source).read_text("utf-8"))
