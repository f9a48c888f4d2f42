"""Key secrets, their hash and the checks of a key's fields (no server)."""

from __future__ import annotations

import pytest

from services.counting import apikeys
from services.counting.principals import CommandLine, GlobalToken, Operator, SiteKey

pytestmark = pytest.mark.unit


def test_a_secret_is_the_prefix_and_256_random_bits() -> None:
    made = {apikeys.new_secret() for _ in range(1000)}
    assert len(made) == 1000
    assert all(apikeys.SECRET_RE.fullmatch(s) for s in made)
    assert {len(s) for s in made} == {len("vck_") + 43}


def test_only_the_sha256_of_a_secret_is_kept() -> None:
    # The FIPS 180-2 test vector.
    assert apikeys.secret_sha256("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


@pytest.mark.parametrize(
    ("check", "value", "field"),
    [
        (apikeys.check_scope, "owner", "scope"),
        (apikeys.check_scope, None, "scope"),
        (apikeys.check_name, 5, "name"),
        (apikeys.check_name, "a\nb", "name"),
        (apikeys.check_name, "x" * 101, "name"),
        (apikeys.check_expires_in_days, 0, "expires_in_days"),
        (apikeys.check_expires_in_days, 3651, "expires_in_days"),
        (apikeys.check_expires_in_days, 1.5, "expires_in_days"),
        (apikeys.check_expires_in_days, True, "expires_in_days"),
    ],
)
def test_bad_key_fields_are_refused_naming_the_field(
    check: object, value: object, field: str
) -> None:
    assert callable(check)
    with pytest.raises(apikeys.InvalidKeyRequest) as refused:
        check(value)
    assert refused.value.field == field


def test_good_key_fields_pass() -> None:
    assert [apikeys.check_scope(s) for s in ("admin", "report", "ingest")] == [
        "admin",
        "report",
        "ingest",
    ]
    assert apikeys.check_name(None) == ""
    assert apikeys.check_name("Tòa soạn quận 11") == "Tòa soạn quận 11"
    assert apikeys.check_expires_in_days(None) is None
    assert apikeys.check_expires_in_days(3650) == 3650


def test_the_audit_log_names_each_caller() -> None:
    assert Operator().actor == "operator"
    assert SiteKey("a1b2c3d4e5f6", "editor", "quan11", "admin").actor == "key:a1b2c3d4e5f6:editor"
    assert CommandLine("lan").actor == "cli:lan"
    assert GlobalToken("report").actor == "token:report"
