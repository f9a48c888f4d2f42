"""Benchmark of the hit endpoint against three no-op baselines on the same server (not a test).

    .venv/bin/python bench/run.py [--workers 1] [--duration 10] [--rounds 3] [--endpoints ...]

Starts a throwaway Redis (AOF on, everysec) and Postgres in a temp dir, migrates, registers one
site, and serves `bench.noop_app:create_bench_app` under uvicorn with the production flags
(uvloop, httptools, no access log). One server process answers all four endpoints, each loaded
by a closed-loop run of wrk (or bench.pyload without wrk): --connections keep-alive
connections, each POSTing `{"page":"news/article-N"}` (N cycling over --pages pages) as soon as
its previous answer arrived:

- `fastapi-noop`  POST /bench/noop       ordinary FastAPI route; reads the body, fixed JSON
- `lean-noop`     POST /bench/noop-lean  plain Starlette Route in the app, like the hit route
- `bare-noop`     POST /bench/bare       raw ASGI in front of the app: no middleware, no routing
- `hit`           POST /v1/sites/{site}/hits  the product's hit path (Redis round trip)

(bench/noop_app.py says exactly what each no-op skips.) A warm-up round (--warmup seconds per
endpoint) and then --rounds rounds of --duration seconds per endpoint; every round runs all the
chosen endpoints, in an order rotated by one each round so none always goes first. It prints
every run, then per endpoint the medians over the measured rounds (req/s, p50, p99, CPU use
of the api and of the load generator) and the errors summed over them, then the ratios of
hit req/s to each baseline's: `hit / fastapi-noop` (product target >= 0.80 with one worker),
`hit / lean-noop`, and `hit / bare-noop` (later target >= 0.50), each as the ratio of the
medians, the per-round ratios (hit and baseline from the same round) and their median. Last,
a correctness check: the 200 answers to hits against the site's live total. Results also go
to bench/last-run.json and, as JSON, to the last line of stdout.

`--profile N` adds one more run of N seconds (hits, or `--profile-endpoint counts`) under
py-spy (if installed) and prints the functions that take the most time in the api process.
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.noop_app import BARE_NOOP_PATH, FASTAPI_NOOP_PATH, LEAN_NOOP_PATH  # noqa: E402
from services.cli.localpostgres import PostgresProcess  # noqa: E402
from services.cli.localredis import RedisProcess  # noqa: E402
from services.cli.localservers import free_port  # noqa: E402

PYTHON = sys.executable
T = TypeVar("T")
WRK_SCRIPT = BENCH_DIR / "wrk.lua"
RESULT_FILE = BENCH_DIR / "last-run.json"
PROFILE_FILE = BENCH_DIR / "last-profile.txt"
API_LOG_FILE = BENCH_DIR / "last-api.log"
HIT = "hit"
# GET /v1/sites/{site}/counts for COUNTS_PAGES pages (issue 7's read figure); not in the
# default endpoints.
COUNTS = "counts"
COUNTS_PAGES = 20
# GET /v1/sites/{site}/top?period=week&limit=10 (the most-read list); not in the defaults.
TOP = "top"
TOP_QUERY = "period=week&limit=10"
# GET /v1/sites/{site}/stats, the statistics block; not in the default endpoints.
STATS = "stats"
READS = (COUNTS, STATS, TOP)  # endpoints loaded with GET
# Every endpoint the bench app serves but the hit, by name: its path.
NOOP_PATHS = {
    "fastapi-noop": FASTAPI_NOOP_PATH,
    "lean-noop": LEAN_NOOP_PATH,
    "bare-noop": BARE_NOOP_PATH,
}
ALL_ENDPOINTS = (*NOOP_PATHS, HIT)
KNOWN_ENDPOINTS = (*ALL_ENDPOINTS, *READS)
# The baselines the hit is compared with, and the target for hit req/s / baseline req/s.
TARGETS: dict[str, float | None] = {"fastapi-noop": 0.80, "lean-noop": None, "bare-noop": 0.50}
DATABASE = "viewcounter"
API_START_TIMEOUT_S = 30.0
API_STOP_TIMEOUT_S = 15.0
MAX_PAGES_PER_READ = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class RunResult:
    """One load run against one endpoint."""

    endpoint: str
    phase: str  # "warm-up", "measured" or "profile"
    round: int  # 1..rounds when measured, else 0
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
    redis_cpu_pct: float = 0.0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of all endpoints; medians reported"
    )
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load each")
    parser.add_argument(
        "--endpoints",
        type=_endpoint_list,
        default=ALL_ENDPOINTS,
        metavar="NAME,...",
        help=f"comma-separated subset of {','.join(ALL_ENDPOINTS)} (default: all, in that order;"
        " the first round starts with the second one, and so on)",
    )
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
        help="uvicorn factory to serve (must answer the chosen endpoints' paths), for A/B"
        " experiments",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="SECONDS", help="extra hit run under py-spy"
    )
    parser.add_argument(
        "--profile-endpoint",
        default=HIT,
        choices=sorted(KNOWN_ENDPOINTS),
        help="what the --profile run sends (default: hit)",
    )
    args = parser.parse_args(argv)
    if min(args.workers, args.duration, args.connections, args.rounds, args.pages) < 1:
        parser.error("--workers, --duration, --connections, --rounds, --pages must be >= 1")
    return args


def _endpoint_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in KNOWN_ENDPOINTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected names from {', '.join(KNOWN_ENDPOINTS)}; got {text!r}"
        )
    return names


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
        # One load generator is one client IP: the per-IP limit would refuse almost all of
        # it. Dedupe stays on (each request carries a new visitor id).
        VIEWCOUNTER_RATE_LIMIT="0",
        # No metrics listener: the bench reads only the public /readyz status, and a fixed
        # port could be taken by another run.
        VIEWCOUNTER_API_METRICS_PORT="0",
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
    proc = spawn(command, env, log_file)
    try:
        _wait_api(proc, port, log_file)
        yield port, proc.pid
    finally:
        _stop_group(proc, API_STOP_TIMEOUT_S)


def spawn(
    command: Sequence[str], env: Mapping[str, str], log_file: Path
) -> subprocess.Popen[bytes]:
    """`command` in the background from the repository root, output appended to `log_file`.

    Own session: a terminal Ctrl-C reaches us, and we stop the process (group) in order.
    """
    with log_file.open("ab") as log:
        return subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


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
        script = getattr(args, "wrk_script", None) or WRK_SCRIPT
        return [
            "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s",
            "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}",
            "--", path, str(args.pages),
        ]  # fmt: skip
    return [
        PYTHON, "-m", "bench.pyload", "--port", str(port), "--path", path,
        "--duration", str(seconds), "--connections", str(args.connections),
        "--pages", str(args.pages),
    ]  # fmt: skip


def endpoint_path(args: argparse.Namespace, endpoint: str) -> str:
    """The URL path of a named endpoint."""
    if endpoint == COUNTS:
        pages = "&".join(f"page=news%2Farticle-{i}" for i in range(COUNTS_PAGES))
        return f"/v1/sites/{args.site}/counts?{pages}"
    if endpoint == TOP:
        return f"/v1/sites/{args.site}/top?{TOP_QUERY}"
    if endpoint == STATS:
        return f"/v1/sites/{args.site}/stats"
    return f"/v1/sites/{args.site}/hits" if endpoint == HIT else NOOP_PATHS[endpoint]


def run_load(
    args: argparse.Namespace,
    kind: str,
    port: int,
    api_pid: int,
    endpoint: str,
    seconds: int,
    phase: str = "measured",
    round_no: int = 0,
) -> RunResult:
    """One closed-loop run of `seconds` against `endpoint` (a name from ALL_ENDPOINTS)."""
    path = endpoint_path(args, endpoint)
    command = loadgen_command(args, kind, port, path, seconds)
    redis_pid: int | None = getattr(args, "redis_pid", None)
    cpu_redis = _proc_cpu_s(redis_pid) if redis_pid else 0.0
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
    cpu_redis = (_proc_cpu_s(redis_pid) - cpu_redis) if redis_pid else 0.0
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"load generator failed ({proc.returncode}):\n{out}")
    s = json.loads(match.group(1))
    secs = s["duration_us"] / 1e6
    return RunResult(
        endpoint=endpoint,
        phase=phase,
        round=round_no,
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
        redis_cpu_pct=round(100 * cpu_redis / wall, 1),
    )


def median_of(runs: list[RunResult]) -> dict[str, float]:
    """Medians of the per-run figures; errors are summed."""
    return {
        "rps": statistics.median(r.rps for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "non2xx": sum(r.non2xx for r in runs),
        "socket_errors": sum(r.socket_errors for r in runs),
        "server_cpu_pct": statistics.median(r.server_cpu_pct for r in runs),
        "loadgen_cpu_pct": statistics.median(r.loadgen_cpu_pct for r in runs),
        "redis_cpu_pct": statistics.median(r.redis_cpu_pct for r in runs),
    }


def _print_run(r: RunResult, label: str) -> None:
    print(
        f"  {label:<10} {r.endpoint:<12} {r.rps:>9.0f} req/s  p50 {r.p50_ms:6.2f} ms  "
        f"p99 {r.p99_ms:7.2f} ms  non-2xx {r.non2xx}  sock-err {r.socket_errors}  "
        f"cpu api {r.server_cpu_pct:.0f}% loadgen {r.loadgen_cpu_pct:.0f}%"
        f" redis {r.redis_cpu_pct:.0f}%",
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
    """A run of --profile seconds (of --profile-endpoint, hits by default) with py-spy
    sampling the api; (run, report).

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
        run = run_load(
            args, kind, port, api_pid, args.profile_endpoint, args.profile, phase="profile"
        )
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


