"""The credentials tests sign in with, each made in one place.

`report_credential` is what a site's editor signs in to the dashboard with. Today that is
the global VIEWCOUNTER_REPORT_TOKEN (give the api `report_settings()`); once per-site report
keys exist it becomes a report key of `site` created through the api, and every browser test
of the dashboard follows.
"""

from __future__ import annotations

import httpx

# The global report token of the tests' settings (`report_settings`).
REPORT_TOKEN = "report-token-for-editors-0123"


def report_settings() -> dict[str, object]:
    """Settings overrides (for `make_settings`) under which `report_credential` works."""
    return {"report_token": REPORT_TOKEN}


async def report_credential(api: httpx.AsyncClient, site: str) -> str:
    """The bearer secret an editor of `site` signs in with (it opens `site`'s reports)."""
    del api, site  # a per-site key will be created through `api` for `site`
    return REPORT_TOKEN
