"""Benchmark of the hit endpoint against a no-op endpoint on the same server (not a test).

    .venv/bin/python bench/run.py [--workers 1] [--duration 10] [--connections 64]

Starts a throwaway Redis (AOF on, everysec) and Postgres in a temp dir, migrates, registers one
site, and serves `bench.noop_app:create_bench_app` under uvicorn with the production flags. It
then alternates no-op and hit runs against that one server process (noop, hit, noop, hit, ...)
so machine noise hits both alike, and prints the medians, the ratio hit/noop (product target:
>= 0.8 with one worker), and a correctness check: the 200 answers to hits against the site's
live total. Results also go to bench/last-run.json and, as JSON, to the last line of stdout.

`--profile N` adds one more hit run of N seconds under py-spy (if installed) and prints the
functions that take the most time in the api process.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from services.localservers import PostgresProcess, RedisProcess, free_port  # noqa: E402

PYTHON = sys.executable
WRK_SCRIPT = BENCH_DIR / "wrk_post.lua"
RESULT_FILE = BENCH_DIR / "last-run.json"
PROFILE_FILE = BENCH_DIR / "last-profile.txt"
API_LOG_FILE = BENCH_DIR / "last-api.log"
NOOP_PATH = "/bench/noop"
DATABASE = "viewcounter"
API_START_TIMEOUT_S = 30.0
API_STOP_TIMEOUT_S = 15.0
MAX_PAGES_PER_READ = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    """One load run against one endpoint."""

    endpoint: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    ok: int
    non2xx: int
    socket_errors: int
    server_cpu_pct: float
    loadgen_cpu_pct: float


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--rounds", type=int, default=3, help="noop+hit pairs; medians reported")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load each")
    parser.add_argument("--pages", type=int, default=1000, help="distinct pages hit")
    parser.add_argument("--site", default="bench")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (2 cores: keep 1)")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the api, e.g. VIEWCOUNTER_REDIS_MAX_CONNECTIONS=16",
    )
    parser.add_argument(
        "--app",
        default="bench.noop_app:create_bench_app",
        help="uvicorn factory to serve (must keep POST /bench/noop), for A/B experiments",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="SECONDS", help="extra hit run under py-spy"
    )
    args = parser.parse_args(argv)
    if min(args.workers, args.duration, args.connections, args.rounds, args.pages) < 1:
        parser.error("--workers, --duration, --connections, --rounds, --pages must be >= 1")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# --- servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def backing_servers(tmp: Path) -> Iterator[tuple[RedisProcess, PostgresProcess]]:
    """Redis with AOF everysec and a Postgres (fsync off: the hit path never waits on it)."""
    redis = RedisProcess(tmp / "redis", appendonly=True, appendfsync="everysec")
    postgres = PostgresProcess(tmp / "pg", fsync=False, log_file=tmp / "pg.log")
    try:
        redis.start()
        postgres.start()
        postgres.ensure_database(DATABASE)
        yield redis, postgres
    finally:
        postgres.stop()
        redis.stop()


def api_env(redis: RedisProcess, postgres: PostgresProcess, extra: Sequence[str]) -> dict[str, str]:
    """Environment for the CLI and the api: our servers, quiet logs, bench importable."""
    env = dict(os.environ)
    env.update(
        VIEWCOUNTER_REDIS_URL=redis.url,
        VIEWCOUNTER_DATABASE_URL=postgres.url(DATABASE),
        VIEWCOUNTER_LOG_LEVEL="warning",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    )
    for item in extra:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--env expects NAME=VALUE, got {item!r}")
        env[name] = value
    return env


def cli(env: dict[str, str], *args: str) -> None:
    """Run `python -m services.cli ARGS`; exit with its output if it fails."""
    result = subprocess.run(
        [PYTHON, "-m", "services.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"viewcounter {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    print(f"  {' '.join(args)}: {result.stdout.strip()}")


def _get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def api_server(
    env: dict[str, str], app: str, workers: int, log_file: Path
) -> Iterator[tuple[int, int]]:
    """uvicorn serving the bench app; yields (port, pid). Stopped with SIGTERM, then SIGKILL."""
    port = free_port()
    command = [
        PYTHON, "-m", "uvicorn", app, "--factory",
        "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--loop", "uvloop", "--http", "httptools",
        "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    print("  api: " + " ".join(command[2:]))
    with log_file.open("ab") as log:
        # Own session: a terminal Ctrl-C reaches us, and we stop the api in order.
        proc = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_api(proc, port, log_file)
        yield port, proc.pid
    finally:
        _stop_group(proc, API_STOP_TIMEOUT_S)


def _wait_api(proc: subprocess.Popen[bytes], port: int, log_file: Path) -> None:
    deadline = time.monotonic() + API_START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"api exited with {proc.returncode}:\n{log_file.read_text()[-4000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if _get(port, "/readyz", timeout=1.0)[0] == 200:
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"api not ready in {API_START_TIMEOUT_S:g} s; log {log_file}")
        time.sleep(0.1)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Workers of a multi-worker uvicorn share its process group; make sure none is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# --- measuring -----------------------------------------------------------------------------


def _proc_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the ")": state is field 3 of stat(5), so utime (14) and stime (15) are at 11, 12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def server_cpu_s(pid: int) -> float:
    """CPU seconds used so far by the api and its direct children (the workers)."""
    total = _proc_cpu_s(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            total += _proc_cpu_s(int(child))
    return total


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loadgen_command(
    args: argparse.Namespace, kind: str, port: int, path: str, seconds: int
) -> list[str]:
    """The wrk or bench.pyload command for one run."""
    if kind == "wrk":
        return [
            "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
            "--timeout", "10s", "-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}",
            "--", path, str(args.pages),
        ]  # fmt: skip
    return [
        PYTHON, "-m", "bench.pyload", "--port", str(port), "--path", path,
        "--duration", str(seconds), "--connections", str(args.connections),
        "--pages", str(args.pages),
    ]  # fmt: skip


def run_load(
    args: argparse.Namespace, kind: str, port: int, api_pid: int, endpoint: str, seconds: int
) -> RunResult:
    """One closed-loop run of `seconds` against `endpoint` ("hit" or "noop")."""
    path = NOOP_PATH if endpoint == "noop" else f"/v1/sites/{args.site}/hits"
    command = loadgen_command(args, kind, port, path, seconds)
    cpu_server, cpu_children, wall = server_cpu_s(api_pid), _children_cpu_s(), time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - wall
    cpu_server = server_cpu_s(api_pid) - cpu_server
    cpu_children = _children_cpu_s() - cpu_children
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"load generator failed ({proc.returncode}):\n{out}")
    s = json.loads(match.group(1))
    secs = s["duration_us"] / 1e6
    return RunResult(
        endpoint=endpoint,
        requests=s["requests"],
        seconds=round(secs, 3),
        rps=s["requests"] / secs if secs else 0.0,
        p50_ms=s["p50_us"] / 1000,
        p99_ms=s["p99_us"] / 1000,
        max_ms=s["max_us"] / 1000,
        ok=s["ok"],
        non2xx=s["non2xx"],
        socket_errors=s["err_connect"] + s["err_read"] + s["err_write"] + s["err_timeout"],
        server_cpu_pct=round(100 * cpu_server / wall, 1),
        loadgen_cpu_pct=round(100 * cpu_children / wall, 1),
    )


def median_of(runs: list[RunResult]) -> dict[str, float]:
    """Medians of the per-run figures."""
    return {
        "rps": statistics.median(r.rps for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "non2xx": sum(r.non2xx for r in runs),
        "socket_errors": sum(r.socket_errors for r in runs),
        "server_cpu_pct": statistics.median(r.server_cpu_pct for r in runs),
        "loadgen_cpu_pct": statistics.median(r.loadgen_cpu_pct for r in runs),
    }


def _print_run(r: RunResult, label: str) -> None:
    print(
        f"  {label:<10} {r.endpoint:<5} {r.rps:>9.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
        f"p99 {r.p99_ms:7.2f} ms  non-2xx {r.non2xx}  sock-err {r.socket_errors}  "
        f"cpu api {r.server_cpu_pct:.0f}% loadgen {r.loadgen_cpu_pct:.0f}%",
        flush=True,
    )


# --- correctness ---------------------------------------------------------------------------


def live_totals(port: int, site: str, pages: int) -> tuple[int, int]:
    """(site_views, sum of the pages' views) from GET /v1/sites/{site}/counts."""
    site_views = -1
    page_sum = 0
    names = [f"news/article-{i}" for i in range(pages)]
    for start in range(0, len(names), MAX_PAGES_PER_READ):
        chunk = names[start : start + MAX_PAGES_PER_READ]
        query = "&".join("page=" + n.replace("/", "%2F") for n in chunk)
        status, body = _get(port, f"/v1/sites/{site}/counts?{query}")
        if status != 200:
            raise SystemExit(f"GET counts answered {status}: {body[:300]!r}")
        data = json.loads(body)
        site_views = int(data["site_views"])
        page_sum += sum(int(v) for v in data["pages"].values())
    return site_views, page_sum


# --- profiling -----------------------------------------------------------------------------


def _frame_key(frame: str) -> str:
    # py-spy raw frames look like "post_hit (services/api/hits.py:33)"; drop the line number.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    where = re.sub(r"^.*/site-packages/", "", where)
    where = re.sub(r"^.*/lib/python3\.\d+/", "stdlib/", where)
    return f"{name} ({where})" if where else name


def _read_collapsed(raw: str) -> Iterator[tuple[list[str], int]]:
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            # Skip the "process <pid>:..." and thread frames py-spy may put first.
            frames = [_frame_key(f) for f in stack.split(";")]
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
            if frames:
                yield frames, int(count_text)


def summarize_profile(raw: str, top: int = 20) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed-stack output.

    Shares are of the event-loop thread's samples; samples of other threads (anyio's worker
    threads, which run sync dependencies and mostly wait) are counted apart.
    """
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    loop_total = thread_total = 0
    for frames, count in _read_collapsed(raw):
        if any(f.startswith("Thread._bootstrap ") for f in frames):
            thread_total += count
            continue
        loop_total += count
        self_counts[frames[-1]] += count
        for key in set(frames):
            incl_counts[key] += count
    if not loop_total:
        return "  (no samples)"
    ours = [
        (k, c)
        for k, c in incl_counts.most_common()
        if re.search(r"\((services|redis|fastapi/dependencies|anyio|starlette/concurrency)/", k)
    ]
    lines = [
        f"  {loop_total} samples in the event-loop thread, {thread_total} in other threads "
        "(worker threads for sync dependencies); shares below are of the event-loop thread",
        "  top self time:",
    ]
    lines += [f"    {100 * c / loop_total:5.1f}%  {k}" for k, c in self_counts.most_common(top)]
    lines.append("  inclusive time, our code, redis-py, dependency solving, thread pool:")
    lines += [f"    {100 * c / loop_total:5.1f}%  {k}" for k, c in ours[:top]]
    return "\n".join(lines)


def profile_hits(
    args: argparse.Namespace, kind: str, port: int, api_pid: int, tmp: Path
) -> tuple[RunResult | None, str]:
    """A hit run of --profile seconds with py-spy sampling the api; (run, report).

    --nonblocking: pausing the api for every sample slows it tenfold (and anyio then grows its
    thread pool), which distorts the picture more than the odd truncated stack does.
    """
    py_spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        return None, "  py-spy not installed (pip install py-spy); profile skipped"
    raw_file = tmp / "profile.txt"
    command = [
        py_spy, "record", "--pid", str(api_pid), "--format", "raw", "--output", str(raw_file),
        "--duration", str(max(1, args.profile - 1)), "--rate", "250", "--nonblocking",
    ]  # fmt: skip
    if args.workers > 1:
        command.append("--subprocesses")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        run = run_load(args, kind, port, api_pid, "hit", args.profile)
        _, err = spy.communicate(timeout=30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not raw_file.exists():
        return run, f"  py-spy failed ({spy.returncode}): {err.strip()[-500:]}"
    raw = raw_file.read_text()
    PROFILE_FILE.write_text(raw)
    return run, summarize_profile(raw) + f"\n  collapsed stacks: {PROFILE_FILE}"


# --- main ----------------------------------------------------------------------------------


def _choose_loadgen(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install wrk), or use --loadgen python")
    return choice


def measure(args: argparse.Namespace, kind: str, port: int, pid: int) -> list[RunResult]:
    """Warm-up, then alternating noop/hit rounds; every run, warm-up included."""
    runs: list[RunResult] = []
    print(f"warm-up ({args.warmup} s each):")
    if args.warmup:
        for endpoint in ("noop", "hit"):
            runs.append(run_load(args, kind, port, pid, endpoint, args.warmup))
            _print_run(runs[-1], "warm-up")
    print(f"measuring: {args.rounds} rounds of noop then hit, {args.duration} s each")
    for round_no in range(1, args.rounds + 1):
        for endpoint in ("noop", "hit"):
            runs.append(run_load(args, kind, port, pid, endpoint, args.duration))
            _print_run(runs[-1], f"round {round_no}")
    return runs


def report(
    args: argparse.Namespace,
    kind: str,
    measured: list[RunResult],
    ok_hits: int,
    live: tuple[int, int],
    profile: str | None,
) -> dict[str, object]:
    """Print the table and the checks; the JSON result."""
    noop = median_of([r for r in measured if r.endpoint == "noop"])
    hit = median_of([r for r in measured if r.endpoint == "hit"])
    ratio = hit["rps"] / noop["rps"] if noop["rps"] else 0.0
    print()
    print(
        f"median of {args.rounds} runs, {args.duration} s each, {args.connections} connections,"
        f" {args.workers} worker(s), load generator {kind}"
    )
    print(
        f"{'endpoint':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'api cpu%':>10}{'lg cpu%':>9}"
    )
    for name, m in (("noop", noop), ("hit", hit)):
        errors = int(m["non2xx"] + m["socket_errors"])
        print(
            f"{name:<10}{m['rps']:>10.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{errors:>8}"
            f"{m['server_cpu_pct']:>10.0f}{m['loadgen_cpu_pct']:>9.0f}"
        )
    pairs = list(zip(measured[0::2], measured[1::2], strict=True))
    per_round = [h.rps / n.rps for n, h in pairs if n.rps]
    print(
        f"ratio hit/noop = {ratio:.2f}   (per round: "
        f"{', '.join(f'{x:.2f}' for x in per_round)}; target >= 0.80)"
    )
    site_views, page_sum = live
    # wrk stops with requests in flight: the server may count up to one per connection per run
    # whose answer wrk never read. bench.pyload waits for them, so there it must be exact.
    slack = 0 if kind == "python" else args.connections * _hit_runs(args)
    diff = site_views - ok_hits
    consistent = page_sum == site_views and 0 <= diff <= slack
    print(
        f"correctness: hits answered 200 = {ok_hits}, live site total = {site_views}, "
        f"sum of page totals = {page_sum}, difference = {diff} "
        f"(allowed 0..{slack}: requests in flight when the load generator stopped) -> "
        f"{'OK' if consistent else 'MISMATCH'}"
    )
    if profile is not None:
        print("\nprofile of the api during hit load (py-spy):")
        print(profile)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "env"} | {"env": args.env},
        "loadgen": kind,
        "noop": noop,
        "hit": hit,
        "ratio": round(ratio, 4),
        "ratio_per_round": [round(x, 4) for x in per_round],
        "target_met": ratio >= 0.8,
        "correctness": {
            "hits_200": ok_hits,
            "live_site_total": site_views,
            "sum_page_totals": page_sum,
            "allowed_in_flight": slack,
            "ok": consistent,
        },
        "runs": [asdict(r) for r in measured],
    }


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _hit_runs(args: argparse.Namespace) -> int:
    return args.rounds + (1 if args.warmup else 0) + (1 if args.profile else 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parse_args(argv)
    # Also when started from a non-interactive shell with `&`, which leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    kind = _choose_loadgen(args.loadgen)
    print(f"cores: {os.cpu_count()} (nothing pinned; the load generator shares them)")
    print(f"load average before: {_loadavg()} (other work on this machine skews both endpoints)")
    if kind == "wrk":
        print(f"load generator: wrk ({shutil.which('wrk')}, {args.threads} thread(s))")
    else:
        print("load generator: python (bench.pyload, asyncio; wrk not used)")
    with tempfile.TemporaryDirectory(prefix="vc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"starting Redis (appendonly yes, everysec) and Postgres in {tmp}")
        with backing_servers(tmp) as (redis, postgres):
            env = api_env(redis, postgres, args.env)
            cli(env, "migrate")
            cli(env, "sites", "add", args.site)
            with api_server(env, args.app, args.workers, tmp / "api.log") as (port, pid):
                runs = measure(args, kind, port, pid)
                profile = None
                if args.profile:
                    prof_run, profile = profile_hits(args, kind, port, pid, tmp)
                    if prof_run is not None:
                        runs.append(prof_run)
                        _print_run(prof_run, "profiled")
                ok_hits = sum(r.ok for r in runs if r.endpoint == "hit")
                live = live_totals(port, args.site, args.pages)
            shutil.copyfile(tmp / "api.log", API_LOG_FILE)
            measured = runs[2 if args.warmup else 0 :][: 2 * args.rounds]
            result = report(args, kind, measured, ok_hits, live, profile)
    api_log = API_LOG_FILE.read_text(errors="replace")
    api_errors = api_log.count("Exception in ASGI application")
    disconnects = api_log.count("starlette.requests.ClientDisconnect\n")
    print(f"load average after: {_loadavg()}")
    print(
        f"api log: {API_LOG_FILE.relative_to(REPO_ROOT)} ({api_errors} unhandled exceptions, "
        f"{disconnects} ClientDisconnect tracebacks: connections the load generator closed)"
    )
    result["api_unhandled_exceptions"] = api_errors
    result["loadavg_after"] = os.getloadavg()
    RESULT_FILE.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {RESULT_FILE.relative_to(REPO_ROOT)}")
    print(json.dumps(result | {"runs": len(result["runs"])}))  # type: ignore[operator]
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
