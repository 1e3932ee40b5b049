"""ctypes bindings to libiscsi (1.19, /usr/include/iscsi/iscsi.h and scsi-lowlevel.h): declarations only.

Only the asynchronous API is bound: the probe drives ``iscsi_service`` from its own poll loop so that every
login and command has a deadline in milliseconds (the sync calls poll forever, see session.py).

Struct layouts mirror the installed headers for x86-64 (LP64, GCC). ``struct scsi_sense`` has three
``unsigned`` bitfields followed by an ``unsigned char``: GCC packs the char into the bitfields' storage unit
(offset 13) where ctypes would not, so the bitfields are declared as one byte (``flags``) by hand.
tests/unit/test_probe_libiscsi.py checks these offsets against the compiler and against libiscsi's own sense
parser.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# enum scsi_status (iscsi.h)
SCSI_STATUS_GOOD = 0
SCSI_STATUS_CHECK_CONDITION = 2
SCSI_STATUS_CONDITION_MET = 4
SCSI_STATUS_BUSY = 8
SCSI_STATUS_RESERVATION_CONFLICT = 0x18
SCSI_STATUS_TASK_SET_FULL = 0x28
SCSI_STATUS_ACA_ACTIVE = 0x30
SCSI_STATUS_TASK_ABORTED = 0x40
SCSI_STATUS_REDIRECT = 0x101
SCSI_STATUS_CANCELLED = 0x0F000000
SCSI_STATUS_ERROR = 0x0F000001
SCSI_STATUS_TIMEOUT = 0x0F000002

# enum iscsi_session_type, enum iscsi_header_digest
ISCSI_SESSION_DISCOVERY = 1
ISCSI_SESSION_NORMAL = 2
ISCSI_HEADER_DIGEST_NONE = 0

# enum scsi_xfer_dir (scsi-lowlevel.h)
SCSI_XFER_NONE = 0
SCSI_XFER_READ = 1
SCSI_XFER_WRITE = 2

# enum scsi_residual
SCSI_RESIDUAL_NO_RESIDUAL = 0
SCSI_RESIDUAL_UNDERFLOW = 1
SCSI_RESIDUAL_OVERFLOW = 2

SCSI_CDB_MAX_SIZE = 16


class ScsiSense(ctypes.Structure):
    """struct scsi_sense; ``flags`` holds sense_specific (bit 0), ill_param_in_cdb (1), bit_pointer_valid (2)."""

    _fields_ = [
        ("error_type", ctypes.c_ubyte),
        ("key", ctypes.c_int),
        ("ascq", ctypes.c_int),  # ASC << 8 | ASCQ
        ("flags", ctypes.c_ubyte),
        ("bit_pointer", ctypes.c_ubyte),
        ("field_pointer", ctypes.c_uint16),
    ]


class ScsiData(ctypes.Structure):
    """struct scsi_data (int size first: not the same layout as struct iscsi_data)."""

    _fields_ = [("size", ctypes.c_int), ("data", ctypes.POINTER(ctypes.c_ubyte))]


class ScsiIovector(ctypes.Structure):
    _fields_ = [
        ("iov", ctypes.c_void_p),
        ("niov", ctypes.c_int),
        ("nalloc", ctypes.c_int),
        ("offset", ctypes.c_size_t),
        ("consumed", ctypes.c_int),
    ]


class ScsiTask(ctypes.Structure):
    _fields_ = [
        ("status", ctypes.c_int),
        ("cdb_size", ctypes.c_int),
        ("xfer_dir", ctypes.c_int),
        ("expxferlen", ctypes.c_int),
        ("cdb", ctypes.c_ubyte * SCSI_CDB_MAX_SIZE),
        ("residual_status", ctypes.c_int),
        ("residual", ctypes.c_size_t),
        ("sense", ScsiSense),
        ("datain", ScsiData),
        ("mem", ctypes.c_void_p),
        ("ptr", ctypes.c_void_p),
        ("itt", ctypes.c_uint32),
        ("cmdsn", ctypes.c_uint32),
        ("lun", ctypes.c_uint32),
        ("iovector_in", ScsiIovector),
        ("iovector_out", ScsiIovector),
    ]


class IscsiData(ctypes.Structure):
    """struct iscsi_data: the data-out buffer handed to iscsi_scsi_command_async."""

    _fields_ = [("size", ctypes.c_size_t), ("data", ctypes.POINTER(ctypes.c_ubyte))]


TaskPtr = ctypes.POINTER(ScsiTask)

# typedef void (*iscsi_command_cb)(struct iscsi_context *, int status, void *command_data, void *private_data)
COMMAND_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

_ctx = ctypes.c_void_p
_str = ctypes.c_char_p
_int = ctypes.c_int

# name: (restype, argtypes)
_PROTOTYPES: dict[str, tuple[object, list[object]]] = {
    "iscsi_create_context": (_ctx, [_str]),
    "iscsi_destroy_context": (_int, [_ctx]),
    "iscsi_set_targetname": (_int, [_ctx, _str]),
    "iscsi_set_session_type": (_int, [_ctx, _int]),
    "iscsi_set_header_digest": (_int, [_ctx, _int]),
    "iscsi_set_initiator_username_pwd": (_int, [_ctx, _str, _str]),
    "iscsi_set_target_username_pwd": (_int, [_ctx, _str, _str]),
    "iscsi_set_noautoreconnect": (None, [_ctx, _int]),
    "iscsi_set_isid_oui": (_int, [_ctx, ctypes.c_uint32, ctypes.c_uint32]),
    "iscsi_set_timeout": (_int, [_ctx, _int]),
    "iscsi_get_error": (_str, [_ctx]),
    "iscsi_get_target_address": (_str, [_ctx]),
    "iscsi_get_fd": (_int, [_ctx]),
    "iscsi_which_events": (_int, [_ctx]),
    "iscsi_service": (_int, [_ctx, _int]),
    "iscsi_queue_length": (_int, [_ctx]),
    "iscsi_is_logged_in": (_int, [_ctx]),
    "iscsi_connect_async": (_int, [_ctx, _str, COMMAND_CB, ctypes.c_void_p]),
    "iscsi_login_async": (_int, [_ctx, COMMAND_CB, ctypes.c_void_p]),
    "iscsi_logout_async": (_int, [_ctx, COMMAND_CB, ctypes.c_void_p]),
    "iscsi_scsi_command_async": (_int, [_ctx, _int, TaskPtr, COMMAND_CB, ctypes.POINTER(IscsiData),
                                        ctypes.c_void_p]),
    "iscsi_scsi_cancel_task": (_int, [_ctx, TaskPtr]),
    "scsi_create_task": (TaskPtr, [_int, ctypes.POINTER(ctypes.c_ubyte), _int, _int]),
    "scsi_free_scsi_task": (None, [TaskPtr]),
    "scsi_parse_sense_data": (None, [ctypes.POINTER(ScsiSense), ctypes.POINTER(ctypes.c_ubyte)]),
    "scsi_sense_key_str": (_str, [_int]),
    "scsi_sense_ascq_str": (_str, [_int]),
}


class LibiscsiMissing(RuntimeError):
    """libiscsi (the shared library) is not installed."""


@functools.cache
def load() -> ctypes.CDLL:
    """The shared library with every prototype above declared; loaded on first use, not at import."""
    name = ctypes.util.find_library("iscsi") or "libiscsi.so.7"
    try:
        lib = ctypes.CDLL(name)
    except OSError as exc:
        raise LibiscsiMissing(f"cannot load libiscsi ({name}): install libiscsi7 / libiscsi-dev") from exc
    for symbol, (restype, argtypes) in _PROTOTYPES.items():
        func = getattr(lib, symbol)
        func.restype = restype
        func.argtypes = argtypes
    return lib
