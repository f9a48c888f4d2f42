"""`viewcounter up`: local Redis and Postgres (unless given), migrations, then api and flusher."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from io import BytesIO
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from rich.console import Console

from services.cli import localpostgres, localredis, localservers, progress

REDIS_URL_ENV = "VIEWCOUNTER_REDIS_URL"
DATABASE_URL_ENV = "VIEWCOUNTER_DATABASE_URL"
ADMIN_TOKEN_ENV = "VIEWCOUNTER_ADMIN_TOKEN"
METRICS_PORT_ENV = "VIEWCOUNTER_METRICS_PORT"
DEFAULT_METRICS_PORT = 9101
API_METRICS_PORT_ENV = "VIEWCOUNTER_API_METRICS_PORT"
API_METRICS_HOST_ENV = "VIEWCOUNTER_API_METRICS_HOST"
DEFAULT_API_METRICS_PORT = 9102
DATABASE_NAME = "viewcounter"
CHILD_GRACE_S = 30.0
POLL_INTERVAL_S = 0.2
# examples/ beside the package (a source checkout): the demo page, served on the api port + 1.
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
# What examples/*.html say, as written for the default `viewcounter up`; replaced when served.
DEMO_API_BASE = "http://127.0.0.1:8000"
DEMO_SITE = "demo"
# Before each step that may take a while, on stdout as up's other messages.
MESSAGE_PREFIX = "viewcounter up: "


class _StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived while the stack was still starting."""


def _cli_command(*args: str) -> list[str]:
    """Command line running a `viewcounter` subcommand with this interpreter."""
    return [sys.executable, "-m", "services.cli", *args]


@contextlib.contextmanager
def _stop_signals(stop: threading.Event) -> Iterator[None]:
    """Route SIGINT and SIGTERM to the stop event while the stack runs."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_step(args: list[str], env: Mapping[str, str], stop: threading.Event) -> None:
    """Run a one-shot subcommand to completion; raise if it fails or a stop was requested."""
    if stop.is_set():
        raise _StopRequested
    result = subprocess.run(
        _cli_command(*args), env=dict(env), stdin=subprocess.DEVNULL, check=False
    )
    if stop.is_set():
        raise _StopRequested
    if result.returncode != 0:
        raise RuntimeError(f"`viewcounter {' '.join(args)}` failed with code {result.returncode}")


def _terminate(children: Mapping[str, subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every child, wait up to grace_s in total, then SIGKILL what is left."""
    for proc in children.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for name, proc in children.items():
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"viewcounter up: {name} did not stop within {grace_s:g} s; killing it")
            proc.kill()
            proc.wait()


def _supervise(children: Mapping[str, subprocess.Popen[bytes]], stop: threading.Event) -> int:
    """Wait for a stop request (0) or the first child to exit on its own (non-zero)."""
    while not stop.is_set():
        for name, proc in children.items():
            code = proc.poll()
            if code is not None:
                print(f"viewcounter up: {name} exited unexpectedly with code {code}; stopping")
                return code if code != 0 else 1
        stop.wait(POLL_INTERVAL_S)
    return 0


def demo_html(text: str, api_base: str, site: str) -> str:
    """An examples/ page pointed at the api on `api_base` and the site `site`."""
    return (
        text.replace(DEMO_API_BASE, api_base)
        .replace(f'data-site="{DEMO_SITE}"', f'data-site="{site}"')
        .replace(f"/v1/sites/{DEMO_SITE}/", f"/v1/sites/{site}/")
    )


