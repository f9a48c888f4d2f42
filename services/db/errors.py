"""Every exception the db package raises: callers catch these, never a driver's."""

from __future__ import annotations


class DatabaseUnavailable(Exception):
    """Postgres is unreachable, timed out or refused the work; nothing was committed."""


class ConnectionLost(DatabaseUnavailable):
    """The server closed the connection under the work (by default: mid-transaction, and
    nothing of it was committed)."""

    def __init__(
        self, during: str = "mid-transaction", outcome: str = "nothing of it was committed"
    ) -> None:
        super().__init__(
            f"ConnectionLost: Postgres closed the connection {during} (server stopped, "
            f"restarted or ended the session); {outcome}"
        )


class GenerationChanged(Exception):
    """Redis lost a site's live totals while its batch was in hand; the batch was rolled back."""


class UnknownSiteRow(Exception):
    """The site has no row in sites/site_views."""