def round_order(endpoints: Sequence[T], round_no: int) -> list[T]:
    """The endpoints of round `round_no` (0: warm-up), rotated by one per round."""
    k = round_no % len(endpoints)
    return [*endpoints[k:], *endpoints[:k]]


def measure(args: argparse.Namespace, kind: str, port: int, pid: int) -> list[RunResult]:
    """A warm-up round, then the measured rounds; every run, warm-up included."""
    runs: list[RunResult] = []
    endpoints: tuple[str, ...] = args.endpoints
    for name in endpoints:
        method = "GET" if name in READS else "POST"
        print(f"  {name:<12} {method} {endpoint_path(args, name)}")
    if args.warmup:
        print(f"warm-up ({args.warmup} s each): {', '.join(round_order(endpoints, 0))}")
        for endpoint in round_order(endpoints, 0):
            runs.append(run_load(args, kind, port, pid, endpoint, args.warmup, phase="warm-up"))
            _print_run(runs[-1], "warm-up")
    print(
        f"measuring: {args.rounds} rounds of {len(endpoints)} endpoints, {args.duration} s each,"
        " order rotated by one each round"
    )
    for round_no in range(1, args.rounds + 1):
        for endpoint in round_order(endpoints, round_no):
            runs.append(run_load(args, kind, port, pid, endpoint, args.duration, round_no=round_no))
            _print_run(runs[-1], f"round {round_no}")
    return runs


