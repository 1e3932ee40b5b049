"""hacontrol: high-availability failover for dual-controller Linux iSCSI arrays.

Layout (docs/architecture.md): ``core`` decides (pure), ``adapters`` touch the
world, ``agent`` glues them in a loop, ``cli`` is hactl, ``lab`` is the local
lab, ``simulation`` is the model the core is proven against.
"""

__version__ = "0.1.0"
