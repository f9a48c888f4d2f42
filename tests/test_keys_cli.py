"""`viewcounter keys create|list|revoke`: the contract other tools use (the secret alone on the
last line of stdout), and a revocation from the command line reaching a running api."""

from __future__ import annotations

import getpass
import os

import pytest

from services.counting import apikeys
from tests.support.checks import fetch
from tests.support.cli import run_cli
from tests.support.stack import FakeClock, make_settings, register_site, running_api

SITE = "quan11"


@pytest.mark.timeout(120)  # eight commands, each a Python start (~2-3 s on a busy machine)
async def test_keys_from_the_command_line(redis_url: str, database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWCOUNTER_")}
    env.update(VIEWCOUNTER_REDIS_URL=redis_url, VIEWCOUNTER_DATABASE_URL=database_url)
    clock = FakeClock()
    url = f"/v1/sites/{SITE}/reports/totals"
    async with running_api(make_settings(redis_url, database_url), clock=clock) as client:
        await register_site(client, SITE)
        code, out, err = await run_cli(
            "keys", "create", SITE, "--scope", "report", "--name", "Tòa soạn",
            "--expires-in", "30", env=env,
        )  # fmt: skip
        assert code == 0, err
        secret = out.splitlines()[-1]
        assert apikeys.SECRET_RE.fullmatch(secret)
        listed = await run_cli("keys", "list", SITE, env=env)
        opened = await client.get(url, headers={"authorization": f"Bearer {secret}"})
        key_id = (await fetch(database_url, "SELECT id FROM api_keys"))[0]["id"]
        revoked = await run_cli("keys", "revoke", SITE, key_id, env=env)
        clock.advance(apikeys.GENERATION_CHECK_S)  # the api reads the revocation generation
        refused = await client.get(url, headers={"authorization": f"Bearer {secret}"})
        again = await run_cli("keys", "revoke", SITE, key_id, env=env)
        unknown_key = await run_cli("keys", "revoke", SITE, "000000000000", env=env)
        unknown_site = await run_cli("keys", "create", "ghost", "--scope", "admin", env=env)
        bad_scope = await run_cli("keys", "create", SITE, "--scope", "owner", env=env)
        bad_days = await run_cli(
            "keys", "create", SITE, "--scope", "admin", "--expires-in", "0", env=env
        )
    assert listed[0] == 0
    assert listed[1].splitlines()[0].split("\t")[:3] == ["id", "scope", "name"]
    row = listed[1].splitlines()[1].split("\t")
    assert row[:3] == [key_id, "report", "Tòa soạn"]
    assert secret not in listed[1] and secret.removeprefix("vck_") not in listed[1]
    assert opened.status_code == 200
    assert revoked[0] == 0 and refused.status_code == 401
    assert again[0] == 0  # revoking twice changes nothing
    assert unknown_key[0] == 1 and "no key" in unknown_key[2]
    assert unknown_site[0] == 2 and "no such site" in unknown_site[2]
    assert bad_scope[0] == 2 and "--scope" in bad_scope[2]
    assert bad_days[0] == 2 and bad_days[2].startswith("viewcounter: --expires-in")
    actions = await fetch(
        database_url,
        "SELECT actor, action FROM audit_log WHERE action LIKE 'key.%' ORDER BY id",
    )
    me = f"cli:{getpass.getuser()}"
    assert [tuple(r) for r in actions] == [(me, "key.create"), (me, "key.revoke")]
