"""The LIO backend: the configured target model on the Linux kernel target, with ALUA and port takeover.

Topology on each controller, for each ``[[target]]`` (evidence and figures in docs/lio.md):

* **this controller's port**: TPG tag = its node id, its relative target port id, enabled, portals on its
  ``[[node.portal]]`` addresses; its LUNs in ALUA group ``hac-node<own id>``;
* **the peer's port**: the peer's tag and relative port id, the same LUNs in group ``hac-node<peer id>``, the
  same ACLs and CHAP, portals on the peer's addresses, **disabled** (enabled only while this controller has
  adopted it). Because it exists, REPORT TARGET PORT GROUPS lists both groups with their ports from either
  controller (LIO omits groups without members), and adopting the peer's port is an enable, not a build;
* **a discovery-only TPG** (tag 65535, disabled) with the VIP portals: SendTargets answers there and lists
  both controllers' ports, logins through a VIP are refused (the VIP is a discovery address, not a path).

Every storage object (``hac-<lun name>``, same unit serial and NAA on both controllers) joins one LIO LU
group, so one configfs write switches a group's state on all LUNs. Implicit ALUA only.

Modules: ``names`` (tags, ids, names), ``model`` (snapshot and desired values), ``desired`` (configuration ->
model, and what LIO refuses), ``snapshot`` (configfs -> snapshot), ``plan`` (pure diff into units of steps
with undo), ``writer`` (rtslib-fb + configfs), ``apply`` (transaction and rollback), ``alua`` (fast switch),
``nft`` (allowed_networks), ``capacity`` (thin pool use), ``background``, ``takeover`` (port moves),
``port`` (LioPort).
"""

from .port import LioPort

__all__ = ["LioPort"]
