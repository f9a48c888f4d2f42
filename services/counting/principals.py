"""Who is calling: the operator, a global token, a site's key, or the command line. Resolved
once per request (services/api/access.py) and handed to the audit log as its actor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["admin", "report", "ingest"]
SCOPES: tuple[Scope, ...] = ("admin", "report", "ingest")


@dataclass(frozen=True, slots=True)
class Operator:
    """The bearer of VIEWCOUNTER_ADMIN_TOKEN: every site, creating sites, every key."""

    @property
    def actor(self) -> str:
        """The audit log's name for the caller."""
        return "operator"


@dataclass(frozen=True, slots=True)
class GlobalToken:
    """The bearer of VIEWCOUNTER_REPORT_TOKEN or VIEWCOUNTER_INGEST_TOKEN: that scope on every
    site (never an admin action, so never in the audit log)."""

    scope: Literal["report", "ingest"]

    @property
    def actor(self) -> str:
        """The audit log's name for the caller."""
        return f"token:{self.scope}"


@dataclass(frozen=True, slots=True)
class SiteKey:
    """The bearer of one site's key: that site, that scope."""

    id: str
    name: str
    site: str
    scope: Scope

    @property
    def actor(self) -> str:
        """The audit log's name for the caller."""
        return f"key:{self.id}:{self.name}"


@dataclass(frozen=True, slots=True)
class CommandLine:
    """Someone running `viewcounter` on a machine with the database's URL: every site."""

    user: str

    @property
    def actor(self) -> str:
        """The audit log's name for the caller."""
        return f"cli:{self.user}"


Principal = Operator | GlobalToken | SiteKey | CommandLine
