"""`python -m services.cli ...` as a child process of an async test."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping


async def run_cli(*args: str, env: Mapping[str, str]) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of `viewcounter ARGS` run to its end with `env`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
