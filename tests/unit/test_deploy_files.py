"""The deploy/ and compose files: promtool accepts them, alerts fire as documented, and the
compose files run every part as the docs say."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.config import Settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing under CI (.ci/run installs Debian's prometheus)")
        pytest.skip("promtool not installed (apt-get install prometheus); YAML checked above")
    return found


@pytest.mark.parametrize(
    ("command", "path"),
    [("rules", "prometheus/alerts.yml"), ("config", "prometheus/prometheus.yml")],
)
def test_promtool_accepts_the_deploy_files(command: str, path: str) -> None:
    args = [_promtool(), "check", command, str(DEPLOY / path)]
    if command == "config":
        args.insert(3, "--syntax-only")
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_as_documented() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_monitoring_profile_uses_the_deploy_files() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), source
    for name in ("api", "flusher"):
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])


@pytest.mark.parametrize("compose_file", ["docker-compose.yml", "docker-compose.cluster.yml"])
def test_the_api_metrics_listener_is_reachable_by_prometheus_and_never_published(
    compose_file: str,
) -> None:
    api = yaml.safe_load((REPO / compose_file).read_text())["services"]["api"]
    settings = Settings(
        redis_url="redis://x",
        database_url="postgresql://x",
        **{
            k.removeprefix("VIEWCOUNTER_").lower(): str(v)
            for k, v in api["environment"].items()
            if k.startswith("VIEWCOUNTER_") and "URL" not in k and "TOKEN" not in k
        },
    )
    assert (settings.api_metrics_host, settings.api_metrics_port) == ("0.0.0.0", 9102)
    assert [str(p).split(":")[-1] for p in api["ports"]] == ["8000"]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    targets = jobs["viewcounter-api"]["static_configs"][0]["targets"]
    assert targets == [f"api:{settings.api_metrics_port}"]


def test_the_clustered_compose_file_runs_every_node_safely() -> None:
    compose = yaml.safe_load(
        (REPO / "docker-compose.cluster.yml").read_text()
    )
    services = compose["services"]
    nodes = [name for name in services if name.startswith("redis-") and name[-1].isdigit()]
    assert len(nodes) == 6  # 3 masters, a replica each
    for name in nodes:
        command = " ".join(services[name]["command"])
        for option in (
            "--appendonly yes",
            "--maxmemory-policy noeviction",
            "--cluster-enabled yes",
            "--cluster-require-full-coverage no",
        ):
            assert option in command, (name, option)
    init = " ".join(services["redis-cluster-init"]["command"])
    assert all(f"{name}:6379" in init for name in nodes)
    assert "--cluster-replicas 1" in init
    env = {k: str(v) for k, v in services["api"]["environment"].items()}
    env["VIEWCOUNTER_ADMIN_TOKEN"] = "x" * 32
    values: dict[str, Any] = {k.removeprefix("VIEWCOUNTER_").lower(): v for k, v in env.items()}
    settings = Settings(**values)
    assert settings.redis_url == "redis+cluster://redis-1:6379/0"
    assert settings.redis_wait_replicas == 1
    assert services["flusher"]["deploy"]["replicas"] == 2
