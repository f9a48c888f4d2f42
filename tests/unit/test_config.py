"""Settings from VIEWCOUNTER_* variables: defaults, accepted forms, one clear line per bad value."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/0"
DATABASE = "postgresql://vc@127.0.0.1:5432/vc"
GOOD_TOKEN = "k3J9xq2LwP0vZr7tYb4N"


def _outer_viewcounter_names() -> list[str]:
    # pydantic-settings matches names case-insensitively, so clear every spelling.
    return [name for name in os.environ if name.upper().startswith("VIEWCOUNTER_")]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: valid URLs, nothing leaked from the outer environment."""
    for name in _outer_viewcounter_names():
        monkeypatch.delenv(name)
    monkeypatch.setenv("VIEWCOUNTER_REDIS_URL", REDIS)
    monkeypatch.setenv("VIEWCOUNTER_DATABASE_URL", DATABASE)


def config_error_lines(monkeypatch: pytest.MonkeyPatch, **env: str | None) -> list[str]:
    """Set (or, for None, remove) VIEWCOUNTER_<NAME> and return the ConfigError's lines."""
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(f"VIEWCOUNTER_{name}", raising=False)
        else:
            monkeypatch.setenv(f"VIEWCOUNTER_{name}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == "\n".join(caught.value.lines)
    return caught.value.lines


def test_only_the_urls_are_required_and_everything_else_has_the_documented_default() -> None:
    assert sorted(_outer_viewcounter_names()) == [
        "VIEWCOUNTER_DATABASE_URL",
        "VIEWCOUNTER_REDIS_URL",
    ]
    settings = load_settings()
    assert settings.redis_url == REDIS
    assert settings.database_url == DATABASE
    assert settings.admin_token is None
    assert settings.flush_interval == 5.0
    assert settings.dedupe_window == 1800
    assert settings.rate_limit == 600
    assert settings.trusted_proxies == []
    assert settings.metrics_port == 9101
    # The api's metrics listener: private by default.
    assert (settings.api_metrics_host, settings.api_metrics_port) == ("127.0.0.1", 9102)
    assert settings.max_body_bytes == 16 * 1024


@pytest.mark.parametrize(("raw", "expected"), [("0.5", 0.5), ("2.25", 2.25), ("3600", 3600.0)])
def test_flush_interval_accepts_fractions_of_a_second(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: float
) -> None:
    monkeypatch.setenv("VIEWCOUNTER_FLUSH_INTERVAL", raw)
    assert load_settings().flush_interval == expected


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        (
            "abc",
            "VIEWCOUNTER_FLUSH_INTERVAL: Input should be a valid number, "
            "unable to parse string as a number",
        ),
        ("-1", "VIEWCOUNTER_FLUSH_INTERVAL: Input should be greater than 0"),
        ("0", "VIEWCOUNTER_FLUSH_INTERVAL: Input should be greater than 0"),
        ("nan", "VIEWCOUNTER_FLUSH_INTERVAL: Input should be less than or equal to 3600"),
        ("inf", "VIEWCOUNTER_FLUSH_INTERVAL: Input should be less than or equal to 3600"),
        ("3600.5", "VIEWCOUNTER_FLUSH_INTERVAL: Input should be less than or equal to 3600"),
    ],
)
def test_bad_flush_interval_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str, line: str
) -> None:
    assert config_error_lines(monkeypatch, FLUSH_INTERVAL=raw) == [line]


def test_missing_redis_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_error_lines(monkeypatch, REDIS_URL=None) == ["VIEWCOUNTER_REDIS_URL: is required"]


