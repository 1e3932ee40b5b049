"""How configured things are named and numbered in LIO (pure). Both controllers compute the same values.

* **TPG tags** are the node ids: target port group tag ``N`` is controller ``N``'s port, on both controllers
  (the peer's is defined, disabled, on each one). The discovery-only TPG that holds the VIP portals takes tag
  :data:`DISCOVERY_TAG`, so no controller may have that id.
* **ALUA target port group ids** are the node ids too (``hac-node<id>``); they are per storage object in LIO,
  so every LUN carries both groups.
* **Relative target port ids** must be unique per controller across every enabled TPG of every target (the
  kernel keeps one table), so they are numbered per target: ``1 + 2 * target_index + rank``, rank 0 for the
  controller with the lower id. With one target and ids 1 and 2 that is the node id. Adding a target at the
  end never renumbers existing ports; reordering targets does (and briefly disables their TPGs).
* **Storage objects** are ``hac-<lun name>``: the prefix marks what the adapter owns (anything else in LIO is
  left alone), and LUN names must therefore be unique across targets.
"""

from __future__ import annotations

from hacontrol.config.schema import Config, Lun, Node

OWNED_PREFIX = "hac-"
LU_GROUP = "hacontrol"  # the LIO LU group every hacontrol storage object joins (one write switches them all)
DISCOVERY_TAG = 0xFFFF
GROUP_PREFIX = "hac-node"
MAX_RTPI = 0xFFFF


def so_name(lun: Lun) -> str:
    return OWNED_PREFIX + lun.name


def owned_so(name: str) -> bool:
    return name.startswith(OWNED_PREFIX)


def group_name(node: Node) -> str:
    return f"{GROUP_PREFIX}{node.id}"


def group_id(node: Node) -> int:
    return node.id


def tpg_tag(node: Node) -> int:
    return node.id


def rank(cfg: Config, node: Node) -> int:
    """0 for the controller with the lower id, 1 for the other."""
    return sorted(n.id for n in cfg.nodes).index(node.id)


def rtpi(cfg: Config, target_index: int, node: Node) -> int:
    return 1 + 2 * target_index + rank(cfg, node)


def portal_name(address: str, port: int) -> str:
    """The np directory name LIO uses: ``10.0.0.1:3260`` or ``[fd00::1]:3260``."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def split_portal(name: str) -> tuple[str, int]:
    host, _, port = name.rpartition(":")
    return host.strip("[]"), int(port)