@dataclass
class Ratio:
    """Hit req/s over one baseline's req/s, over the measured rounds."""

    baseline: str
    target: float | None
    ratio_of_medians: float
    per_round: list[float]
    median_per_round: float

    def verdict(self) -> str:
        """Whether the target is met, by both measures, one, or neither."""
        if self.target is None:
            return "(no target)"
        met = [x >= self.target for x in (self.ratio_of_medians, self.median_per_round)]
        if all(met):
            return "met"
        return "borderline: met by one measure only" if any(met) else "NOT met"

    def as_json(self) -> dict[str, object]:
        """For last-run.json."""
        target_met = None
        if self.target is not None:
            target_met = {
                "ratio_of_medians": self.ratio_of_medians >= self.target,
                "median_per_round": self.median_per_round >= self.target,
            }
        return {
            "baseline": self.baseline,
            "target": self.target,
            "ratio_of_medians": round(self.ratio_of_medians, 4),
            "per_round": [round(x, 4) for x in self.per_round],
            "median_per_round": round(self.median_per_round, 4),
            "target_met": target_met,
        }


def hit_ratio(measured: list[RunResult], baseline: str, rounds: int) -> Ratio:
    """hit / baseline, from the medians and round by round (both runs from the same round)."""
    hit_rps = statistics.median(r.rps for r in measured if r.endpoint == HIT)
    base_rps = statistics.median(r.rps for r in measured if r.endpoint == baseline)
    by_round = {(r.endpoint, r.round): r.rps for r in measured}
    per_round = [
        by_round[HIT, n] / by_round[baseline, n]
        for n in range(1, rounds + 1)
        if by_round.get((baseline, n)) and (HIT, n) in by_round
    ]
    return Ratio(
        baseline=baseline,
        target=TARGETS[baseline],
        ratio_of_medians=hit_rps / base_rps if base_rps else 0.0,
        per_round=per_round,
        median_per_round=statistics.median(per_round) if per_round else 0.0,
    )