@pytest.mark.parametrize("url", ["http://x", "x", "127.0.0.1:6379", "valkey://x"])
def test_redis_url_with_another_scheme_is_refused(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    assert config_error_lines(monkeypatch, REDIS_URL=url) == [
        "VIEWCOUNTER_REDIS_URL: must start with redis://, rediss://, unix://, redis+cluster:// "
        "or rediss+cluster://"
    ]


@pytest.mark.parametrize(
    ("url", "flag", "expected"),
    [
        ("redis://h:7000", "1", "redis+cluster://h:7000"),
        ("rediss://u:p@h:7000", "true", "rediss+cluster://u:p@h:7000"),
        ("redis+cluster://h:7000", "0", "redis+cluster://h:7000"),
        ("redis://h:7000", "0", "redis://h:7000"),
    ],
)
def test_a_cluster_is_chosen_by_the_flag_or_the_url(
    monkeypatch: pytest.MonkeyPatch, url: str, flag: str, expected: str
) -> None:
    monkeypatch.setenv("VIEWCOUNTER_REDIS_URL", url)
    monkeypatch.setenv("VIEWCOUNTER_REDIS_CLUSTER", flag)
    assert load_settings().redis_url == expected


def test_a_cluster_over_a_unix_socket_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = config_error_lines(monkeypatch, REDIS_URL="unix:///tmp/r.sock", REDIS_CLUSTER="1")
    assert lines == [
        "VIEWCOUNTER_REDIS_CLUSTER: a Redis Cluster needs a redis:// or rediss:// URL, not unix://"
    ]


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://u:p@h", "unix:///tmp/r.sock"])
def test_redis_url_schemes_that_are_accepted(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("VIEWCOUNTER_REDIS_URL", url)
    assert load_settings().redis_url == url


def test_database_url_must_be_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_error_lines(monkeypatch, DATABASE_URL="mysql://x/y") == [
        "VIEWCOUNTER_DATABASE_URL: must start with postgresql://"
    ]
    monkeypatch.setenv("VIEWCOUNTER_DATABASE_URL", "postgres://x/y")
    assert load_settings().database_url == "postgres://x/y"


def test_reports_read_the_main_database_unless_a_reports_url_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().reports_url == DATABASE
    monkeypatch.setenv("VIEWCOUNTER_REPORTS_DATABASE_URL", "")
    assert load_settings().reports_url == DATABASE
    replica = "postgresql://reader@replica:5432/vc"
    monkeypatch.setenv("VIEWCOUNTER_REPORTS_DATABASE_URL", replica)
    assert (load_settings().reports_url, load_settings().database_url) == (replica, DATABASE)
    assert config_error_lines(monkeypatch, REPORTS_DATABASE_URL="mysql://x/y") == [
        "VIEWCOUNTER_REPORTS_DATABASE_URL: must start with postgresql://"
    ]


def test_the_idempotency_time_is_a_day_by_default_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().idempotency_ttl == 86400
    monkeypatch.setenv("VIEWCOUNTER_IDEMPOTENCY_TTL", "3600")
    assert load_settings().idempotency_ttl == 3600
    for bad in ("59", str(7 * 86400 + 1), "a day"):
        assert config_error_lines(monkeypatch, IDEMPOTENCY_TTL=bad)[0].startswith(
            "VIEWCOUNTER_IDEMPOTENCY_TTL: "
        )


@pytest.mark.parametrize("token", ["changeme", "CHANGEME", "secret", "password", "short-but-real"])
def test_placeholder_or_short_admin_token_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    # The exact line also proves the token itself is not echoed to logs.
    assert config_error_lines(monkeypatch, ADMIN_TOKEN=token) == [
        "VIEWCOUNTER_ADMIN_TOKEN: must be a random secret of at least 16 characters"
    ]


def test_empty_admin_token_turns_admin_routes_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWCOUNTER_ADMIN_TOKEN", "")
    assert load_settings().admin_token is None


def test_random_admin_token_is_kept_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWCOUNTER_ADMIN_TOKEN", GOOD_TOKEN)
    settings = load_settings()
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == GOOD_TOKEN
    assert GOOD_TOKEN not in repr(settings)


@pytest.mark.parametrize(
    ("raw", "bad_item"), [("not-an-ip", "not-an-ip"), ("10.0.0.0/8, 1.2.3", "1.2.3")]
)
def test_trusted_proxy_that_is_not_an_address_is_named(
    monkeypatch: pytest.MonkeyPatch, raw: str, bad_item: str
) -> None:
    assert config_error_lines(monkeypatch, TRUSTED_PROXIES=raw) == [
        f"VIEWCOUNTER_TRUSTED_PROXIES: {bad_item!r} is not an IP address or network"
    ]


def test_trusted_proxies_are_a_comma_list_of_addresses_and_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VIEWCOUNTER_TRUSTED_PROXIES", " 10.0.0.0/8, 192.168.1.7 ,,::1")
    assert load_settings().trusted_proxies == ["10.0.0.0/8", "192.168.1.7", "::1"]


def test_zero_turns_dedupe_and_rate_limit_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWCOUNTER_DEDUPE_WINDOW", "0")
    monkeypatch.setenv("VIEWCOUNTER_RATE_LIMIT", "0")
    settings = load_settings()
    assert (settings.dedupe_window, settings.rate_limit) == (0, 0)


def test_every_bad_value_gets_its_own_line_in_field_order(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = config_error_lines(
        monkeypatch,
        REDIS_URL="http://x",
        DATABASE_URL=None,
        ADMIN_TOKEN="changeme",
        FLUSH_INTERVAL="-1",
        DEDUPE_WINDOW="1.5",
        TRUSTED_PROXIES="not-an-ip",
        METRICS_PORT="70000",
    )
    assert lines == [
        "VIEWCOUNTER_REDIS_URL: must start with redis://, rediss://, unix://, redis+cluster:// "
        "or rediss+cluster://",
        "VIEWCOUNTER_DATABASE_URL: is required",
        "VIEWCOUNTER_ADMIN_TOKEN: must be a random secret of at least 16 characters",
        "VIEWCOUNTER_FLUSH_INTERVAL: Input should be greater than 0",
        "VIEWCOUNTER_DEDUPE_WINDOW: Input should be a valid integer, "
        "unable to parse string as an integer",
        "VIEWCOUNTER_TRUSTED_PROXIES: 'not-an-ip' is not an IP address or network",
        "VIEWCOUNTER_METRICS_PORT: Input should be less than or equal to 65535",
    ]


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.flush_interval = 1.0  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_flusher_with_bad_env_exits_at_once_with_one_line_per_bad_value() -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VIEWCOUNTER_")}
    env |= {
        "VIEWCOUNTER_REDIS_URL": "http://x",
        "VIEWCOUNTER_DATABASE_URL": DATABASE,
        "VIEWCOUNTER_FLUSH_INTERVAL": "abc",
        "VIEWCOUNTER_ADMIN_TOKEN": "changeme",
        "VIEWCOUNTER_TRUSTED_PROXIES": "not-an-ip",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "flusher"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "viewcounter: VIEWCOUNTER_REDIS_URL: must start with redis://, rediss://, unix://, "
        "redis+cluster:// or rediss+cluster://",
        "viewcounter: VIEWCOUNTER_ADMIN_TOKEN: must be a random secret of at least 16 characters",
        "viewcounter: VIEWCOUNTER_FLUSH_INTERVAL: Input should be a valid number, "
        "unable to parse string as a number",
        "viewcounter: VIEWCOUNTER_TRUSTED_PROXIES: 'not-an-ip' is not an IP address or network",
    ]
    assert elapsed < 10, f"took {elapsed:.1f}s: validation must come before any connection"


def test_the_online_window_is_five_minutes_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().online_window == 300
    monkeypatch.setenv("VIEWCOUNTER_ONLINE_WINDOW", "600")
    assert load_settings().online_window == 600


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        ("90", "VIEWCOUNTER_ONLINE_WINDOW: must be a whole number of minutes (a multiple of 60)"),
        ("0", "VIEWCOUNTER_ONLINE_WINDOW: Input should be greater than or equal to 60"),
        ("7200", "VIEWCOUNTER_ONLINE_WINDOW: Input should be less than or equal to 3600"),
        ("soon", "VIEWCOUNTER_ONLINE_WINDOW: Input should be a valid integer, unable to parse "
         "string as an integer"),
    ],
)  # fmt: skip
def test_a_bad_online_window_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, raw: str, line: str
) -> None:
    assert config_error_lines(monkeypatch, ONLINE_WINDOW=raw) == [line]
