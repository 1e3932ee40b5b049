"""rigctl: the library behind vagrant/rig, the two-VM fault-injection rig (see vagrant/README.md).

Tests import it after putting vagrant/ on sys.path:  from rigctl import Rig
"""

from .driver import Rig
from .proc import RigError

__all__ = ["Rig", "RigError"]
