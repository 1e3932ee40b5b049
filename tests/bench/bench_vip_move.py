"""Benchmark: move a VIP between controllers a and b while a client probes it over TCP.

Not a test: run it by hand as root (it builds its own namespaces and removes them):

    cd /work/main && /tmp/v/bin/python tests/bench/bench_vip_move.py --moves 20

The client opens a TCP connection to the VIP every 10 ms (50 ms timeout); the server on each controller
answers with its name. For every move (release on the holder, then claim on the other) it reports

* gap: last good reply from the old holder -> first good reply from the new one;
* neighbour: claim() called -> the client's neighbour entry for the VIP shows the new holder's MAC
  (from rtnetlink events in the client's namespace).

It runs once with announcements (GARP / unsolicited NA) and once with garp_count=0 (fewer moves: each one
waits for the client's stale neighbour entry to expire, tens of seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import structlog
from pyroute2 import netns as pyroute2_netns
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.rtnl import RTM_NEWNEIGH, RTMGRP_NEIGH
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from hacontrol.adapters.network import Network
from hacontrol.adapters.network.namespace import open_socket
from hacontrol.agent.protocols import ManagedAddress
from hacontrol.config.schema import Network as NetworkSettings
from hacontrol.lab.netns import Topology, sweep, topology

PORT = 3260
PROBE_EVERY_S = 0.010
PROBE_TIMEOUT_S = 0.050
SETTLE_S = 0.3  # steady probing before each move
MOVE_GIVE_UP_S = 120.0  # without announcements a move takes one neighbour-entry lifetime (15-45 s + probes)

SERVER = r"""
import socket, sys
srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
srv.bind(("::", int(sys.argv[2])))
srv.listen(128)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    try:
        conn.sendall(sys.argv[1].encode())
    except OSError:
        pass
    conn.close()
