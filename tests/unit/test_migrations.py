"""The migration files as shipped: numbered from 1 without gaps (applying them: test_migrate.py)."""

from __future__ import annotations

import pytest

from services.db import migrate

pytestmark = pytest.mark.unit


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in migrate.migrations()]
    assert versions == list(range(1, len(versions) + 1))
