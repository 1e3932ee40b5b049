"""The tgt backend: the configured target model applied to tgtd (userspace iSCSI) through tgtadm.

tgt has no ALUA, so with it failover is VIP-only: both controllers keep the
same target configured at all times and the standby is simply unreachable.
Nothing here unmaps a LUN as part of failover; LUNs and targets are removed
only when the configuration no longer has them.

Modules: ``tgtadm`` (running tgtadm, secrets masked), ``commands`` (one
builder per tgtadm operation), ``snapshot`` (parsing ``--op show``),
``desired`` (configuration -> tgt model, and what tgt cannot do), ``plan``
(the pure diff), ``adapter`` (TgtTarget).
"""

from .adapter import ApplyReport, TgtTarget, TgtTargetPort, connections_on
from .plan import Known, Step, StepKind, diff
from .snapshot import TgtLun, TgtSnapshot, TgtTargetState
from .tgtadm import Command, Tgtadm, TgtadmError, TgtdUnreachable

__all__ = [
    "ApplyReport",
    "Command",
    "Known",
    "Step",
    "StepKind",
    "TgtLun",
    "TgtSnapshot",
    "TgtTarget",
    "TgtTargetPort",
    "TgtTargetState",
    "Tgtadm",
    "TgtadmError",
    "TgtdUnreachable",
    "connections_on",
    "diff",
]
