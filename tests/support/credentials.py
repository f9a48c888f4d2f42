"""The credentials tests sign in with, each made in one place.

`report_credential` is what a site's editor signs in to the dashboard with: a report key of
that site, created through the api by the operator (the global VIEWCOUNTER_REPORT_TOKEN of
`report_settings()` stays set, so tests can check the key and not the token opens the site).
"""

from __future__ import annotations

import httpx

from tests.support.stack import ADMIN

# The global report token of the tests' settings (`report_settings`).
REPORT_TOKEN = "report-token-for-editors-0123"


def report_settings() -> dict[str, object]:
    """Settings overrides (for `make_settings`) the dashboard tests run under."""
    return {"report_token": REPORT_TOKEN}


async def report_credential(api: httpx.AsyncClient, site: str) -> str:
    """A new report key of `site` (the bearer secret an editor of `site` signs in with; it
    opens only `site`'s reports)."""
    response = await api.post(
        f"/v1/sites/{site}/keys", json={"scope": "report", "name": "editors"}, headers=ADMIN
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret
