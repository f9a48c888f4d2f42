"""Every exception the db package raises: callers catch these, never a driver's."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """Postgres is unreachable, timed out or refused the work; nothing was committed."""


class ConnectionLost(DatabaseUnavailable):
    """The server closed the connection mid-transaction; nothing of it was committed."""

    def __init__(self) -> None:
        super().__init__(
            "ConnectionLost: Postgres closed the connection mid-transaction (server stopped, "
            "restarted or ended the session); nothing of it was committed"
        )


class GenerationChanged(Exception):
    """Redis lost a site's live totals while its batch was in hand; the batch was rolled back."""


class UnknownSiteRow(Exception):
    """The site has no row in sites/site_views."""
