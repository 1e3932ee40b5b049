"""iSCSI names, CHAP secrets and SCSI device identities: the rules initiators hold us to.

Pure functions that return an error text (or None), so the loader can name the
key and the fix.
"""

from __future__ import annotations

import re

MAX_ISCSI_NAME_BYTES = 223  # RFC 3720 §3.2.6.1
CHAP_MIN, CHAP_MAX = 12, 16  # what Windows, ESXi and LIO all accept (RFC 3720 asks ≥ 12 bytes for 96 bits)
LIO_OUI = "001405"  # the IEEE company id LIO puts in front of NAA identifiers

_IQN = re.compile(r"^iqn\.(\d{4})-(\d{2})\.([a-z0-9][a-z0-9.-]*[a-z0-9])(:[a-z0-9.:-]+)?$")
_EUI = re.compile(r"^eui\.[0-9A-Fa-f]{16}$")
_NAA = re.compile(r"^naa\.([0-9A-Fa-f]{16}|[0-9A-Fa-f]{32})$")


def iscsi_name_error(name: str) -> str | None:
    """Why ``name`` is not an iSCSI name an ESXi host would accept (RFC 3720/3721), or None."""
    if not isinstance(name, str) or not name:
        return "an iSCSI name is required"
    if len(name.encode()) > MAX_ISCSI_NAME_BYTES:
        return f"longer than {MAX_ISCSI_NAME_BYTES} bytes"
    if name.startswith(("eui.", "EUI.")):
        return None if _EUI.match(name) else "eui. names carry exactly 16 hex digits (eui.02004567A425678D)"
    if name.startswith(("naa.", "NAA.")):
        return None if _NAA.match(name) else "naa. names carry 16 or 32 hex digits (naa.52004567BA64678D)"
    if not name.startswith("iqn."):
        return "must start with iqn., eui. or naa."
    if name != name.lower():
        return "iqn. names are case-insensitive and must be written in lowercase"
    m = _IQN.match(name)
    if not m:
        return ("not of the form iqn.yyyy-mm.reversed.domain[:unique] using only a-z 0-9 - . : "
                "(example: iqn.2026-11.com.example:array1)")
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12:
        return f"month {month:02d} does not exist (the date is when the naming authority owned the domain)"
    if year < 1990:
        return f"year {year} predates the domain name system; use the year the domain was registered"
    labels = m.group(3).split(".")
    if any(not label for label in labels) or len(labels) < 2:
        return "the naming authority must be a reversed domain name such as com.example"
    return None


def chap_secret_error(secret: str) -> str | None:
    if not isinstance(secret, str):
        return "must be a string"
    n = len(secret)
    if not CHAP_MIN <= n <= CHAP_MAX:
        return f"is {n} characters; ESXi and other initiators interoperate only with {CHAP_MIN}–{CHAP_MAX}"
    if not secret.isprintable() or not secret.isascii() or " " in secret:
        return "must be printable ASCII without spaces"
    return None


def chap_userid_error(userid: str) -> str | None:
    if not isinstance(userid, str) or not userid:
        return "a CHAP user name is required with a secret"
    if len(userid) > 255 or not userid.isascii() or not userid.isprintable() or " " in userid:
        return "must be 1–255 printable ASCII characters without spaces"
    return None


def naa_from_serial(serial: str) -> str:
    """The NAA 6h identifier LIO reports for a unit serial (designator 0x83, type 3).

    LIO builds it from its company id followed by the first 25 hex digits
    found in the serial, zero-padded: two serials with the same hex digits
    give two LUNs the same identity, which ESXi treats as one device.
    """
    digits = "".join(ch for ch in serial.lower() if ch in "0123456789abcdef")[:25]
    return "naa.6" + LIO_OUI + digits.ljust(25, "0")


def serial_error(serial: str) -> str | None:
    if not isinstance(serial, str) or not serial:
        return "a unit serial is required (it is the LUN's identity on both controllers)"
    if len(serial) > 254 or not serial.isascii() or not serial.isprintable() or " " in serial:
        return "must be 1–254 printable ASCII characters without spaces"
    hexdigits = sum(ch in "0123456789abcdefABCDEF" for ch in serial)
    if hexdigits < 12:
        return (f"has only {hexdigits} hex digits; the NAA identity is derived from the hex digits, "
                "so use at least 12 (a uuid without dashes is a good serial)")
    return None
