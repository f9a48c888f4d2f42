"""Issue 7's figures, each a ratio of two rates measured in one run on this machine.

    .venv/bin/python bench/suite.py FIGURE... [--duration 6] [--rounds 2]
    .venv/bin/python bench/suite.py all          # every figure; writes bench/results/<date>.md

Figures (one Redis, one Postgres, servers started once; rotating order inside each figure so
machine noise falls on both sides of a ratio):

- `hit`      hit req/s against a bare ASGI no-op and the FastAPI no-op (bench/run.py's
             endpoints), one worker; target hit/bare >= 0.5.
- `latency`  the hit path at paced (wrk `delay()`) offered loads, 10%..120% of the hit rate
             just measured: achieved rate and p99; target p99 <= 10 ms at 50%. Writes the
             plot bench/results/hit-load.png (matplotlib, the `bench` extra).
- `workers`  hit req/s of a 2-worker api over a 1-worker api, both serving at once, runs
             alternating; target >= 1.7.
- `counts`   GET counts of 20 pages over the hit, same server; target >= 0.5.
- `top`      GET top (this week, 10 pages) over the hit, same server, while the hits keep
             the pending shards busy; target >= 0.5.
- `stats`    GET stats (the statistics block) over the hit, same server; target >= 0.5.
- `memory`   Redis bytes per page of a site after hits to MEMORY_PAGES distinct pages (no
             flusher running): the live counter alone (the page buckets) and everything the hits
             left (pending deltas, per-page visitor sketches, dedupe marks); target <= 32.
- `batch`    hits/s through POST /hits/batch (10,000 views a request, 2 clients) over
             redis-benchmark's pipelined EVALSHA of the same hits.lua with one hit per call
             (-P 64); target >= 0.5.
- `batch-key` hits/s through POST /hits/batch with a site's ingest key over the same with the
             global ingest token (--batch-key-views, 100 views a request, 2 clients), one
             server, rounds alternating; target >= 0.95 (not lower beyond noise).
- `flusher`  rows/s of `Flusher.flush_once()` over a bare asyncpg COPY upsert of the same rows
             (bench/flush.py; each side in its own process, each round a new database from a
             migrated template): --flush-pages dirty pages of one site in one batch, into
             new rows (insert) and again into the same rows (update); target >= 0.8. Then
             one batch of --flush-big-pages (1,000,000) for the flusher's peak RSS and, in a
             second run, its tracemalloc peak: bounded by the chunk, not the batch.
- `marks`    Redis bytes per dedupe mark (200,000 marks written by hits.lua; target <= 40)
             and the hit rate with 1,000,000 live dedupe marks over the hit rate on a fresh
             Redis, rounds alternating (target >= 0.9); bench/marks.py.
- `idem`     Redis bytes kept per batch view for idempotency: one 10,000-view batch with an
             Idempotency-Key (target <= 1) and one without.
- `pages`    hit rate against the number of distinct pages hit (100 ... 1,000,000), a fresh
             Redis each run, rounds rotating; the ratio row is 1,000,000 pages over 100.
             Writes the plot bench/results/hit-pages.png.
- `idle`     Redis CPU (INFO cpu, sys + user) of --idle-passes idle flush passes with
             1,000,000 live dedupe marks over the same with none (bench/workindex.py);
             target <= 1.5. Also one SCAN of that keyspace, what a pass cost before the work
             index, for scale.
- `curves`   flush pass time against the number of sites with work (1 .. 10,000, a few hits
             each) and against dirty pages of one site (1,000 .. --curve-max-pages); the
             10,000 sites' pass over VIEWCOUNTER_FLUSH_INTERVAL's default 5 s, target <= 1.
- `soak`     the api's RSS (VmRSS, every 10 s) over --soak-minutes (10) of paced hits at half
             the closed-loop hit rate, 100,000 pages, a new visitor each hit, a flusher
             running: the last minute's median over the first minute's; target <= 1.1.

`all` runs every figure and writes bench/results/<date>.md; a run of some figures writes
bench/results/<date>-<figures>.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench import run  # noqa: E402
from services.cli.localpostgres import PostgresProcess  # noqa: E402
from services.cli.localredis import RedisProcess  # noqa: E402
from services.cli.localservers import free_port  # noqa: E402
from services.flusher import worker  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
PLOT_FILE = RESULTS_DIR / "hit-load.png"
INGEST_TOKEN = "bench-ingest-token-0123456789abcdef"
BATCH_VIEWS = 10_000
BATCH_CLIENTS = 2
PACED_FRACTIONS = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.2)
PACED_CONNECTIONS = 64
PACED_LATENCY_MS = 2.0
T = TypeVar("T")
FIGURES = (
    "hit", "latency", "workers", "counts", "stats", "top", "batch", "batch-key", "memory",
    "marks", "idem", "pages", "flusher", "soak", "idle", "curves",
)  # fmt: skip
MARKS_SITE = "marks"
MARKS_BYTES_COUNT = 200_000
LIVE_MARKS = 1_000_000
PAGE_COUNTS = (100, 1_000, 10_000, 100_000, 1_000_000)
PAGES_PLOT_FILE = RESULTS_DIR / "hit-pages.png"
CURVE_SITES = (1, 100, 1_000, 10_000)
CURVE_PAGES = (1_000, 10_000, 100_000, 1_000_000)
FLUSH_CURVES_PLOT_FILE = RESULTS_DIR / "flush-curves.png"
MEMORY_SITE = "mem"
MEMORY_PAGES = 20_000
FLUSH_SITE = "fb"
SOAK_SITE = "soak"
SOAK_PAGES = 100_000
SOAK_FRACTION = 0.5
SOAK_SAMPLE_S = 10.0


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    ours: str
    baseline: str
    ours_rate: float
    baseline_rate: float
    target: str
    met: bool | None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""
    per_round: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """ours / baseline."""
        return self.ours_rate / self.baseline_rate if self.baseline_rate else 0.0


@dataclass
class Bench:
    """What every figure needs: the options, the servers and the api environment."""

    args: argparse.Namespace
    kind: str
    redis: RedisProcess
    postgres: PostgresProcess
    env: dict[str, str]
    tmp: Path
    hit_rps: float = 0.0  # the 1-worker hit rate, once the `hit` figure measured it
    soak_samples: list[tuple[float, int, int]] = field(default_factory=list)
    pages_curve: list[tuple[int, float, float]] = field(default_factory=list)
    flush_template: str = ""
    rows: list[Row] = field(default_factory=list)
    curves: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)


def _run_args(ns: argparse.Namespace, *extra: str) -> argparse.Namespace:
    args = run._parse_args(
        [
            "--duration", str(ns.duration), "--rounds", str(ns.rounds),
            "--connections", str(ns.connections), "--warmup", "2", *extra,
        ]
    )  # fmt: skip
    args.redis_pid = ns.redis_pid
    return args


def _rotating(names: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    for n in range(1, rounds + 1):
        for name in run.round_order(names, n):
            yield n, name


def _show(label: str, r: run.RunResult) -> None:
    run._print_run(r, label)


# --- figures -------------------------------------------------------------------------------


def fig_hit_and_counts(b: Bench, with_counts: bool, with_stats: bool = False) -> None:
    """hit vs bare ASGI no-op and FastAPI no-op (and counts of 20 pages, stats, vs hit)."""
    names = ["bare-noop", "fastapi-noop", run.HIT] + ([run.COUNTS] if with_counts else [])
    names += [run.STATS] if with_stats else []
    args = _run_args(b.args, "--endpoints", ",".join(names))
    with run.api_server(b.env, args.app, 1, b.tmp / "api-1.log") as (port, pid):
        runs = run.measure(args, b.kind, port, pid)
        ok_hits = sum(r.ok for r in runs if r.endpoint == run.HIT)
        site_views, page_sum = run.live_totals(port, args.site, args.pages)
    measured = [r for r in runs if r.phase == "measured"]
    medians = {n: run.median_of([r for r in measured if r.endpoint == n]) for n in names}
    hit = medians[run.HIT]
    b.hit_rps = hit["rps"]
    slack = args.connections * (args.rounds + 1) if b.kind == "wrk" else 0
    consistent = page_sum == site_views and 0 <= site_views - ok_hits <= slack
    note = (
        f"errors {int(hit['non2xx'] + hit['socket_errors'])}; hits answered 200 = {ok_hits},"
        f" live total = {site_views} ({'OK' if consistent else 'MISMATCH'});"
        f" cpu: api {hit['server_cpu_pct']:.0f}%, Redis {hit['redis_cpu_pct']:.0f}%,"
        f" wrk {hit['loadgen_cpu_pct']:.0f}%;"
        f" bare-noop api {medians['bare-noop']['server_cpu_pct']:.0f}%"
    )
    for base, target in (("bare-noop", 0.5), ("fastapi-noop", 2.0)):
        ratio = run.hit_ratio(measured, base, args.rounds)
        b.rows.append(
            Row(
                f"1. hit / {base}",
                f"hit {hit['rps']:.0f}/s",
                f"{base} {medians[base]['rps']:.0f}/s",
                hit["rps"],
                medians[base]["rps"],
                f">= {target}",
                ratio.ratio_of_medians >= target,
                hit["p50_ms"],
                hit["p99_ms"],
                note,
                ratio.per_round,
            )
        )
    if with_counts:
        b.rows.append(
            _half_hit_row("6. counts(20 pages) / hit", run.COUNTS, "counts", measured, args.rounds)
        )
    if with_stats:
        b.rows.append(_half_hit_row("7. stats / hit", run.STATS, "stats", measured, args.rounds))


def fig_top(b: Bench) -> None:
    """The most-read list (GET top, this week, 10 pages) against the hit, one server, rounds
    alternating: the hits before each top run leave unflushed views for it to merge (no
    flusher runs), and its per-process cache answers most reads."""
    names = [run.HIT, run.TOP]
    args = _run_args(b.args, "--endpoints", ",".join(names))
    with run.api_server(b.env, args.app, 1, b.tmp / "api-top.log") as (port, pid):
        runs = run.measure(args, b.kind, port, pid)
    measured = [r for r in runs if r.phase == "measured"]
    row = _half_hit_row("8. top(week, 10) / hit", run.TOP, "top", measured, args.rounds)
    row.note += f"; cpu: api {_medians_of(measured, run.TOP)['server_cpu_pct']:.0f}%"
    b.rows.append(row)


def _half_hit_row(
    figure: str, endpoint: str, label: str, measured: list[run.RunResult], rounds: int
) -> Row:
    """The row of an endpoint whose target is at least half the hit's rate, measured in the
    same alternating rounds as the hit."""
    ours, hit = _medians_of(measured, endpoint), _medians_of(measured, run.HIT)
    by_round = {(r.endpoint, r.round): r.rps for r in measured}
    return Row(
        figure,
        f"{label} {ours['rps']:.0f}/s",
        f"hit {hit['rps']:.0f}/s",
        ours["rps"],
        hit["rps"],
        ">= 0.5",
        ours["rps"] / hit["rps"] >= 0.5,
        ours["p50_ms"],
        ours["p99_ms"],
        f"errors {int(ours['non2xx'] + ours['socket_errors'])}",
        [by_round[endpoint, n] / by_round[run.HIT, n] for n in range(1, rounds + 1)],
    )


def _medians_of(measured: list[run.RunResult], endpoint: str) -> dict[str, float]:
    """The medians of an endpoint's measured runs."""
    return run.median_of([r for r in measured if r.endpoint == endpoint])


