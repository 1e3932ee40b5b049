"""Network faults as nftables rules on the rig's bridges, rendered from a list of active faults.

The filters sit on the host side (bridge family, matched on each VM's tap), so a fault needs nothing from the
guest and still holds while the guest is frozen or rebooting. Every change replaces the whole `hacrig` table
in one nft transaction; `heal` deletes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from .config import Node, Topology
from .proc import NULL_LOG, EventLog, RigError, run

TABLE = "hacrig"
PARTITION_TARGETS = ("zk", "zk-lossy", "peer", "peer-lossy", "initiators")
LOSS_PERCENT = 10  # zk-lossy, peer-lossy: this share of the packets is dropped, each way


@dataclass(frozen=True)
class Fault:
    kind: str  # "partition" | "disk-path"
    node: str
    target: str = ""  # for partitions: zk | zk-lossy | peer | peer-lossy | initiators

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return f"partition {self.node} from {self.target}" if self.kind == "partition" else f"{self.kind} {self.node}"


TapsOf = Callable[[Node], dict[str, str]]  # node -> {network name: tap name}


def _set(words: list[str]) -> str:
    return "{ " + ", ".join(words) + " }"


def _quoted(names: list[str]) -> str:
    return _set([f'"{n}"' for n in names])


def rules_for(fault: Fault, topology: Topology, taps_of: TapsOf) -> list[tuple[str, str]]:
    """(chain, rule) pairs for one fault; chains are input/output (the rig host) and forward (VM to VM)."""
    node = topology.node(fault.node)
    taps = taps_of(node)
    if fault.kind == "disk-path":
        tap = _tap(taps, topology.jbod.network, node)
        # Both directions, everything: a pulled cable between the controller and the shelf.
        return [("input", f'iifname "{tap}" drop'), ("output", f'oifname "{tap}" drop')]
    if fault.target in ("zk", "zk-lossy"):
        tap = _tap(taps, topology.zookeeper.network, node)
        members = _set(list(topology.zookeeper.members))
        loss = f"numgen random mod 100 < {LOSS_PERCENT} " if fault.target == "zk-lossy" else ""
        return [("input", f'iifname "{tap}" ip daddr {members} {loss}drop'),
                ("output", f'oifname "{tap}" ip saddr {members} {loss}drop')]
    if fault.target == "peer":
        mine = _quoted(list(taps.values()))
        theirs = _quoted(list(taps_of(topology.peer_of(node.name)).values()))
        return [("forward", f"iifname {mine} oifname {theirs} drop"),
                ("forward", f"iifname {theirs} oifname {mine} drop")]
    if fault.target == "peer-lossy":  # one path of the peer link: the interconnect between the controllers
        mine = _tap(taps, "ic", node)
        theirs = _tap(taps_of(topology.peer_of(node.name)), "ic", node)
        loss = f"numgen random mod 100 < {LOSS_PERCENT}"
        return [("forward", f'iifname "{mine}" oifname "{theirs}" {loss} drop'),
                ("forward", f'iifname "{theirs}" oifname "{mine}" {loss} drop')]
    if fault.target == "initiators":
        net = "san"
        tap = _tap(taps, net, node)
        rules = [("input", f'iifname "{tap}" drop'), ("output", f'oifname "{tap}" drop')]  # the host's probe
        others = [taps_of(i).get(net) for i in topology.initiators]
        others = [t for t in others if t]
        if others:
            rules += [("forward", f'iifname "{tap}" oifname {_quoted(others)} drop'),
                      ("forward", f'iifname {_quoted(others)} oifname "{tap}" drop')]
        return rules
    raise RigError(f"unknown fault {fault}")


def _tap(taps: dict[str, str], net: str, node: Node) -> str:
    if net not in taps:
        raise RigError(f"{node.name} has no NIC on the {net} network")
    return taps[net]


def ruleset(faults: list[Fault], topology: Topology, taps_of: TapsOf) -> str:
    chains: dict[str, list[str]] = {"input": [], "output": [], "forward": []}
    for fault in faults:
        for chain, rule in rules_for(fault, topology, taps_of):
            chains[chain].append(f'{rule} comment "{fault.describe()}"')
    body = []
    for chain, rules in chains.items():
        # Chain names must not be nft keywords ("fwd" is one), hence the c_ prefix.
        body.append(f"  chain c_{chain} {{\n    type filter hook {chain} priority -200; policy accept;\n"
                    + "".join(f"    {r}\n" for r in rules) + "  }")
    # "add; delete; define" in one file is one transaction: the old rules never coexist with none.
    header = f"add table bridge {TABLE}\ndelete table bridge {TABLE}\n"
    return header + f"table bridge {TABLE} {{\n" + "\n".join(body) + "\n}\n"


def apply(faults: list[Fault], topology: Topology, taps_of: TapsOf, log: EventLog = NULL_LOG) -> None:
    if not faults:
        clear(topology, log)
        return
    run(["nft", "-f", "-"], netns=topology.namespace, input_text=ruleset(faults, topology, taps_of), timeout=20,
        log=log)
    log("faults.applied", faults=[f.describe() for f in faults])


def clear(topology: Topology, log: EventLog = NULL_LOG) -> None:
    run(["nft", "-f", "-"], netns=topology.namespace, timeout=20, log=log,
        input_text=f"add table bridge {TABLE}\ndelete table bridge {TABLE}\n")
    log("faults.cleared")


def listing(topology: Topology) -> str:
    proc = run(["nft", "list", "table", "bridge", TABLE], netns=topology.namespace, timeout=20, check=False)
    return proc.stdout