def demo_csp(api_base: str) -> str:
    """A strict Content-Security-Policy that still lets the counter work: no inline code."""
    return (
        f"default-src 'none'; script-src {api_base}; connect-src {api_base}; "
        f"img-src 'self' {api_base}; style-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class _DemoHandler(http.server.SimpleHTTPRequestHandler):
    """Files of examples/; HTML pages rewritten for this api and site, under a strict CSP."""

    api_base = DEMO_API_BASE
    site = DEMO_SITE

    def send_head(self) -> BinaryIO | BytesIO | None:
        path = Path(self.translate_path(self.path))
        if path.is_dir():
            path = path / "index.html"
        if path.suffix != ".html" or not path.is_file():
            return super().send_head()
        body = demo_html(path.read_text("utf-8"), self.api_base, self.site).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", demo_csp(self.api_base))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return None

    def list_directory(self, path: str | os.PathLike[str]) -> BytesIO | None:
        self.send_error(404, "File not found")  # no directory listings
        return None

    def log_message(self, format: str, *args: object) -> None:
        pass  # the api and flusher logs are what `up` shows


@contextlib.contextmanager
def serve_examples(
    host: str, port: int, api_base: str, site: str, directory: Path = EXAMPLES_DIR
) -> Iterator[str | None]:
    """Serve `directory` on host:port (any free port if that one is taken) in a thread; yields
    its URL, or None when there is no such directory (an install without the source tree)."""
    if not directory.is_dir():
        yield None
        return
    handler = functools.partial(
        type("DemoHandler", (_DemoHandler,), {"api_base": api_base, "site": site}),
        directory=str(directory),
    )
    try:
        server = http.server.ThreadingHTTPServer((host, port), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="demo-page", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _print_banner(
    host: str, port: int, demo_site: str, env: Mapping[str, str], demo_url: str | None = None
) -> None:
    base = f"http://{host}:{port}"
    metrics_port = env.get(METRICS_PORT_ENV, str(DEFAULT_METRICS_PORT))
    api_metrics_port = env.get(API_METRICS_PORT_ENV, str(DEFAULT_API_METRICS_PORT))
    api_metrics_host = env.get(API_METRICS_HOST_ENV, "127.0.0.1")
    api_metrics = (
        "(off: VIEWCOUNTER_API_METRICS_PORT=0)"
        if api_metrics_port == "0"
        else f"http://{api_metrics_host}:{api_metrics_port}/metrics (and /readyz checks)"
    )
    hit = (
        # curl's own agent is on the crawler list: it would be answered `reason: "bot"`.
        f"curl -A 'Mozilla/5.0' -X POST {base}/v1/sites/{demo_site}/hits "
        "-H 'content-type: application/json' -d '{\"page\":\"hello\"}'"
    )
    lines = [
        "",
        "viewcounter is up",
        f"  api:              {base}",
        f"  record a view:    {hit}",
        f"  api metrics:      {api_metrics}",
        f"  demo page:        {demo_url or '(no examples/ directory here)'}",
        f"  flusher metrics:  http://127.0.0.1:{metrics_port}/metrics",
        f"  redis:            {env[REDIS_URL_ENV]}",
        f"  postgres:         {env[DATABASE_URL_ENV]}",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


def _start_databases(
    data_dir: Path,
    env: dict[str, str],
    servers: list[localservers.ServerProcess],
    console: Console,
) -> None:
    """Start Redis and Postgres for whichever URL the environment does not provide, saying
    what it is doing on `console` (a spinner on a terminal, plain lines otherwise)."""
    if not env.get(REDIS_URL_ENV):
        redis_server = localredis.RedisProcess(
            data_dir / "redis", appendonly=True, appendfsync="everysec"
        )
        servers.append(redis_server)
        with progress.step(console, f"starting Redis in {data_dir / 'redis'}", MESSAGE_PREFIX):
            redis_server.start()
        env[REDIS_URL_ENV] = redis_server.url
        print(f"viewcounter up: started Redis on {redis_server.url}", flush=True)
    if not env.get(DATABASE_URL_ENV):
        pg_dir = data_dir / "postgres"
        pg_server = localpostgres.PostgresProcess(pg_dir, log_file=data_dir / "postgres.log")
        servers.append(pg_server)
        doing = (
            f"starting Postgres in {pg_dir}"
            if (pg_dir / "PG_VERSION").exists()
            else f"initialising Postgres in {pg_dir} (first start only: may take a minute)"
        )
        with progress.step(console, doing, MESSAGE_PREFIX):
            pg_server.start()
            pg_server.ensure_database(DATABASE_NAME)
        env[DATABASE_URL_ENV] = pg_server.url(DATABASE_NAME)
        print(f"viewcounter up: started Postgres on {env[DATABASE_URL_ENV]}", flush=True)


def run_up(
    *,
    host: str,
    port: int,
    data_dir: Path,
    demo_site: str = "demo",
    console: Console | None = None,
) -> int:
    """Run the whole stack in the foreground until Ctrl-C/SIGTERM (0) or a child dies (non-zero).
    Slow start-up steps show on `console` (default: stdout)."""
    console = console or Console()
    env = dict(os.environ)
    stop = threading.Event()
    servers: list[localservers.ServerProcess] = []
    children: dict[str, subprocess.Popen[bytes]] = {}
    data_dir.mkdir(parents=True, exist_ok=True)
    with _stop_signals(stop):
        try:
            _start_databases(data_dir, env, servers, console)
            if not env.get(ADMIN_TOKEN_ENV):
                env[ADMIN_TOKEN_ENV] = secrets.token_urlsafe(32)
                print(f"viewcounter up: generated admin token {env[ADMIN_TOKEN_ENV]}")
            _run_step(["migrate"], env, stop)
            _run_step(["sites", "add", demo_site], env, stop)
            for name, args in (
                ("api", ["api", "--host", host, "--port", str(port)]),
                ("flusher", ["flusher"]),
            ):
                # Own session so a terminal Ctrl-C reaches only us; we stop children in order.
                children[name] = subprocess.Popen(
                    _cli_command(*args), env=env, stdin=subprocess.DEVNULL, start_new_session=True
                )
            browse_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
            api_base = f"http://{browse_host}:{port}"
            with serve_examples(host, port + 1, api_base, demo_site) as demo_url:
                _print_banner(host, port, demo_site, env, demo_url)
                code = _supervise(children, stop)
        except _StopRequested:
            code = 0
        except RuntimeError as exc:
            print(f"viewcounter up: {exc}", file=sys.stderr)
            code = 1
        finally:
            _terminate(children, CHILD_GRACE_S)
            # The api and flusher are gone, so no write can race the databases' shutdown.
            for server in reversed(servers):
                server.stop()
    return code
