"""Every exception the db package raises: callers catch these, never a driver's."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """Postgres is unreachable, timed out or refused the work; nothing was committed."""


class GenerationChanged(Exception):
    """Redis lost a site's live totals while its batch was in hand; the batch was rolled back."""


class UnknownSiteRow(Exception):
    """The site has no row in sites/site_views."""
