"""The rig's layout (from topology.json) and where its files live.

Pure data: no I/O beyond reading topology.json. The Vagrantfile reads the same JSON, so the two launch paths
cannot disagree about names, MACs or addresses.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .proc import RigError

VAGRANT_DIR = Path(__file__).resolve().parent.parent
REPO = VAGRANT_DIR.parent
TOPOLOGY_FILE = Path(__file__).resolve().parent / "topology.json"


@dataclass(frozen=True)
class Network:
    name: str
    index: int
    cidr: ipaddress.IPv4Network
    host: str  # the rig namespace's own address on this network
    bridge: str
    dhcp: bool

    @property
    def prefix(self) -> int:
        return self.cidr.prefixlen

    @property
    def libvirt_name(self) -> str:
        return f"hacrig-{self.name}"


@dataclass(frozen=True)
class Node:
    name: str
    role: str  # "controller" | "initiator"
    host_id: int
    memory_mib: int
    networks: tuple[str, ...]
    domain: str  # libvirt domain / qemu -name

    def address(self, net: Network) -> str:
        return str(net.cidr.network_address + self.host_id)

    def mac(self, net: Network) -> str:
        # 52:54:00 is qemu's prefix; the last two bytes spell network index and host id so a MAC in a log
        # tells at once which NIC it is.
        return f"52:54:00:50:{net.index:02x}:{self.host_id:02x}"

    def tap(self, net: Network) -> str:
        # IFNAMSIZ is 16: "hr-ctrl-a-jbod" is 14 characters.
        return f"hr-{self.name}-{net.name}"[:15]


@dataclass(frozen=True)
class ZooKeeperLayout:
    network: str
    members: tuple[str, ...]
    client_port: int
    tick_ms: int
    min_session_ms: int
    max_session_ms: int

    @property
    def connect_string(self) -> str:
        return ",".join(f"{m}:{self.client_port}" for m in self.members)


@dataclass(frozen=True)
class JbodDisk:
    name: str
    size_mib: int


@dataclass(frozen=True)
class JbodLayout:
    network: str
    portal: str
    port: int
    target: str
    vendor: str
    product: str
    disks: tuple[JbodDisk, ...]


@dataclass(frozen=True)
class Topology:
    namespace: str
    iqn_prefix: str
    networks: dict[str, Network]
    nodes: dict[str, Node]
    zookeeper: ZooKeeperLayout
    jbod: JbodLayout
    vip_range: tuple[str, str]

    @property
    def controllers(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "controller"]

    @property
    def initiators(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.role == "initiator"]

    def node_iqn(self, node: Node) -> str:
        """The initiator name a guest uses (set at boot; the image itself has none)."""
        return f"{self.iqn_prefix}:{node.name}"

    @property
    def jbod_iqn(self) -> str:
        return f"{self.iqn_prefix}:{self.jbod.target}"

    def node(self, name: str) -> Node:
        if name not in self.nodes:
            raise RigError(f"unknown node {name!r}; the rig has {', '.join(self.nodes)}")
        return self.nodes[name]

    def peer_of(self, name: str) -> Node:
        others = [n for n in self.controllers if n.name != name]
        if self.node(name).role != "controller" or len(others) != 1:
            raise RigError(f"{name!r} is not one of the two controllers")
        return others[0]

    def kernel_args(self, node: Node) -> str:
        """Per-node identity on the kernel command line, read by the guest's hacrig-boot unit.

        The image is shared by every VM; this string is the only thing that makes a VM ctrl-a rather than
        ctrl-b, and it works the same under vagrant-libvirt (cmd_line) and plain qemu (-append).
        """
        parts = [f"hacrig.name={node.name}", f"hacrig.iqn={self.node_iqn(node)}"]
        for net_name in node.networks:
            net = self.networks[net_name]
            flags = ",dhcp" if net.dhcp else ""
            parts.append(f"hacrig.nic={node.mac(net)},{node.address(net)}/{net.prefix}{flags}")
        return " ".join(parts)


def _network(name: str, raw: dict) -> Network:
    return Network(name=name, index=raw["index"], cidr=ipaddress.IPv4Network(raw["cidr"]), host=raw["host"],
                   bridge=raw["bridge"], dhcp=raw["dhcp"])


def load_topology(path: Path = TOPOLOGY_FILE) -> Topology:
    raw = json.loads(path.read_text())
    prefix = raw["domain_prefix"]
    nodes = {
        name: Node(name=name, role=n["role"], host_id=n["host_id"], memory_mib=n["memory_mib"],
                   networks=tuple(n["networks"]), domain=f"{prefix}{name}")
        for name, n in raw["nodes"].items()
    }
    zk = raw["zookeeper"]
    jb = raw["jbod"]
    return Topology(
        namespace=raw["namespace"],
        iqn_prefix=raw["iqn_prefix"],
        networks={name: _network(name, n) for name, n in raw["networks"].items()},
        nodes=nodes,
        zookeeper=ZooKeeperLayout(network=zk["network"], members=tuple(zk["members"]),
                                  client_port=zk["client_port"], tick_ms=zk["tick_ms"],
                                  min_session_ms=zk["min_session_ms"], max_session_ms=zk["max_session_ms"]),
        jbod=JbodLayout(network=jb["network"], portal=jb["portal"], port=jb["port"], target=jb["target"],
                        vendor=jb["vendor"], product=jb["product"],
                        disks=tuple(JbodDisk(d["name"], d["size_mib"]) for d in jb["disks"])),
        vip_range=(raw["vip_range"][0], raw["vip_range"][1]),
    )


@dataclass(frozen=True)
class Paths:
    """Everything the rig writes. Only `cache` outlives `down`, and `logs` (kept for inspection)."""

    repo: Path
    run: Path  # <repo>/.rig
    cache: Path

    @classmethod
    def default(cls, repo: Path = REPO) -> Paths:
        cache = Path(os.environ.get("HACONTROL_RIG_CACHE", repo / ".cache" / "rig"))
        return cls(repo=repo, run=repo / ".rig", cache=cache)

    @property
    def state_file(self) -> Path:
        return self.run / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.run / "lock"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def vms(self) -> Path:
        return self.run / "vms"

    @property
    def zookeeper(self) -> Path:
        return self.run / "zookeeper"

    @property
    def jbod(self) -> Path:
        return self.run / "jbod"

    @property
    def libvirt(self) -> Path:
        return self.run / "libvirt"

    @property
    def pool(self) -> Path:
        return self.run / "pool"

    @property
    def vagrant_home(self) -> Path:
        return self.run / "vagrant.d"

    @property
    def vagrant_settings(self) -> Path:
        # Written by the driver, read by the Vagrantfile: box name, kernel, key, libvirt socket, accelerator.
        return self.run / "vagrant.json"

    @property
    def wheels(self) -> Path:
        return self.run / "wheels"
