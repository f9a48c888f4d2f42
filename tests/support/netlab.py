"""Test hosts made of network namespaces and veth pairs, and the faults put on their links.

Each host (redis, pg, api, flusher) is a namespace named `vcnet-<pid>-<host>` (the pid of the
test process: a unique prefix per run). Each link between a client and a server is a veth pair
with a /30 of 10.213.<n>.0 (client .1, server .2); a server also has a service address on its
loopback (10.213.0.<k>/32) that its clients route through their link to it, so every client
dials the same address. Nothing else is touched: no address outside these namespaces, no rule
outside them (the test process reaches the servers through relays on its own 127.0.0.1, see
tests/support/relay.py). Faults are iptables rules in the client's namespace on its end of the
link; a link is healed by flushing them.

Needs root, `ip` (iproute2), `iptables` and `setpriv` (util-linux). This kernel has no netem
qdisc, so loss is iptables' `statistic` match and delay a userspace relay (relay.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass

import pytest

PREFIX = "vcnet-"
HOSTS = ("redis", "pg", "api", "flusher")
SERVICE_ADDRESSES = {"redis": "10.213.0.1", "pg": "10.213.0.2"}
TOOLS = ("ip", "iptables", "setpriv")


@dataclass(frozen=True)
class Link:
    """A veth pair between a client host and a server host."""

    client: str
    server: str
    number: int  # the third octet of its /30

    @property
    def name(self) -> str:
        return f"{self.client}–{self.server}"

    @property
    def client_if(self) -> str:
        return f"to-{self.server}"

    @property
    def server_if(self) -> str:
        return f"to-{self.client}"

    def address(self, end: int) -> str:
        return f"10.213.{self.number}.{end}"


LINKS = {
    "api-redis": Link("api", "redis", 1),
    "flusher-redis": Link("flusher", "redis", 2),
    "flusher-pg": Link("flusher", "pg", 3),
    "api-pg": Link("api", "pg", 4),
}


def missing_prerequisites() -> str | None:
    """Why the lab cannot be built here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (Debian: apt-get install iproute2 iptables)"
    return None


def require() -> None:
    """Skip the calling test with the reason when the lab cannot be built; under CI
    (`CI` set), fail instead."""
    why = missing_prerequisites()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"network chaos tests cannot run under CI: {why}")
        pytest.skip(f"network chaos tests: {why}")


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def namespaces() -> list[str]:
    """Names of the network namespaces in /run/netns."""
    return [line.split()[0] for line in run("ip", "netns", "list").splitlines() if line.strip()]


def _owner_alive(name: str) -> bool:
    pid = name.removeprefix(PREFIX).split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    return True


def remove_namespace(name: str) -> None:
    """SIGKILL what still runs in namespace `name` (only our servers ever run there) and
    delete it (its veth ends go with it, and so their peers)."""
    with contextlib.suppress(RuntimeError):
        for pid in run("ip", "netns", "pids", name).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(RuntimeError):
        run("ip", "netns", "delete", name)


def remove_stale() -> list[str]:
    """Delete the namespaces of earlier runs whose test process is gone (crashed, killed)."""
    stale = [n for n in namespaces() if n.startswith(PREFIX) and not _owner_alive(n)]
    for name in stale:
        remove_namespace(name)
    return stale


class Lab:
    """The four hosts and their links, built on `build()`, gone after `destroy()`."""

    def __init__(self) -> None:
        self.run_prefix = f"{PREFIX}{os.getpid()}-"

    def ns(self, host: str) -> str:
        return f"{self.run_prefix}{host}"

    def prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program on `host`."""
        return ["ip", "netns", "exec", self.ns(host)]

    def on(self, host: str, *argv: str) -> str:
        return run(*self.prefix(host), *argv)

    def build(self) -> None:
        try:
            for host in HOSTS:
                run("ip", "netns", "add", self.ns(host))
                run("ip", "-n", self.ns(host), "link", "set", "lo", "up")
            for host, address in SERVICE_ADDRESSES.items():
                run("ip", "-n", self.ns(host), "addr", "add", f"{address}/32", "dev", "lo")
            for link in LINKS.values():
                self._connect(link)
        except BaseException:
            self.destroy()
            raise

    def _connect(self, link: Link) -> None:
        client, server = self.ns(link.client), self.ns(link.server)
        # Both ends are created inside their namespaces: nothing appears in ours, even briefly.
        run(
            "ip", "link", "add", link.client_if, "netns", client, "type", "veth",
            "peer", "name", link.server_if, "netns", server,
        )  # fmt: skip
        for ns, interface, end in ((client, link.client_if, 1), (server, link.server_if, 2)):
            run("ip", "-n", ns, "addr", "add", f"{link.address(end)}/30", "dev", interface)
            run("ip", "-n", ns, "link", "set", interface, "up")
        service = SERVICE_ADDRESSES[link.server]
        run("ip", "-n", client, "route", "add", f"{service}/32", "via", link.address(2))

    def destroy(self) -> None:
        for host in HOSTS:
            if self.ns(host) in namespaces():
                remove_namespace(self.ns(host))

    # Faults: iptables rules in the client's namespace, on its end of the link.

    def _rule(self, link: Link, chain: str, *match: str, target: str = "DROP") -> None:
        direction = "-i" if chain == "INPUT" else "-o"
        jump = ("-j", target) if target else ()
        self.on(link.client, "iptables", "-w", "-A", chain, direction, link.client_if, *match,
                *jump)  # fmt: skip

    def partition(self, link: Link) -> None:
        """Nothing passes the link, either way (packets vanish: no reset, no refusal)."""
        self._rule(link, "OUTPUT")
        self._rule(link, "INPUT")

    def lose_replies(self, link: Link) -> None:
        """A one-way partition: what the client sends arrives (and is counted: `delivered`),
        nothing comes back."""
        self._rule(link, "OUTPUT", target="")
        self._rule(link, "INPUT")

    def lose(self, link: Link, fraction: float) -> None:
        """Drop each packet on the link, either way, with probability `fraction`."""
        match = ("-m", "statistic", "--mode", "random", "--probability", str(fraction))
        self._rule(link, "OUTPUT", *match)
        self._rule(link, "INPUT", *match)

    def _counted(self, link: Link, dropping: bool) -> int:
        """Packets matched so far by the link's rules that drop (or only count)."""
        total = 0
        for line in self.on(link.client, "iptables", "-w", "-v", "-S").splitlines():
            words = line.split()
            if words[:1] == ["-A"] and ("DROP" in words) == dropping:
                total += int(words[words.index("-c") + 1])
        return total

    def dropped(self, link: Link) -> int:
        """Packets the link's rules have dropped so far."""
        return self._counted(link, dropping=True)

    def delivered(self, link: Link) -> int:
        """Packets the client sent over the link under `lose_replies`."""
        return self._counted(link, dropping=False)

    def heal(self, link: Link) -> None:
        self.on(link.client, "iptables", "-w", "-F")