def _print_table(args: argparse.Namespace, kind: str, medians: dict[str, dict[str, float]]) -> None:
    print()
    print(
        f"median of {args.rounds} rounds, {args.duration} s each, {args.connections} connections,"
        f" {args.workers} worker(s), load generator {kind}; errors summed over the rounds"
    )
    print(
        f"{'endpoint':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'api cpu%':>10}{'lg cpu%':>9}{'redis cpu%':>12}"
    )
    for name, m in medians.items():
        errors = int(m["non2xx"] + m["socket_errors"])
        print(
            f"{name:<14}{m['rps']:>9.0f}{m['p50_ms']:>9.2f}{m['p99_ms']:>9.2f}{errors:>8}"
            f"{m['server_cpu_pct']:>10.0f}{m['loadgen_cpu_pct']:>9.0f}{m['redis_cpu_pct']:>12.0f}"
        )


def _print_ratios(ratios: list[Ratio]) -> None:
    if not ratios:
        print("ratios: none (needs hit and at least one no-op in --endpoints)")
        return
    print()
    print(
        f"{'ratio of req/s':<20}{'of medians':>11}{'median of rounds':>18}   "
        f"{'target':<9}verdict; per-round values"
    )
    for r in ratios:
        target = f">= {r.target:.2f}" if r.target is not None else "-"
        print(
            f"{'hit / ' + r.baseline:<20}{r.ratio_of_medians:>11.2f}{r.median_per_round:>18.2f}   "
            f"{target:<9}{r.verdict()}; per round: {', '.join(f'{x:.2f}' for x in r.per_round)}"
        )


def report(
    args: argparse.Namespace,
    kind: str,
    measured: list[RunResult],
    ok_hits: int,
    live: tuple[int, int],
    profile: str | None,
) -> dict[str, object]:
    """Print the table, the ratios and the checks; the JSON result."""
    endpoints: tuple[str, ...] = args.endpoints
    medians = {n: median_of([r for r in measured if r.endpoint == n]) for n in endpoints}
    ratios = [
        hit_ratio(measured, n, args.rounds)
        for n in NOOP_PATHS
        if HIT in endpoints and n in endpoints
    ]
    _print_table(args, kind, medians)
    _print_ratios(ratios)
    site_views, page_sum = live
    # wrk stops with requests in flight: the server may count up to one per connection per run
    # whose answer wrk never read. bench.pyload waits for them, so there it must be exact.
    slack = 0 if kind == "python" else args.connections * _hit_runs(args)
    diff = site_views - ok_hits
    consistent = page_sum == site_views and 0 <= diff <= slack
    print(
        f"\ncorrectness: hits answered 200 = {ok_hits}, live site total = {site_views}, "
        f"sum of page totals = {page_sum}, difference = {diff} "
        f"(allowed 0..{slack}: requests in flight when the load generator stopped) -> "
        f"{'OK' if consistent else 'MISMATCH'}"
    )
    if profile is not None:
        print("\nprofile of the api during hit load (py-spy):")
        print(profile)
    # The target baseline; "noop", "ratio*" and "target_met" keep their old places.
    main_ratio = next((r for r in ratios if r.baseline == "fastapi-noop"), None)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "settings": {k: v for k, v in vars(args).items() if k != "env"} | {"env": args.env},
        "loadgen": kind,
        "endpoints": {n: {"path": endpoint_path(args, n)} | m for n, m in medians.items()},
        "ratios": {f"hit/{r.baseline}": r.as_json() for r in ratios},
        "baseline": "fastapi-noop",
        "noop": medians.get("fastapi-noop"),
        "hit": medians.get(HIT),
        "ratio": round(main_ratio.ratio_of_medians, 4) if main_ratio else None,
        "ratio_per_round": [round(x, 4) for x in main_ratio.per_round] if main_ratio else None,
        "target_met": main_ratio.ratio_of_medians >= 0.8 if main_ratio else None,
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
    measured = args.rounds + (1 if args.warmup else 0) if HIT in args.endpoints else 0
    return measured + (1 if args.profile else 0)


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
            args.redis_pid = redis.pid
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
                ok_hits = sum(r.ok for r in runs if r.endpoint == HIT)
                live = live_totals(port, args.site, args.pages)
            shutil.copyfile(tmp / "api.log", API_LOG_FILE)
            measured = [r for r in runs if r.phase == "measured"]
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
    runs_json = result["runs"]
    assert isinstance(runs_json, list)
    print(json.dumps(result | {"runs": len(runs_json)}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
