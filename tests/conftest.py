import os
import signal

from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures_zk"]

# A shell without job control starts background commands with SIGINT ignored, and Python then keeps it
# ignored: Ctrl-C tests (whose children inherit it) and vagrant/ci.sh's `timeout --signal=INT` (which lets
# pytest print its report) would be deaf to it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("dev", max_examples=60, stateful_step_count=30, deadline=None)
settings.register_profile("ci", max_examples=300, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=3000, stateful_step_count=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
