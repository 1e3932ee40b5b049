"""The chaos tests run on the VM rig: the session fixture `rig` and the rule that rig tests run only when asked
for (HACONTROL_RIG_TESTS=1, as vagrant/ci.sh does, or a path under tests/rig) come from tests/rig/conftest.py.
The invariant and report tests in this folder run everywhere."""

from tests.rig.conftest import (  # noqa: F401 - re-exported for this folder
    pytest_collection_modifyitems,
    pytest_runtest_makereport,
    pytest_runtest_setup,
    rig,
)