def _paced_script(delay_ms: int, tmp: Path) -> Path:
    """wrk.lua plus a per-request delay: each connection sends, waits for the answer,
    then waits `delay_ms` (a paced, nearly open-loop load when latency << delay)."""
    script = tmp / f"wrk_paced_{delay_ms}.lua"
    script.write_text(
        run.WRK_SCRIPT.read_text() + f"\nfunction delay()\n  return {delay_ms}\nend\n"
    )
    return script


def fig_latency(b: Bench) -> list[tuple[float, float, float, float]]:
    """Paced hit loads; rows of (offered/s, achieved/s, p50 ms, p99 ms)."""
    if not b.hit_rps:
        fig_hit_and_counts(b, with_counts=False)
    points: list[tuple[float, float, float, float]] = []
    args = _run_args(b.args, "--connections", str(PACED_CONNECTIONS))
    with run.api_server(b.env, args.app, 1, b.tmp / "api-p.log") as (port, pid):
        for n, fraction in enumerate((PACED_FRACTIONS[0], *PACED_FRACTIONS)):
            offered = fraction * b.hit_rps
            # A connection's cycle is its answer's latency plus the delay: allow ~2 ms for it.
            delay_ms = max(1, round(PACED_CONNECTIONS * 1000 / offered - PACED_LATENCY_MS))
            args.wrk_script = _paced_script(delay_ms, b.tmp)
            seconds = 2 if n == 0 else b.args.duration  # the first run warms the server up
            r = run.run_load(args, b.kind, port, pid, run.HIT, seconds)
            _show(f"{'warm-up' if n == 0 else f'{fraction:.0%}'} ({delay_ms} ms)", r)
            if n:
                points.append((offered, r.rps, r.p50_ms, r.p99_ms))
    half = min(points, key=lambda p: abs(p[1] - 0.5 * b.hit_rps))
    b.rows.append(
        Row(
            "1. hit p99 at half load",
            f"p99 {half[3]:.1f} ms at {half[1]:.0f}/s",
            f"0.5 x hit = {0.5 * b.hit_rps:.0f}/s",
            half[3],
            10.0,
            "p99 <= 10 ms",
            half[3] <= 10.0,
            half[2],
            half[3],
            f"paced wrk, {PACED_CONNECTIONS} connections, delay() per request; the paced point"
            " nearest half the hit rate; ratio column: p99 / 10 ms",
        )
    )
    _plot(points, b.hit_rps)
    return points


