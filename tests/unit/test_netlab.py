"""When the network chaos tests (tests/chaos/test_network.py) can run: root and the tools,
else a skip that says why, and under CI a failure instead."""

from __future__ import annotations

import pytest

from tests.support import netlab

pytestmark = pytest.mark.unit


def test_without_root_the_reason_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    assert netlab.missing_prerequisites() == "network namespaces need root"


def test_a_missing_tool_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 0)
    monkeypatch.setattr(netlab.shutil, "which", lambda tool: None if tool == "iptables" else tool)
    why = netlab.missing_prerequisites()
    assert why is not None and why.startswith("missing iptables")


def test_skipped_with_the_reason_outside_ci_failed_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netlab.os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="need root"):
        netlab.require()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run under CI: .*need root"):
        netlab.require()
