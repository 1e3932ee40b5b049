"""A raw AF_PACKET socket on one interface: send whole Ethernet frames, read the ones other hosts sent."""

from __future__ import annotations

import ctypes
import socket
import struct
import time
from collections.abc import Sequence

from hacontrol.adapters.network.namespace import open_socket
from hacontrol.agent.protocols import AdapterError

PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent: never evidence of another owner
SO_ATTACH_FILTER = 26
MAX_FRAMES_PER_WAIT = 10_000  # bounds a wait in count; its deadline bounds it in time

BpfProgram = Sequence[tuple[int, int, int, int]]


class RawLink:
    """Frames on ``ifname`` in ``netns``. ``ethertype`` 0 opens a send-only socket (it receives nothing)."""

    def __init__(self, netns: str | None, ifname: str, ethertype: int = 0, bpf: BpfProgram | None = None):
        self.ifname = ifname
        # Protocol 0 at creation queues nothing; the filter goes on before bind() selects the interface
        # and ethertype, so no unfiltered frame and no frame of another interface is ever queued.
        self._sock = open_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if bpf:
                _attach_filter(self._sock, bpf)
            self._sock.bind((ifname, ethertype))
        except OSError as exc:
            self._sock.close()
            raise AdapterError(f"cannot open a raw socket on {ifname}: {exc}") from exc

    def send(self, frame: bytes) -> None:
        try:
            self._sock.send(frame)
        except OSError as exc:
            raise AdapterError(f"cannot send on {self.ifname}: {exc}") from exc

    def receive(self, until: float) -> bytes | None:
        """The next frame another host sent, or None once ``until`` (monotonic) has passed."""
        for _ in range(MAX_FRAMES_PER_WAIT):
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                frame, address = self._sock.recvfrom(65535)
            except TimeoutError:
                return None
            except OSError as exc:
                raise AdapterError(f"cannot receive on {self.ifname}: {exc}") from exc
            if address[2] != PACKET_OUTGOING:
                return frame
        raise AdapterError(f"more than {MAX_FRAMES_PER_WAIT} of our own frames on {self.ifname} in one wait")

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attach_filter(sock: socket.socket, program: BpfProgram) -> None:
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }; the kernel copies the program.
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