"""


@dataclass
class Probe:
    started: float
    ended: float
    answer: str | None


@dataclass
class Move:
    old: str
    new: str
    released_at: float
    claim_at: float
    claim_done: float = 0.0


@dataclass
class Recorder:
    """Client-side observations, appended by the probe and neighbour threads."""

    probes: list[Probe] = field(default_factory=list)
    neighbour: list[tuple[float, str]] = field(default_factory=list)  # (when, lladdr) for the VIP
    stop: threading.Event = field(default_factory=threading.Event)


def probe_loop(client_ns: str, vip: ipaddress.IPv4Address, rec: Recorder) -> None:
    pyroute2_netns.setns(client_ns, flags=0, fork=False)  # this thread only: its sockets are the client's
    next_at = time.monotonic()
    while not rec.stop.is_set():
        started = time.monotonic()
        answer = None
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            sock.connect((str(vip), PORT))
            sock.settimeout(max(0.001, started + PROBE_TIMEOUT_S - time.monotonic()))
            answer = sock.recv(16).decode() or None
        rec.probes.append(Probe(started, time.monotonic(), answer))
        next_at = max(next_at + PROBE_EVERY_S, time.monotonic())
        time.sleep(max(0.0, next_at - time.monotonic()))


def neighbour_loop(sock: socket.socket, vip: ipaddress.IPv4Address, rec: Recorder) -> None:
    sock.settimeout(0.1)
    while not rec.stop.is_set():
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        when = time.monotonic()
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            if kind == RTM_NEWNEIGH:
                msg = ndmsg(data[offset : offset + length])
                msg.decode()
                if msg.get_attr("NDA_DST") == str(vip) and msg.get_attr("NDA_LLADDR"):
                    rec.neighbour.append((when, msg.get_attr("NDA_LLADDR")))
            offset += (length + 3) & ~3


def start_server(topo: Topology, member: str, procs: list[subprocess.Popen[str]]) -> None:
    ns = topo.members[member].netns
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, member, str(PORT)],
                            stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 10)
    if not ready or proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"server in {ns} did not start")


def first_answer(rec: Recorder, name: str, after: float) -> Probe | None:
    return next((p for p in list(rec.probes) if p.started >= after and p.answer == name), None)


def wait_for_answer(rec: Recorder, name: str, after: float) -> None:
    give_up = time.monotonic() + MOVE_GIVE_UP_S
    while first_answer(rec, name, after) is None and time.monotonic() < give_up:
        time.sleep(0.05)


def run(topo: Topology, settings: NetworkSettings, moves: int, rec: Recorder) -> list[Move]:
    nets = {name: Network(netns=topo.members[name].netns, garp_count=settings.garp_count,
                          garp_interval_s=settings.garp_interval_s, dad_timeout_s=settings.dad_timeout_s)
            for name in ("a", "b")}
    vip = ManagedAddress(topo.address(1), "eth0")
    claimed_at = time.monotonic()
    nets["a"].claim(vip, claimed_at + 10)
    wait_for_answer(rec, "a", claimed_at)  # the first move must start from a client that reaches a
    holder, done = "a", []
    for _ in range(moves):
        time.sleep(SETTLE_S)
        new = "b" if holder == "a" else "a"
        released_at = time.monotonic()
        nets[holder].release(vip, released_at + 10)
        move = Move(holder, new, released_at, time.monotonic())
        nets[new].claim(vip, move.claim_at + 10)
        move.claim_done = time.monotonic()
        done.append(move)
        wait_for_answer(rec, new, released_at)
        holder = new
    nets[holder].release(vip, time.monotonic() + 10)
    return done


def measure(move: Move, rec: Recorder, new_mac: str) -> tuple[float | None, float | None]:
    """(gap, claim->neighbour switch) in seconds; None where the client never saw it."""
    first_new = first_answer(rec, move.new, move.released_at)
    gap = None
    if first_new is not None:
        old = [p.ended for p in rec.probes if p.answer == move.old and p.ended <= first_new.ended]
        gap = first_new.ended - max(old) if old else None
    switch = next((when for when, mac in rec.neighbour if when >= move.claim_at and mac == new_mac), None)
    return gap, (switch - move.claim_at if switch is not None else None)


@contextlib.contextmanager
def lab(prefix: str) -> Iterator[tuple[Topology, Recorder]]:
    """Namespaces, servers, and the client's probe and neighbour watcher; all removed on exit."""
    sweep(prefix)
    procs: list[subprocess.Popen[str]] = []
    rec = Recorder()
    threads: list[threading.Thread] = []
    with topology(prefix, ["a", "b", "client"]) as topo:
        try:
            for member in ("a", "b"):
                start_server(topo, member, procs)
            client_ns, vip = topo.members["client"].netns, topo.address(1).ip
            neigh = open_socket(client_ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            neigh.bind((0, RTMGRP_NEIGH))
            threads = [threading.Thread(target=probe_loop, args=(client_ns, vip, rec), daemon=True),
                       threading.Thread(target=neighbour_loop, args=(neigh, vip, rec), daemon=True)]
            for t in threads:
                t.start()
            yield topo, rec
        finally:
            rec.stop.set()
            for t in threads:
                t.join(5)
            for proc in procs:
                proc.kill()
                proc.wait(10)


def bench(label: str, settings: NetworkSettings, moves: int, prefix: str, verbose: bool) -> list[str]:
    with lab(prefix) as (topo, rec):
        done = run(topo, settings, moves, rec)
        macs = {name: topo.members[name].mac for name in ("a", "b")}
        results = [measure(m, rec, macs[m.new]) for m in done]
    if verbose:
        for m, (gap, neigh) in zip(done, results, strict=True):
            print(f"{label}: {m.old}->{m.new} gap={gap} neighbour={neigh} claim={m.claim_done - m.claim_at:.4f}",
                  file=sys.stderr)
    claims = [m.claim_done - m.claim_at for m in done]
    return [label, str(len(done)), *stats([g for g, _ in results]), *stats([n for _, n in results]),
            *stats(claims)]


def stats(values: list[float | None]) -> list[str]:
    seen = [v for v in values if v is not None]
    if not seen:
        return ["-", "-"]
    missing = f" ({len(values) - len(seen)} unseen)" if len(seen) < len(values) else ""
    return [f"{statistics.median(seen) * 1000:.1f}", f"{max(seen) * 1000:.1f}{missing}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--moves-without-garp", type=int, default=3)
    parser.add_argument("--dad-timeout", type=float, default=NetworkSettings().dad_timeout_s)
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per move on stderr")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    sys.setswitchinterval(0.0005)  # timestamps taken in threads: keep GIL hand-offs short
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # table only
    base = NetworkSettings(dad_timeout_s=args.dad_timeout)
    quiet = NetworkSettings(garp_count=0, garp_interval_s=base.garp_interval_s, dad_timeout_s=args.dad_timeout)
    prefix = f"hcb{os.getpid() % 10000}"
    rows = [bench(f"garp_count={base.garp_count} interval={base.garp_interval_s}s dad={base.dad_timeout_s}s",
                  base, args.moves, prefix, args.verbose)]
    if args.moves_without_garp > 0:
        rows.append(bench(f"garp_count=0 dad={quiet.dad_timeout_s}s", quiet, args.moves_without_garp, prefix,
                          args.verbose))
    header = ["configuration", "moves", "gap med ms", "gap max ms", "neigh med ms", "neigh max ms",
              "claim() med ms", "claim() max ms"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
