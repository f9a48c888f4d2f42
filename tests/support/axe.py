"""The accessibility check of the browser tests: axe-core, injected into a page.

axe-core comes from the npm registry, pinned in tests/js/package.json and package-lock.json;
`npm ci --prefix tests/js` (run by .ci/run) puts it in tests/js/node_modules. Without it the
check skips, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

AXE_JS = Path(__file__).resolve().parents[1] / "js" / "node_modules" / "axe-core" / "axe.min.js"
# What fails a test: axe's two highest impacts (the others are "moderate" and "minor").
FAILING_IMPACTS = frozenset({"serious", "critical"})

_RUN = """async () => {
  const results = await axe.run(document, { resultTypes: ["violations"] });
  return results.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => n.target.join(" ") + ": " + n.failureSummary)
  }));
}"""


def axe_source() -> str:
    """axe.min.js; skip (fail under CI) when it was not installed."""
    if not AXE_JS.is_file():
        reason = f"axe-core is not installed ({AXE_JS}): run `npm ci --prefix tests/js`"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it (.ci/run does)", pytrace=False)
        pytest.skip(reason)
    return AXE_JS.read_text(encoding="utf-8")


async def violations(page: Page) -> list[dict[str, Any]]:
    """axe's violations of the page as it is now (every rule axe runs by default)."""
    # Evaluated through the DevTools protocol: the page's CSP (no inline script) allows it.
    await page.evaluate(axe_source() + "\n;undefined")
    found: list[dict[str, Any]] = await page.evaluate(_RUN)
    return found


async def serious_violations(page: Page) -> list[dict[str, Any]]:
    """The violations of impact serious or critical."""
    return [v for v in await violations(page) if v["impact"] in FAILING_IMPACTS]
