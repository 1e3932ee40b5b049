"""The guardian: a child of the agent that steps this controller down the moment the agent process ends.

systemd's ExecStopPost (``hactl local step-down``) does the same, but only after systemd has seen the death
and a new interpreter has imported the agent's modules: 14–26 s in three runs in the rig's TCG guests, where
``import hacontrol.agent.build`` alone took 9.5–13.3 s. All that time a controller whose agent died while it
was active still answers I/O and holds its addresses (with reservation fencing alone, the peer's takeover
waits for those addresses).

The agent forks the guardian once, at start, before it has built anything or started a thread, so the child
has every module imported already. The child waits on a pipe whose write end only the agent holds (the
descriptors are not inherited by anything the agent starts); the pipe reads end-of-file when the agent
process ends for any reason (SIGKILL, systemd's watchdog abort, a crash, a clean exit), and the guardian then
runs ``step_down`` (the plan ExecStopPost runs: own ports Standby, addresses removed after their connections
are cut, watchdog disarmed; it changes nothing on a controller that already serves nothing) and exits.

It ignores SIGTERM, SIGINT and SIGHUP: its life is bound to the agent's, not to signals meant for the agent
(``systemctl stop`` signals the main process only, KillMode=mixed). Something that kills the whole unit
(``systemctl kill``) ends it too; ExecStopPost remains the second line for that. A controller that loses
power runs neither; there the peer's fence is what counts, as always.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("hacontrol.guardian")

EXIT_OK = 0
EXIT_STEP_DOWN_FAILED = 1


class Guardian:
    """The parent's handle: the child's PID and the write end of the pipe that keeps the child waiting."""

    def __init__(self, pid: int, write_end: int) -> None:
        self.pid = pid
        self._write_end = write_end  # never written: held open until this process ends
        self.exit_status: int | None = None
        threading.Thread(target=self._reap, name="guardian-reaper", daemon=True).start()

    def _reap(self) -> None:
        """Collect the child's exit (no zombie) and say so: a guardian that ends while the agent runs leaves
        the step-down to ExecStopPost alone."""
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return
        self.exit_status = os.waitstatus_to_exitcode(status)
        log.error("guardian_exited", pid=self.pid, exit_status=self.exit_status,
                  detail="the agent's death is now handled by ExecStopPost only")


def start(step_down: Callable[[], bool]) -> Guardian:
    """Fork the guardian. Call it before any thread is started (a fork copies only the calling thread).
    ``step_down`` returns whether every step succeeded; it runs in the child only."""
    read_end, write_end = os.pipe()  # both close-on-exec: no child of the agent keeps the pipe open
    _flush()  # output buffered now would be written twice, once by each process
    pid = os.fork()
    if pid == 0:  # the guardian
        status = EXIT_STEP_DOWN_FAILED
        try:
            os.close(write_end)
            status = _guard(read_end, step_down)
        finally:
            _flush()  # os._exit drops buffers: the journal gets the guardian's lines first
            os._exit(status)  # never return into the agent's code, never run its atexit handlers
    os.close(read_end)
    log.info("guardian_started", pid=pid)
    return Guardian(pid, write_end)


def _guard(read_end: int, step_down: Callable[[], bool]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while os.read(read_end, 64):  # nothing is ever written; b"" is the agent's end
        pass
    log.warning("guardian_agent_ended", detail="the agent process ended: stepping this controller down")
    try:
        ok = step_down()
    except Exception as exc:  # the log is all that is left to tell
        log.error("guardian_step_down_failed", error=f"{type(exc).__name__}: {exc}")
        return EXIT_STEP_DOWN_FAILED
    return EXIT_OK if ok else EXIT_STEP_DOWN_FAILED


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing to keep
            pass
