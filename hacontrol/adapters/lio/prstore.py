"""The directory LIO writes its APTPL files into, served by the agent (FUSE), so that a PR-OUT completes only
once its state is where the next active reads it.

LIO writes a LUN's whole PR state to ``<dbroot>/pr/aptpl_<serial>`` (force_pr_aptpl) before it completes the
PERSISTENT RESERVE OUT that changed it, with one ``kernel_write`` of the text and its terminating NUL
(``__core_scsi3_write_aptpl_to_file``); if the write fails, the command fails (CHECK CONDITION, LOGICAL UNIT
COMMUNICATION FAILURE), it is not acknowledged. This module mounts a small FUSE file system on that directory
and answers the kernel itself: the write that ends a file (its data ends with the NUL) is answered only after
``on_complete(name, text)`` returned, which on the active writes the state to ZooKeeper under its epoch
(prsync.py). If that raises, the write fails with EIO, and so does the PR-OUT.

Fail closed: a read-only tmpfs is mounted under the FUSE mount once (it stays when the agent ends). While no
agent serves the directory, LIO's writes fail: ENOTCONN on the dead agent's mount, EROFS on the tmpfs after the
next agent detached that one; no PR-OUT is acknowledged that no agent saw.

The files are kept in memory and copied to ``backing`` (a directory under /run: they survive an agent restart,
not a reboot, as LIO's own state does). Only what LIO needs is served: one flat directory of regular files
(lookup, create, open with O_TRUNC, write, read, truncate, unlink, rename, readdir, statfs).

The kernel protocol is include/uapi/linux/fuse.h (protocol 7, structures as of minor 31); the mount is done
with mount(8) and the options fusermount would pass (the agent runs as root).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("hacontrol.lio")

FSTYPE = "fuse.hacontrol-pr"
FUSE_SOURCE = "hacontrol-pr"
BASE_SOURCE = "hacontrol-pr-base"
MAX_WRITE = 128 * 1024
_BUFFER = MAX_WRITE + 64 * 1024
ROOT = 1

# opcodes (fuse.h)
LOOKUP, FORGET, GETATTR, SETATTR = 1, 2, 3, 4
UNLINK, RENAME, OPEN, READ, WRITE, STATFS, RELEASE, FSYNC = 10, 12, 14, 15, 16, 17, 18, 20
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS, CREATE, INTERRUPT, DESTROY = (
    25, 26, 27, 28, 29, 30, 34, 35, 36, 38)
BATCH_FORGET, RENAME2 = 42, 45
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
REFUSED = {5, 6, 8, 9, 11, 13, 43}  # readlink, symlink, mknod, mkdir, rmdir, link, fallocate: not here

IN_HEADER = struct.Struct("<IIQQIIII")  # len, opcode, unique, nodeid, uid, gid, pid, padding
OUT_HEADER = struct.Struct("<IiQ")  # len, error (negative errno), unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY_OUT = struct.Struct("<QQQQII")  # + attr
ATTR_OUT = struct.Struct("<QII")  # + attr
OPEN_OUT = struct.Struct("<QII")
WRITE_IN = struct.Struct("<QQIIQII")
READ_IN = WRITE_IN
SETATTR_IN = struct.Struct("<IIQQQQQQIIIIIIII")
INIT_IN = struct.Struct("<IIII")
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")
STATFS_OUT = struct.Struct("<QQQQQIIII6I")
DIRENT = struct.Struct("<QQII")
FATTR_SIZE = 1 << 3
FUSE_ATOMIC_O_TRUNC, FUSE_BIG_WRITES = 1 << 3, 1 << 5
FOPEN_DIRECT_IO = 1


class StoreError(Exception):
    pass


def host_namespace() -> list[str]:
    """The prefix that runs a command in the mount namespace LIO resolves ``<dbroot>/pr`` in: the kernel's
    threads use PID 1's. [] when this process is in it already; under systemd's sandboxing (ProtectSystem= and
    the like give the unit a namespace of its own, whose mounts do not reach PID 1's) nsenter(1) enters it,
    which needs CAP_SYS_PTRACE (to open /proc/1/ns/mnt), CAP_SYS_CHROOT and CAP_SYS_ADMIN, and a unit that
    allows setns into a mount namespace."""
    try:
        if os.readlink("/proc/self/ns/mnt") == os.readlink("/proc/1/ns/mnt"):
            return []
    except OSError as exc:  # PID 1 is not ours to look at: fine only if this namespace is not a sandbox's copy
        if _slave_root():
            raise StoreError(f"this process has a mount namespace of its own and cannot enter PID 1's "
                             f"({exc.strerror}): a mount here would not reach LIO; fix: give the unit "
                             "CAP_SYS_PTRACE and CAP_SYS_CHROOT (systemd/hacontrol.service)") from exc
        return []
    return ["nsenter", "--mount=/proc/1/ns/mnt", "--"]


def _slave_root() -> bool:
    """Whether / here receives its mounts from another namespace (systemd's sandboxing makes such a copy)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.partition(" - ")[0].split()
            if len(fields) > 4 and fields[4] == "/":
                return any(tag.startswith("master:") for tag in fields[6:])
    return False


def _run(argv: list[str], what: str, fds: tuple[int, ...] = ()) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, pass_fds=fds, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StoreError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise StoreError(f"{what}: {' '.join(argv)}: {(done.stderr or done.stdout).strip()}")


def _mount(source: str, target: str, fstype: str, opts: str, *, enter: list[str], fds: tuple[int, ...] = ()) -> None:
    """mount(8) without helpers (in PID 1's namespace when ``enter`` says so); a FUSE mount's ``fd=N`` names
    the agent's /dev/fuse descriptor, passed on to mount(8) under the same number."""
    _run([*enter, "mount", "-i", "-n", "-t", fstype, "-o", opts, source, target], f"mount {fstype}", fds)


def _detach(target: str, enter: list[str]) -> None:
    _run([*enter, "umount", "-l", "-n", target], f"umount {target}")


def ours(mount: tuple[str, str]) -> bool:
    """A served directory's mount (mountinfo may show its type as "fuse" or "fuse.hacontrol-pr")."""
    return mount[0].startswith("fuse") and mount[1] == FUSE_SOURCE


def mounts_at(path: str, pid: str = "self") -> list[tuple[str, str]]:
    """(fstype, source) of every mount on ``path`` in ``pid``'s mount namespace, bottom first (mountinfo's order)."""
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == path:
                fstype, source = [*right.split(), "", ""][:2]
                out.append((fstype, source))
    return out


class PrStore:
    """A flat directory of files served from memory; ``on_complete`` decides whether a finished write stands."""

    def __init__(self, mountpoint: Path, backing: Path | None,
                 on_complete: Callable[[str, str], None] | None = None) -> None:
        self.mountpoint = Path(mountpoint)
        self.backing = backing
        self.on_complete = on_complete
        self._files: dict[str, bytearray] = {}
        self._ino: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._next_ino = ROOT + 1
        self._lock = threading.Lock()
        self._fd = -1
        self._enter: list[str] = []
        self._thread: threading.Thread | None = None
        self.completed = 0  # writes answered after on_complete returned (figures, tests)
        self.refused = 0  # writes answered EIO because on_complete raised

    # -- the agent's own view (no kernel round trip) --------------------------------------------------------------

    def files(self) -> dict[str, str]:
        with self._lock:
            return {name: _text(data) for name, data in self._files.items()}

    def put(self, name: str, text: str) -> None:
        """Write a file as the agent (a state loaded at a takeover): no ``on_complete``."""
        with self._lock:
            self._node(name)
            self._files[name] = bytearray(text.encode() + b"\0")
            self._save(name)

    # -- lifetime ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Mount (over the read-only base, after detaching a dead agent's mount) and serve in a thread."""
        target = str(self.mountpoint)
        enter = self._enter = host_namespace()
        where = "1" if enter else "self"
        for _ in range(8):  # earlier agents' mounts (ENOTCONN once they died), each detached once (bounded)
            stack = mounts_at(target, where)
            if not stack or not ours(stack[-1]):
                break
            _detach(target, enter)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"/dev/fuse: {exc.strerror} (is the fuse module loaded?)") from exc
        try:
            stack = mounts_at(target, where)
            if not stack or stack[-1] != ("tmpfs", BASE_SOURCE):
                _mount(BASE_SOURCE, target, "tmpfs", "ro,nosuid,nodev,noexec,size=4k,mode=0700", enter=enter)
            self._load_backing()
            _mount(FUSE_SOURCE, target, FSTYPE, f"nosuid,nodev,noexec,fd={fd},rootmode=40000,user_id=0,group_id=0,"
                   "allow_other", enter=enter, fds=(fd,))
        except (StoreError, OSError):
            os.close(fd)
            raise
        self._fd = fd
        self._thread = threading.Thread(target=self._serve, name="pr-store", daemon=True)
        self._thread.start()
        log.info("lio_pr_store_mounted", path=target, files=len(self._files))

    def stop(self, timeout_s: float = 2.0) -> None:
        """Detach the mount (LIO's writes then fail on the read-only base) and end the thread."""
        if self._fd < 0:
            return
        with contextlib.suppress(StoreError):
            _detach(str(self.mountpoint), self._enter)
        if self._thread is not None:
            self._thread.join(timeout_s)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1

    # -- the kernel's requests -------------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                msg = os.read(self._fd, _BUFFER)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted before it was read
                    continue
                return  # ENODEV: unmounted
            if len(msg) < IN_HEADER.size:
                continue
            _len, opcode, unique, node, *_ = IN_HEADER.unpack_from(msg)
            body = memoryview(msg)[IN_HEADER.size:]
            if opcode in NO_REPLY:
                continue
            try:
                reply = self._handle(opcode, node, body)
                self._reply(unique, 0, reply)
            except OSError as exc:
                self._reply(unique, exc.errno or errno.EIO, b"")
            except Exception as exc:  # a bug here must not hang LIO: fail the one request
                log.error("lio_pr_store_request_failed", opcode=opcode, error=repr(exc))
                self._reply(unique, errno.EIO, b"")
            if opcode == DESTROY:
                return

    def _reply(self, unique: int, err: int, payload: bytes) -> None:
        with contextlib.suppress(OSError):  # ENOENT: the kernel gave the request up (interrupted)
            os.write(self._fd, OUT_HEADER.pack(OUT_HEADER.size + len(payload), -err, unique) + payload)

    def _handle(self, opcode: int, node: int, body: memoryview) -> bytes:
        if opcode == INIT:
            major, minor, readahead, _flags = INIT_IN.unpack_from(body)
            if major != 7:
                raise OSError(errno.EPROTO, "FUSE protocol")
            return INIT_OUT.pack(7, min(minor, 31), readahead, FUSE_ATOMIC_O_TRUNC | FUSE_BIG_WRITES, 16, 12,
                                 MAX_WRITE, 1, 0, 0, 0, *([0] * 7))
        if opcode in (DESTROY, ACCESS, FSYNC, FSYNCDIR, FLUSH, RELEASEDIR, RELEASE):
            return b""
        if opcode in REFUSED:
            raise OSError(errno.EPERM, "not supported")
        with self._lock:
            if opcode == LOOKUP:
                return self._entry(_name(body))
            if opcode == GETATTR:
                return ATTR_OUT.pack(0, 0, 0) + self._attr(node)
            if opcode == SETATTR:
                return self._setattr(node, body)
            if opcode == OPENDIR:
                return OPEN_OUT.pack(0, 0, 0)
            if opcode == OPEN:
                name = self._name_of(node)
                if struct.unpack_from("<I", body)[0] & os.O_TRUNC:  # FUSE_ATOMIC_O_TRUNC: LIO opens with it
                    self._files[name] = bytearray()
                return OPEN_OUT.pack(0, FOPEN_DIRECT_IO, 0)
            if opcode == CREATE:
                name = _name(body[16:])
                if name not in self._files:
                    self._node(name)
                    self._files[name] = bytearray()
                return self._entry(name) + OPEN_OUT.pack(0, FOPEN_DIRECT_IO, 0)
            if opcode == READ:
                _fh, offset, size, *_ = READ_IN.unpack_from(body)
                return bytes(self._files[self._name_of(node)][offset:offset + size])
            if opcode == READDIR:
                _fh, offset, size, *_ = READ_IN.unpack_from(body)
                return self._readdir(offset, size)
            if opcode == UNLINK:
                self._unlink(_name(body))
                return b""
            if opcode in (RENAME, RENAME2):
                return self._rename(opcode, body)
            if opcode == STATFS:
                return STATFS_OUT.pack(1024, 1024, 1024, 1024, 1024, 4096, 255, 4096, 0, *([0] * 6))
        if opcode == WRITE:
            return self._write(node, body)
        raise OSError(errno.ENOSYS, "not implemented")

    def _write(self, node: int, body: memoryview) -> bytes:
        _fh, offset, size, *_ = WRITE_IN.unpack_from(body)
        data = bytes(body[WRITE_IN.size:WRITE_IN.size + size])
        with self._lock:
            name = self._name_of(node)
            content = self._files[name]
            if len(content) < offset:
                content.extend(b"\0" * (offset - len(content)))
            content[offset:offset + len(data)] = data
            ended = data.endswith(b"\0")
            text = _text(content)
            self._save(name)
        if ended and self.on_complete is not None:  # outside the lock: it may wait on ZooKeeper
            try:
                self.on_complete(name, text)
            except Exception as exc:
                self.refused += 1
                log.error("lio_pr_write_refused", file=name, error=str(exc),
                          detail="the PR-OUT that wrote it fails (not acknowledged)")
                raise OSError(errno.EIO, str(exc)) from exc
            self.completed += 1
        return struct.pack("<II", len(data), 0)

    def _setattr(self, node: int, body: memoryview) -> bytes:
        valid, _pad, _fh, size, *_ = SETATTR_IN.unpack_from(body)
        if valid & FATTR_SIZE and node != ROOT:
            name = self._name_of(node)
            content = self._files[name]
            if size < len(content):
                del content[size:]
            else:
                content.extend(b"\0" * (size - len(content)))
            self._save(name)
        return ATTR_OUT.pack(0, 0, 0) + self._attr(node)

    def _rename(self, opcode: int, body: memoryview) -> bytes:
        newdir = struct.unpack_from("<Q", body)[0]
        names = bytes(body[8 if opcode == RENAME else 16:]).split(b"\0")
        old, new = names[0].decode(), names[1].decode()
        if newdir != ROOT:
            raise OSError(errno.EXDEV, "one directory")
        if old not in self._files:
            raise OSError(errno.ENOENT, old)
        self._files[new] = self._files.pop(old)
        self._names.pop(self._ino.pop(old))
        self._node(new)
        self._save(new)
        self._drop_backing(old)
        return b""

    def _unlink(self, name: str) -> None:
        if name not in self._files:
            raise OSError(errno.ENOENT, name)
        del self._files[name]
        self._drop_backing(name)

    def _readdir(self, offset: int, size: int) -> bytes:
        entries = [(ROOT, ".", stat.S_IFDIR), (ROOT, "..", stat.S_IFDIR)]
        entries += [(self._ino[n], n, stat.S_IFREG) for n in sorted(self._files)]
        out = b""
        for index in range(offset, len(entries)):
            ino, name, kind = entries[index]
            raw = name.encode()
            entry = DIRENT.pack(ino, index + 1, len(raw), kind >> 12) + raw
            entry += b"\0" * (-len(entry) % 8)
            if len(out) + len(entry) > size:
                break
            out += entry
        return out

    # -- names and attributes --------------------------------------------------------------------------------------

    def _node(self, name: str) -> int:
        if "/" in name or name in ("", ".", ".."):
            raise OSError(errno.EINVAL, name)
        if name not in self._ino:
            self._ino[name] = self._next_ino
            self._names[self._next_ino] = name
            self._next_ino += 1
        return self._ino[name]

    def _name_of(self, node: int) -> str:
        name = self._names.get(node)
        if name is None or name not in self._files:
            raise OSError(errno.ENOENT, "gone")
        return name

    def _entry(self, name: str) -> bytes:
        if name not in self._files:
            raise OSError(errno.ENOENT, name)
        node = self._node(name)
        return ENTRY_OUT.pack(node, 0, 0, 0, 0, 0) + self._attr(node)

    def _attr(self, node: int) -> bytes:
        now = int(time.time())
        if node == ROOT:
            return ATTR.pack(ROOT, 0, 0, now, now, now, 0, 0, 0, stat.S_IFDIR | 0o700, 2, 0, 0, 0, 4096, 0)
        size = len(self._files[self._name_of(node)])
        return ATTR.pack(node, size, (size + 511) // 512, now, now, now, 0, 0, 0, stat.S_IFREG | 0o600, 1, 0, 0,
                         0, 4096, 0)

    # -- the copy under /run ---------------------------------------------------------------------------------------

    def _load_backing(self) -> None:
        if self.backing is None:
            return
        self.backing.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock:
            for path in sorted(self.backing.iterdir()):
                if path.is_file() and not path.name.endswith(".tmp"):
                    self._node(path.name)
                    self._files[path.name] = bytearray(path.read_bytes())

    def _save(self, name: str) -> None:
        if self.backing is None:
            return
        tmp = self.backing / f"{name}.tmp"
        try:
            tmp.write_bytes(bytes(self._files[name]))
            os.replace(tmp, self.backing / name)
        except OSError as exc:
            log.warning("lio_pr_store_backing_unwritten", file=name, error=str(exc))

    def _drop_backing(self, name: str) -> None:
        if self.backing is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.backing / name)


def _name(body: memoryview) -> str:
    return bytes(body).split(b"\0", 1)[0].decode()


def _text(data: bytes | bytearray) -> str:
    return bytes(data).split(b"\0", 1)[0].decode(errors="replace")