def _plot(points: list[tuple[float, float, float, float]], closed_loop_rps: float) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib not installed (pip install -e '.[bench]'); plot skipped")
        return
    offered = [p[0] for p in points]
    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    ax1.plot(offered, [p[1] for p in points], "o-", color="tab:blue", label="achieved hits/s")
    ax1.plot(offered, offered, ":", color="grey", label="offered = achieved")
    ax1.axvline(closed_loop_rps, color="tab:blue", alpha=0.3, label="closed-loop max")
    ax1.set_xlabel(f"offered load (hits/s, paced wrk, {PACED_CONNECTIONS} connections)")
    ax1.set_ylabel("hits/s")
    ax2 = ax1.twinx()
    ax2.plot(offered, [p[3] for p in points], "s-", color="tab:red", label="p99 ms")
    ax2.plot(offered, [p[2] for p in points], "^--", color="tab:orange", label="p50 ms")
    ax2.axhline(10, color="tab:red", alpha=0.3)
    ax2.set_ylabel("latency (ms)")
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax1.set_title("POST /v1/sites/{site}/hits, one uvicorn worker")
    fig.tight_layout()
    RESULTS_DIR.mkdir(exist_ok=True)
    fig.savefig(PLOT_FILE, dpi=100)
    print(f"  plot: {PLOT_FILE.relative_to(REPO_ROOT)}")


def fig_workers(b: Bench) -> None:
    """hit req/s with 2 workers over 1 worker; both servers up at once, runs alternating."""
    args = _run_args(b.args, "--endpoints", run.HIT)
    runs: dict[int, list[float]] = {1: [], 2: []}
    p99: dict[int, list[float]] = {1: [], 2: []}
    with (
        run.api_server(b.env, args.app, 1, b.tmp / "api-w1.log") as one,
        run.api_server(b.env, args.app, 2, b.tmp / "api-w2.log") as two,
    ):
        servers = {1: one, 2: two}
        for workers in (1, 2):
            run.run_load(args, b.kind, *servers[workers], run.HIT, 2, phase="warm-up")
        for n, workers in _rotating([1, 2], args.rounds):
            r = run.run_load(args, b.kind, *servers[workers], run.HIT, args.duration, round_no=n)
            _show(f"{workers} worker(s)", r)
            runs[workers].append(r.rps)
            p99[workers].append(r.p99_ms)
    one_rps, two_rps = statistics.median(runs[1]), statistics.median(runs[2])
    b.rows.append(
        Row(
            "2. two workers / one",
            f"2 workers {two_rps:.0f}/s",
            f"1 worker {one_rps:.0f}/s",
            two_rps,
            one_rps,
            ">= 1.7",
            two_rps / one_rps >= 1.7,
            None,
            statistics.median(p99[2]),
            f"p99 1 worker {statistics.median(p99[1]):.1f} ms; wrk, Redis and the workers"
            " share the 2 cores",
            [a / c for a, c in zip(runs[2], runs[1], strict=True)],
        )
    )


def _batch_body(batch_no: int, run_id: str, views: int = BATCH_VIEWS) -> bytes:
    hits = [
        {
            "page": f"news/article-{i % 1000}",
            "visitor": f"b{run_id}-{batch_no}-{i}",
            "ip": "10.0.0.1",
        }
        for i in range(views)
    ]
    return json.dumps({"hits": hits}).encode()


def _batch_load(
    port: int,
    site: str,
    seconds: float,
    run_id: str,
    secret: str = INGEST_TOKEN,
    views: int = BATCH_VIEWS,
) -> tuple[int, list[float]]:
    """BATCH_CLIENTS threads POSTing batches of `views` for `seconds`, with `secret` as the
    bearer (the global ingest token, or a site's ingest key): (views counted, latencies s)."""
    deadline = time.monotonic() + seconds
    counted = [0] * BATCH_CLIENTS
    latencies: list[float] = []
    lock = threading.Lock()
    bodies = [_batch_body(k, run_id, views) for k in range(2 * BATCH_CLIENTS)]

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        k = 0
        while time.monotonic() < deadline:
            body = bodies[(c + k * BATCH_CLIENTS) % len(bodies)]
            k += 1
            started = time.perf_counter()
            conn.request(
                "POST",
                f"/v1/sites/{site}/hits/batch",
                body=body,
                headers={
                    "content-type": "application/json",
                    "authorization": f"Bearer {secret}",
                    "idempotency-key": f"{run_id}-{c}-{k}",
                },
            )
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise SystemExit(f"batch answered {response.status}: {data[:300]!r}")
            with lock:
                latencies.append(time.perf_counter() - started)
            counted[c] += json.loads(data)["hits"]
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(BATCH_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counted), latencies


def _redis_benchmark_command(b: Bench, site: str, requests: int) -> list[str] | None:
    """redis-benchmark running hits.lua with one hit per call, pipelined 64 deep."""
    tool = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    if tool is None:
        return None
    from services.counter import calls, scripts
    from services.counter.outcomes import HitRequest, PageRule

    request = HitRequest(
        site=site,
        page="news/article-__rand_int__",
        day=time.strftime("%Y-%m-%d"),
        seen_token="00" * 12,  # its mark field is made random below
        dedupe_window_s=1800,
        client_token="-",
        time_s=int(time.time()),
        rate_limit=0,
        page_rule=PageRule.any_page(),
        visitor_token="v__rand_int__",
    )
    script, numkeys, key_args = calls.hits_call(site, [request])
    assert script is scripts.HITS
    # A new visitor each call, as the batch side sends: a random dedupe mark (ARGV 12).
    key_args[numkeys + 11] = "m__rand_int__"
    port = b.redis.url.rsplit(":", 1)[1].split("/")[0]
    return [
        tool, "-p", port, "-n", str(requests), "-P", "64", "-c", "4", "-r", "1000",
        "--csv", "EVALSHA", scripts.HITS.sha, str(numkeys),
        # The page's field is a binary digest: hex on a command line (no NUL bytes there).
        *[a.hex() if isinstance(a, bytes) else str(a) for a in key_args],
    ]  # fmt: skip


def fig_batch(b: Bench) -> None:
    """Batch ingestion hits/s over redis-benchmark's pipelined single-hit EVALSHA."""
    env = dict(b.env, VIEWCOUNTER_INGEST_TOKEN=INGEST_TOKEN, VIEWCOUNTER_ADMIN_RATE_LIMIT="0")
    args = _run_args(b.args)
    ours: list[float] = []
    base: list[float] = []
    p99s: list[float] = []
    with run.api_server(env, args.app, 1, b.tmp / "api-b.log") as (port, _pid):
        command = _redis_benchmark_command(b, args.site, 200_000)
        if command is None:
            print("  redis-benchmark not found (apt-get install redis-tools); batch skipped")
            return
        for n, what in _rotating(["batch", "redis-benchmark"], args.rounds):
            if what == "batch":
                started = time.monotonic()
                views, latencies = _batch_load(port, args.site, args.duration, f"r{n}{os.getpid()}")
                rate = views / (time.monotonic() - started)
                ours.append(rate)
                p99s.append(1000 * max(latencies))
                print(f"  round {n} batch {rate:>9.0f} hits/s ({len(latencies)} requests)")
            else:
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                rate = float(out.strip().splitlines()[-1].split(",")[1].strip('"'))
                base.append(rate)
                print(f"  round {n} redis-benchmark EVALSHA -P 64 {rate:>9.0f} calls/s")
    ours_rate, base_rate = statistics.median(ours), statistics.median(base)
    b.rows.append(
        Row(
            "3. batch / redis-benchmark",
            f"batch {ours_rate:.0f} hits/s",
            f"EVALSHA -P 64 {base_rate:.0f}/s",
            ours_rate,
            base_rate,
            ">= 0.5",
            ours_rate / base_rate >= 0.5,
            None,
            statistics.median(p99s),
            f"{BATCH_CLIENTS} clients x {BATCH_VIEWS} views a request; p99 column: slowest"
            " request (ms)",
            [a / c for a, c in zip(ours, base, strict=True)],
        )
    )


def _ingest_key(env: dict[str, str], site: str) -> str:
    """A new ingest key of `site`, made by `viewcounter keys create` (its secret is the last
    line of its output; not printed here)."""
    result = subprocess.run(
        [run.PYTHON, "-m", "services.cli", "keys", "create", site, "--scope", "ingest",
         "--name", "bench"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"keys create failed:\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def fig_batch_key(b: Bench) -> None:
    """Batch hits/s with a site's ingest key over the same with the global ingest token, one
    server, rounds alternating: what checking a key costs (a cached hash lookup, the rate
    limit counted per key). Small batches, so the per-request check weighs."""
    env = dict(b.env, VIEWCOUNTER_INGEST_TOKEN=INGEST_TOKEN, VIEWCOUNTER_ADMIN_RATE_LIMIT="0")
    args = _run_args(b.args)
    secret = _ingest_key(env, args.site)
    views = b.args.batch_key_views
    rates: dict[str, list[float]] = {"key": [], "token": []}
    p99s: list[float] = []
    with run.api_server(env, args.app, 1, b.tmp / "api-bk.log") as (port, _pid):
        # Warm-up: the first request of each caches its check.
        _batch_load(port, args.site, 1, f"w{os.getpid()}", secret, views)
        for n, what in _rotating(["key", "token"], b.args.rounds):
            started = time.monotonic()
            bearer = secret if what == "key" else INGEST_TOKEN
            counted, latencies = _batch_load(
                port, args.site, b.args.duration, f"k{n}{what}{os.getpid()}", bearer, views
            )
            rate = counted / (time.monotonic() - started)
            rates[what].append(rate)
            if what == "key":
                p99s.append(1000 * statistics.quantiles(latencies, n=100)[98])
            print(f"  round {n} with the {what:<5} {rate:>9.0f} hits/s ({len(latencies)} requests)")
    key_rate, token_rate = statistics.median(rates["key"]), statistics.median(rates["token"])
    b.rows.append(
        Row(
            "3b. batch with a site key / with the global token",
            f"key {key_rate:.0f} hits/s",
            f"token {token_rate:.0f} hits/s",
            key_rate,
            token_rate,
            ">= 0.95",
            key_rate / token_rate >= 0.95,
            None,
            statistics.median(p99s),
            f"{BATCH_CLIENTS} clients x {views} views a request; p99 column: the key's requests",
            [k / t for k, t in zip(rates["key"], rates["token"], strict=True)],
        )
    )


def fig_memory(b: Bench) -> None:
    """Redis bytes per page counter after hits to MEMORY_PAGES distinct pages of one site."""
    import redis as redis_sync

    from services.counter import keys

    run.cli(b.env, "sites", "add", MEMORY_SITE)
    client = redis_sync.Redis.from_url(b.redis.url)
    args = _run_args(b.args, "--pages", str(MEMORY_PAGES), "--site", MEMORY_SITE)
    with run.api_server(b.env, args.app, 1, b.tmp / "api-m.log") as (port, pid):
        before = int(client.info("memory")["used_memory"])
        r = run.run_load(args, b.kind, port, pid, run.HIT, max(b.args.duration, 6))
        _show("memory", r)
    after = int(client.info("memory")["used_memory"])
    pages = int(client.hget(keys.site_key(MEMORY_SITE), keys.SITE_PAGES) or 0)
    usage: dict[str, int] = {"pages": 0, "pend": 0, "uvp": 0, "seen": 0, "other": 0}
    for key in client.scan_iter(match=f"{keys.tag(MEMORY_SITE)}:*", count=1000):
        kind = key.decode().split(":")[2] if key.count(b":") >= 2 else "other"
        usage[kind if kind in usage else "other"] += int(client.memory_usage(key, samples=0) or 0)
    client.close()
    per_page = {k: v / pages for k, v in usage.items()}
    b.rows.append(
        Row(
            "5. Redis bytes per page counter",
            f"{per_page['pages']:.0f} B (page buckets)",
            "32 B",
            per_page["pages"],
            32.0,
            "<= 32 B",
            per_page["pages"] <= 32,
            None,
            None,
            f"{pages} pages, {r.ok} hits; per page also: pending deltas {per_page['pend']:.0f} B,"
            f" visitor sketches of the day {per_page['uvp']:.0f} B, dedupe marks"
            f" {per_page['seen']:.0f} B (per hit, expire), used_memory grew"
            f" {(after - before) / pages:.0f} B per page",
        )
    )


def _flushall(b: Bench) -> None:
    import redis as redis_sync

    client = redis_sync.Redis.from_url(b.redis.url)
    try:
        client.flushall()
    finally:
        client.close()


def fig_marks(b: Bench) -> None:
    """Bytes per dedupe mark; hit rate with LIVE_MARKS live marks over a fresh Redis."""
    from bench import marks

    run.cli(b.env, "sites", "add", MARKS_SITE)
    args = _run_args(b.args, "--endpoints", run.HIT)
    rates: dict[str, list[float]] = {"fresh": [], "marks": []}
    p99: dict[str, list[float]] = {"fresh": [], "marks": []}
    with run.api_server(b.env, args.app, 1, b.tmp / "api-marks.log") as (port, pid):
        _flushall(b)
        run._get(port, f"/v1/sites/{MARKS_SITE}/counts")  # loads the site into Redis
        size = marks.bytes_per_mark(b.redis.url, MARKS_SITE, MARKS_BYTES_COUNT)
        print(f"  {size}", flush=True)
        for n, state in _rotating(["fresh", "marks"], b.args.rounds):
            _flushall(b)
            if state == "marks":
                started = time.monotonic()
                dbsize = marks.fill_marks(b.redis.url, args.site, LIVE_MARKS)
                print(
                    f"  {LIVE_MARKS} live marks written in {time.monotonic() - started:.1f} s"
                    f" ({dbsize} keys)",
                    flush=True,
                )
            run.run_load(args, b.kind, port, pid, run.HIT, 2, phase="warm-up")
            r = run.run_load(args, b.kind, port, pid, run.HIT, b.args.duration, round_no=n)
            _show(state, r)
            rates[state].append(r.rps)
            p99[state].append(r.p99_ms)
    per_mark = size["used_memory_per_mark"]
    b.rows.append(
        Row(
            "9. Redis bytes per dedupe mark",
            f"{per_mark:.1f} B",
            "40 B",
            per_mark,
            40.0,
            "<= 40 B",
            per_mark <= 40,
            None,
            None,
            f"{size['marks']} marks written by hits.lua (a new visitor each, window 1800 s) on"
            f" {size['server']}: used_memory grew {per_mark:.1f} B a mark, MEMORY USAGE of the"
            f" marks' hashes {size['memory_usage_per_mark']:.1f} B a mark; {size['hashes']}"
            f" hashes, encodings {size['encodings']}",
        )
    )
    fresh, loaded = statistics.median(rates["fresh"]), statistics.median(rates["marks"])
    b.rows.append(
        Row(
            "9. hit with 1M live dedupe marks / fresh Redis",
            f"hit {loaded:.0f}/s with {LIVE_MARKS:,} marks",
            f"hit {fresh:.0f}/s fresh",
            loaded,
            fresh,
            ">= 0.9",
            loaded / fresh >= 0.9,
            None,
            statistics.median(p99["marks"]),
            f"p99 fresh {statistics.median(p99['fresh']):.1f} ms; marks written into the"
            " current generation's hashes of the site as hits.lua lays them out (bench/marks.py)",
            [a / c for a, c in zip(rates["marks"], rates["fresh"], strict=True)],
        )
    )


def fig_idem(b: Bench) -> None:
    """Redis bytes kept per batch view for idempotency, with and without a key."""
    from bench import marks

    env = dict(b.env, VIEWCOUNTER_INGEST_TOKEN=INGEST_TOKEN, VIEWCOUNTER_ADMIN_RATE_LIMIT="0")
    args = _run_args(b.args)
    with run.api_server(env, args.app, 1, b.tmp / "api-idem.log") as (port, _pid):
        keyed = marks.idempotency_bytes(
            b.redis.url, port, args.site, INGEST_TOKEN, BATCH_VIEWS, f"bench-{time.time_ns()}"
        )
        bare = marks.idempotency_bytes(
            b.redis.url, port, args.site, INGEST_TOKEN, BATCH_VIEWS, None
        )
    print(f"  with a key {keyed}; without {bare}", flush=True)
    per_view = keyed["bytes"] / keyed["views"]
    b.rows.append(
        Row(
            "10. Redis bytes per batch view kept for idempotency",
            f"{per_view:.2f} B with a key",
            "1 B",
            per_view,
            1.0,
            "<= 1 B",
            per_view <= 1,
            None,
            None,
            f"one {BATCH_VIEWS:,}-view batch: with an Idempotency-Key {keyed['records']}"
            f" records, {keyed['bytes']} B (MEMORY USAGE) kept for VIEWCOUNTER_IDEMPOTENCY_TTL;"
            f" without a key {bare['bytes']} B ({bare['bytes'] / bare['views']:.2f} B a view)"
            " left once answered",
        )
    )


def fig_pages(b: Bench) -> None:
    """Hit rate against distinct pages; a fresh Redis before each run."""
    rates: dict[int, list[float]] = {n: [] for n in PAGE_COUNTS}
    p99: dict[int, list[float]] = {n: [] for n in PAGE_COUNTS}
    args = _run_args(b.args, "--endpoints", run.HIT)
    with run.api_server(b.env, args.app, 1, b.tmp / "api-pages.log") as (port, pid):
        for n, pages in _rotating(list(PAGE_COUNTS), b.args.rounds):
            _flushall(b)
            args.pages = pages
            run.run_load(args, b.kind, port, pid, run.HIT, 2, phase="warm-up")
            r = run.run_load(args, b.kind, port, pid, run.HIT, b.args.duration, round_no=n)
            _show(f"{pages} pages", r)
            rates[pages].append(r.rps)
            p99[pages].append(r.p99_ms)
    medians = {n: statistics.median(v) for n, v in rates.items()}
    b.pages_curve = [(n, medians[n], statistics.median(p99[n])) for n in PAGE_COUNTS]
    low, high = PAGE_COUNTS[0], PAGE_COUNTS[-1]
    b.rows.append(
        Row(
            f"11. hit with {high:,} distinct pages / {low}",
            f"hit {medians[high]:.0f}/s",
            f"hit {medians[low]:.0f}/s",
            medians[high],
            medians[low],
            "curve",
            None,
            None,
            statistics.median(p99[high]),
            "hit/s by distinct pages: "
            + ", ".join(f"{n:,}: {medians[n]:.0f}" for n in PAGE_COUNTS)
            + "; a fresh Redis before each run, a new visitor each hit",
            [a / c for a, c in zip(rates[high], rates[low], strict=True)],
        )
    )
    _plot_pages(b.pages_curve)


def _plot_pages(curve: list[tuple[int, float, float]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib not installed (pip install -e '.[bench]'); plot skipped")
        return
    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    ax1.plot([c[0] for c in curve], [c[1] for c in curve], "o-", color="tab:blue", label="hits/s")
    ax1.set_xscale("log")
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("distinct pages hit (a new visitor each hit)")
    ax1.set_ylabel("hits/s, one worker")
    ax2 = ax1.twinx()
    ax2.plot([c[0] for c in curve], [c[2] for c in curve], "s--", color="tab:red", label="p99 ms")
    ax2.set_ylabel("p99 (ms)")
    ax2.set_ylim(bottom=0)
    lines, lines2 = ax1.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower left", fontsize=8)
    ax1.set_title("POST /v1/sites/{site}/hits against distinct pages")
    fig.tight_layout()
    RESULTS_DIR.mkdir(exist_ok=True)
    fig.savefig(PAGES_PLOT_FILE, dpi=100)
    print(f"  plot: {PAGES_PLOT_FILE.relative_to(REPO_ROOT)}")


def plot_flush_curves(
    by_sites: Sequence[tuple[int, float, int]], by_pages: Sequence[tuple[int, float]]
) -> None:
    """Write FLUSH_CURVES_PLOT_FILE: pass time against sites with work and dirty pages."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib not installed (pip install -e '.[bench]'); plot skipped")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.plot([s[0] for s in by_sites], [s[1] for s in by_sites], "o-", color="tab:blue")
    left.axhline(5.0, color="tab:red", linestyle="--", label="flush interval (5 s)")
    left.set_xscale("log")
    left.set_xlabel("sites with work (a few hits each)")
    left.set_ylabel("flush pass (s)")
    left.legend(fontsize=8)
    right.plot([p[0] for p in by_pages], [p[1] for p in by_pages], "s-", color="tab:green")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("dirty pages of one site")
    right.set_ylabel("flush pass (s)")
    fig.suptitle("Flush pass time against the work it moves")
    fig.tight_layout()
    RESULTS_DIR.mkdir(exist_ok=True)
    fig.savefig(FLUSH_CURVES_PLOT_FILE, dpi=100)
    print(f"  plot: {FLUSH_CURVES_PLOT_FILE.relative_to(REPO_ROOT)}")


def _flush_step(b: Bench, step: str, *argv: str) -> dict[str, Any]:
    """One step of bench/flush.py in its own process; its FLUSHJSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.flush", step, *argv],
        cwd=REPO_ROOT,
        env=b.env,
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"^FLUSHJSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench.flush {step} failed:\n{done.stdout}{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(found.group(1))
    return result


def _flush_database(b: Bench, name: str) -> str:
    """A new database copied from the flusher figure's migrated template; its URL."""
    if not b.flush_template:
        b.flush_template = "flush_template"
        b.postgres.psql(f"CREATE DATABASE {b.flush_template}")
        env = dict(b.env, VIEWCOUNTER_DATABASE_URL=b.postgres.url(b.flush_template))
        run.cli(env, "migrate")
        run.cli(env, "sites", "add", FLUSH_SITE)
    b.postgres.psql(f"CREATE DATABASE {name} TEMPLATE {b.flush_template}")
    return b.postgres.url(name)


def _ours(b: Bench, database: str, pages: int, *flush_args: str, fresh: bool) -> dict[str, Any]:
    """N dirty pages into Redis (`fresh`: FLUSHALL first, for a new database), then one
    timed flush_once."""
    common = ("--redis", b.redis.url, "--database", database)
    # No FLUSHALL before a round into a database that has the pages already: loading a site
    # of more than ~4,000 pages back into Redis fails (load_pages.lua unpacks 10,000 pages of
    # ARGV at once, over Lua's limit), a bug left to the owner of the key layout.
    more = ("--flushall",) if fresh else ()
    prep = _flush_step(b, "prep", *common, "--site", FLUSH_SITE, "--pages", str(pages), *more)
    result = _flush_step(b, "flush", *common, *flush_args)
    if (result["rows"], result["hits"], result["batches"]) != (pages, pages, 1):
        raise SystemExit(f"flush: expected one batch of {pages} rows and hits: {result}")
    result["prep_s"] = prep["seconds"]
    return result


def fig_flusher(b: Bench) -> None:
    """Rows/s of Flusher.flush_once() over a bare asyncpg COPY upsert of the same rows, into
    a new database (insert) and again into the same one (update); then one batch of
    --flush-big-pages for the flusher's peak memory."""
    pages = b.args.flush_pages
    rates: dict[tuple[str, str], list[float]] = {}
    notes: dict[str, list[str]] = {"insert": [], "update": []}
    for n, who in _rotating(["ours", "bare"], b.args.rounds):
        database = _flush_database(b, f"flush_{who}_{n}")
        for phase in ("insert", "update"):
            if who == "ours":
                r = _ours(b, database, pages, fresh=phase == "insert")
                extra = (
                    f" (prep {r['prep_s']:.1f} s; find_work SCAN alone {r['find_work_s']:.2f} s;"
                    f" peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB)"
                )
                notes[phase].append(f"{r['find_work_s']:.2f}")
            else:
                common = ("--database", database, "--site", FLUSH_SITE)
                r = _flush_step(b, "bare", *common, "--pages", str(pages))
                extra = ""
            rate = r["rows"] / r["seconds"]
            rates.setdefault((who, phase), []).append(rate)
            print(
                f"  round {n} {who:<4} {phase:<6} {r['rows']} rows in {r['seconds']:.2f} s:"
                f" {rate:>8.0f} rows/s{extra}",
                flush=True,
            )
    for phase in ("insert", "update"):
        ours, bare = rates["ours", phase], rates["bare", phase]
        ours_rate, bare_rate = statistics.median(ours), statistics.median(bare)
        what = "new rows" if phase == "insert" else "rows already in Postgres"
        b.rows.append(
            Row(
                f"4. flusher / bare COPY upsert ({phase})",
                f"flush_once {ours_rate:.0f} rows/s",
                f"asyncpg COPY + upserts {bare_rate:.0f} rows/s",
                ours_rate,
                bare_rate,
                ">= 0.8",
                ours_rate / bare_rate >= 0.8,
                None,
                None,
                f"{pages} dirty pages of one site in one batch ({what}); flush_once from"
                f" find_work to the deleted snapshot, WAITAOF included; find_work's SCAN alone"
                f" {', '.join(notes[phase])} s",
                [a / c for a, c in zip(ours, bare, strict=True)],
            )
        )
    big = b.args.flush_big_pages
    if not big:
        return
    database = _flush_database(b, "flush_big")
    r = _ours(b, database, big, fresh=True)
    print(
        f"  {big} pages, one batch: {r['seconds']:.1f} s ({r['rows'] / r['seconds']:.0f} rows/s),"
        f" flusher RSS {r['rss_before_kib'] / 1024:.0f} MiB before,"
        f" peak {r['peak_rss_kib'] / 1024:.0f} MiB",
        flush=True,
    )
    traced = _ours(b, _flush_database(b, "flush_big_traced"), big, "--tracemalloc", fresh=True)
    print(
        f"  again under tracemalloc: peak of Python allocations"
        f" {traced['tracemalloc_peak_bytes'] / 2**20:.1f} MiB, peak RSS"
        f" {traced['peak_rss_kib'] / 1024:.0f} MiB ({traced['seconds']:.1f} s)",
        flush=True,
    )
    b.rows.append(
        Row(
            "4. flusher memory, one batch of 1M pages"
            if big == 1_000_000
            else f"4. flusher memory, one batch of {big} pages",
            f"peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB",
            f"RSS before the flush {r['rss_before_kib'] / 1024:.0f} MiB",
            r["peak_rss_kib"],
            r["rss_before_kib"],
            "bounded (by the chunk)",
            None,
            None,
            None,
            f"{r['rows']} rows in {r['seconds']:.1f} s ({r['rows'] / r['seconds']:.0f} rows/s);"
            f" tracemalloc peak {traced['tracemalloc_peak_bytes'] / 2**20:.1f} MiB (another"
            f" run of the same size); chunks of {worker.FLUSH_CHUNK_ROWS:,} rows"
            f" (services/flusher/worker.py FLUSH_CHUNK_ROWS)",
        )
    )


def _work_step(b: Bench, step: str, database: str, *argv: str) -> dict[str, Any]:
    """One step of bench/workindex.py in its own process; its WORKJSON result."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.workindex", step, "--redis", b.redis.url,
         "--database", database, *argv],
        cwd=REPO_ROOT,
        env=b.env,
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    found = re.search(r"^WORKJSON (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench.workindex {step} failed:\n{done.stdout}{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(found.group(1))
    return result


def fig_idle(b: Bench) -> None:
    """Redis CPU of idle passes with 1,000,000 live dedupe marks over none."""
    database = _flush_database(b, "work_idle")
    r = _work_step(b, "idle", database, "--passes", str(b.args.idle_passes))
    none, marks, scan = r["none"], r["marks"], r["scan_once"]
    print(f"  {r['passes']} idle passes: {none} with no marks, {marks} with {r['marks']} marks;"
          f" one SCAN of the keyspace {scan}", flush=True)  # fmt: skip
    b.rows.append(
        Row(
            "15. Redis CPU of idle flush passes, 1M dedupe marks / none (net)",
            f"{marks['net_s'] * 1000:.0f} ms ({marks['wall_s']:.2f} s wall)",
            f"{none['net_s'] * 1000:.0f} ms ({none['wall_s']:.2f} s wall)",
            marks["net_s"],
            none["net_s"],
            "<= 1.5",
            marks["net_s"] <= 1.5 * none["net_s"],
            None,
            None,
            f"2 x {r['passes']} idle passes each side (order none, marks, marks, none; net per"
            f" run: none {none['runs']}, marks {marks['runs']} s), Redis INFO cpu before/after,"
            f" net of Redis' own background CPU over a sleep as long (raw: with marks"
            f" {marks['redis_cpu_s'] * 1000:.0f} ms, background"
            f" {marks['background_s'] * 1000:.0f} ms; none {none['redis_cpu_s'] * 1000:.0f}"
            f" ms, background {none['background_s'] * 1000:.0f} ms; raw ratio"
            f" {marks['redis_cpu_s'] / max(none['redis_cpu_s'], 1e-9):.2f});"
            f" {r['dbsize']} keys with the marks; for scale, one SCAN of that keyspace (what"
            f" every pass cost before the work index): Redis CPU"
            f" {scan['redis_cpu_s'] * 1000:.0f} ms, {scan['wall_s']:.2f} s wall",
        )
    )


def fig_curves(b: Bench) -> None:
    """Flush pass time against sites with work and against dirty pages."""
    by_sites: list[tuple[int, float, int]] = []
    for n in CURVE_SITES:
        r = _work_step(b, "sites", _flush_database(b, f"work_sites_{n}"), "--sites", str(n))
        if (r["units"], r["hits"]) != (n, 3 * n):
            raise SystemExit(f"curves: expected {n} sites flushed with {3 * n} hits: {r}")
        by_sites.append((n, r["seconds"], r["batches"]))
        print(f"  {n} sites: {r['seconds']:.2f} s, {r['batches']} batches", flush=True)
    by_pages: list[tuple[int, float]] = []
    for n in (p for p in CURVE_PAGES if p <= b.args.curve_max_pages):
        r = _work_step(b, "pages", _flush_database(b, f"work_pages_{n}"), "--pages", str(n))
        by_pages.append((n, r["seconds"]))
        print(f"  {n} dirty pages: {r['seconds']:.2f} s", flush=True)
    b.curves = {"sites": by_sites, "pages": by_pages}
    plot_flush_curves(by_sites, by_pages)
    many, seconds, batches = by_sites[-1]
    b.rows.append(
        Row(
            f"15. flush pass of {many:,} sites with a few hits / flush interval",
            f"{seconds:.2f} s ({batches} batches)",
            "VIEWCOUNTER_FLUSH_INTERVAL 5 s",
            seconds,
            5.0,
            "<= 1",
            seconds <= 5.0,
            None,
            None,
            "sites: "
            + ", ".join(f"{n}: {s:.2f} s" for n, s, _ in by_sites)
            + "; dirty pages of one site: "
            + ", ".join(f"{n}: {s:.2f} s" for n, s in by_pages),
        )
    )


def _rss_kib(pid: int) -> int:
    """Resident set size of a process (VmRSS), KiB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def flusher_process(env: dict[str, str], log_file: Path) -> Iterator[int]:
    """`viewcounter flusher` (the real command) in the background; yields its pid."""
    env = dict(env, VIEWCOUNTER_METRICS_PORT=str(free_port()))
    proc = run.spawn([sys.executable, "-m", "services.cli", "flusher"], env, log_file)
    try:
        yield proc.pid
    finally:
        run._stop_group(proc, 30)


def fig_soak(b: Bench) -> None:
    """The api's RSS over a soak at a steady fraction of its hit rate, sampled every
    SOAK_SAMPLE_S; first minute against last minute."""
    seconds = max(120, int(b.args.soak_minutes * 60))
    run.cli(b.env, "sites", "add", SOAK_SITE)
    args = _run_args(b.args, "--pages", str(SOAK_PAGES), "--site", SOAK_SITE)
    app = "services.api.app:create_app_from_env"  # the product's app, nothing of the bench's
    with (
        run.api_server(b.env, app, 1, b.tmp / "api-soak.log") as (port, pid),
        flusher_process(b.env, b.tmp / "flusher-soak.log") as flusher_pid,
    ):
        run.run_load(args, b.kind, port, pid, run.HIT, 2, phase="warm-up")
        capacity = run.run_load(args, b.kind, port, pid, run.HIT, 5, phase="capacity")
        _show("capacity", capacity)
        offered = SOAK_FRACTION * capacity.rps
        delay_ms = max(1, round(args.connections * 1000 / offered - PACED_LATENCY_MS))
        args.wrk_script = _paced_script(delay_ms, b.tmp)
        print(
            f"  soak: {seconds} s at ~{offered:.0f} hits/s ({SOAK_FRACTION:.0%} of capacity,"
            f" {SOAK_PAGES} pages, a new visitor each hit), RSS every {SOAK_SAMPLE_S:g} s",
            flush=True,
        )
        samples: list[tuple[float, int, int]] = []  # (s since start, api KiB, flusher KiB)
        result: list[run.RunResult] = []
        load = threading.Thread(
            target=lambda: result.append(
                run.run_load(args, b.kind, port, pid, run.HIT, seconds, phase="soak")
            )
        )
        started = time.monotonic()
        load.start()
        while load.is_alive():
            at = time.monotonic() - started
            samples.append((at, _rss_kib(pid), _rss_kib(flusher_pid)))
            if len(samples) % 6 == 1:
                print(
                    f"  {at:6.0f} s  api RSS {samples[-1][1] / 1024:7.1f} MiB"
                    f"  flusher RSS {samples[-1][2] / 1024:7.1f} MiB",
                    flush=True,
                )
            load.join(SOAK_SAMPLE_S)
        samples.append((time.monotonic() - started, _rss_kib(pid), _rss_kib(flusher_pid)))
    if not result:
        raise SystemExit("soak: the load generator failed")
    r = result[0]
    _show("soak", r)
    first = [s for s in samples if s[0] <= 60]
    last = [s for s in samples if s[0] >= samples[-1][0] - 60]
    api_first = statistics.median(s[1] for s in first)
    api_last = statistics.median(s[1] for s in last)
    flusher_first = statistics.median(s[2] for s in first)
    flusher_last = statistics.median(s[2] for s in last)
    b.soak_samples = samples
    rss = [x[1] for x in samples]
    b.rows.append(
        Row(
            "5b. api RSS, last minute / first minute",
            f"last {api_last / 1024:.1f} MiB",
            f"first {api_first / 1024:.1f} MiB",
            api_last,
            api_first,
            "<= 1.1 (flat)",
            api_last / api_first <= 1.1,
            r.p50_ms,
            r.p99_ms,
            f"{seconds / 60:g} min soak, {r.ok} hits answered 200 ({r.rps:.0f}/s paced,"
            f" {SOAK_FRACTION:.0%} of the closed-loop {capacity.rps:.0f}/s), {SOAK_PAGES} pages,"
            f" a new visitor each hit, flusher running; medians of the samples (every"
            f" {SOAK_SAMPLE_S:g} s) in each minute; api RSS min {min(rss) / 1024:.1f},"
            f" max {max(rss) / 1024:.1f} MiB; flusher RSS"
            f" {flusher_first / 1024:.1f} -> {flusher_last / 1024:.1f} MiB;"
            f" errors {r.non2xx + r.socket_errors}",
        )
    )


# --- report --------------------------------------------------------------------------------


def table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table."""
    lines = [
        "| figure | ours | baseline | ratio | target | met | p50 ms | p99 ms | per round | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p50 = f"{r.p50_ms:.2f}" if r.p50_ms is not None else "-"
        p99 = f"{r.p99_ms:.2f}" if r.p99_ms is not None else "-"
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        rounds = ", ".join(f"{x:.2f}" for x in r.per_round) or "-"
        lines.append(
            f"| {r.figure} | {r.ours} | {r.baseline} | {r.ratio:.2f} | {r.target} | {met} "
            f"| {p50} | {p99} | {rounds} | {r.note} |"
        )
    return "\n".join(lines)


def write_results(
    b: Bench, started: str, load_before: str, points: list[tuple[float, ...]], name: str
) -> Path:
    """bench/results/<date><name>.md: the table, the machine, the command, the paced points,
    the soak's RSS samples."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{time.strftime('%Y-%m-%d')}{name}.md"
    text = [
        f"# Benchmark results {started}",
        "",
        f"- machine: {os.cpu_count()} cores, {platform_line()}",
        f"- load average before {load_before}, after {_loadavg()} (shared machine)",
        f"- command: `{' '.join(['.venv/bin/python', 'bench/suite.py', *sys.argv[1:]])}`",
        f"- load generator: {b.kind}, {b.args.connections} connections, {b.args.rounds} rounds"
        f" of {b.args.duration} s per endpoint, rotating order; medians",
        "",
        table(b.rows),
        "",
    ]
    if points:
        text += [
            "Hit path at paced offered loads (one worker):",
            "",
            "| offered/s | achieved/s | p50 ms | p99 ms |",
            "|---|---|---|---|",
            *[f"| {p[0]:.0f} | {p[1]:.0f} | {p[2]:.2f} | {p[3]:.2f} |" for p in points],
            "",
        ]
    if b.pages_curve:
        text += [
            "Hit rate against distinct pages (one worker, medians):",
            "",
            "| pages | hits/s | p99 ms |",
            "|---|---|---|",
            *[f"| {n:,} | {rate:.0f} | {p99:.2f} |" for n, rate, p99 in b.pages_curve],
            "",
        ]
    if b.curves:
        text += [
            "Flush pass time against sites with work (a few hits each):",
            "",
            "| sites | seconds | batches |",
            "|---|---|---|",
            *[f"| {n} | {s:.2f} | {k} |" for n, s, k in b.curves["sites"]],
            "",
            "Flush pass time against dirty pages (one site, one batch):",
            "",
            "| dirty pages | seconds | rows/s |",
            "|---|---|---|",
            *[f"| {n} | {s:.2f} | {n / s:.0f} |" for n, s in b.curves["pages"]],
            "",
        ]
    if b.soak_samples:
        text += [
            "api and flusher RSS during the soak (MiB):",
            "",
            "| s | api | flusher |",
            "|---|---|---|",
            *[f"| {t:.0f} | {a / 1024:.1f} | {f / 1024:.1f} |" for t, a, f in b.soak_samples],
            "",
        ]
    path.write_text("\n".join(text))
    return path


def platform_line() -> str:
    """Python and kernel versions."""
    import platform

    return f"Python {platform.python_version()}, {platform.system()} {platform.release()}"


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("figures", nargs="+", choices=(*FIGURES, "all"))
    parser.add_argument("--duration", type=int, default=6, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--flush-pages", type=int, default=200_000, help="flusher: dirty pages per ratio run"
    )
    parser.add_argument(
        "--flush-big-pages", type=int, default=1_000_000, help="flusher: the memory run; 0: none"
    )
    parser.add_argument(
        "--batch-key-views", type=int, default=100, help="batch-key: views per request"
    )
    parser.add_argument("--soak-minutes", type=float, default=10.0, help="soak: minutes of load")
    parser.add_argument("--idle-passes", type=int, default=1000, help="idle: passes each side")
    parser.add_argument(
        "--curve-max-pages", type=int, default=1_000_000, help="curves: dirty pages up to"
    )
    ns = parser.parse_args(argv)
    figures = FIGURES if "all" in ns.figures else tuple(dict.fromkeys(ns.figures))
    started, load_before = time.strftime("%Y-%m-%d %H:%M:%S %Z"), _loadavg()
    print(f"cores {os.cpu_count()}, load average before {load_before}")
    kind = run._choose_loadgen("auto")
    steps: dict[str, Callable[[Bench], object]] = {
        "workers": fig_workers,
        "batch": fig_batch,
        "batch-key": fig_batch_key,
        "memory": fig_memory,
        "marks": fig_marks,
        "idem": fig_idem,
        "pages": fig_pages,
        "flusher": fig_flusher,
        "soak": fig_soak,
        "idle": fig_idle,
        "curves": fig_curves,
    }
    points: list[tuple[float, ...]] = []
    with tempfile.TemporaryDirectory(prefix="vc-suite-") as tmp_name:
        tmp = Path(tmp_name)
        with run.backing_servers(tmp) as (redis, postgres):
            env = run.api_env(redis, postgres, [])
            run.cli(env, "migrate")
            run.cli(env, "sites", "add", "bench")
            ns.redis_pid = redis.pid
            b = Bench(ns, kind, redis, postgres, env, tmp)
            if {"hit", "counts", "stats"} & set(figures):
                reads = [name for name in ("counts", "stats") if name in figures]
                print(f"\n== hit{''.join(f' and {name}' for name in reads)}")
                fig_hit_and_counts(b, "counts" in figures, "stats" in figures)
            if "top" in figures:
                print("\n== top")
                fig_top(b)
            if "latency" in figures:
                print("\n== latency at paced loads")
                points = [tuple(p) for p in fig_latency(b)]
            for name in (
                "workers", "batch", "batch-key", "memory", "marks", "idem", "pages", "flusher",
                "soak", "idle", "curves",
            ):  # fmt: skip
                if name in figures:
                    print(f"\n== {name}")
                    steps[name](b)
    print()
    print(table(b.rows))
    print(f"\nload average after {_loadavg()}")
    # `all` writes <date>.md; a run of some figures <date>-<figures>.md beside it.
    name = "" if set(figures) == set(FIGURES) else "-" + "-".join(figures)
    path = write_results(b, started, load_before, points, name)
    print(f"results: {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
