"""The lean netlink dump parser behind Network.present (the real kernel's answers: tests/integration)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from hacontrol.adapters.network import dump
from hacontrol.agent.protocols import AdapterError


def attr(kind: int, value: bytes) -> bytes:
    raw = dump.RTATTR.pack(dump.RTATTR.size + len(value), kind) + value
    return raw + b"\0" * (dump._align(len(raw)) - len(raw))


def message(kind: int, payload: bytes) -> bytes:
    return dump.NLMSG.pack(dump.NLMSG.size + len(payload), kind, 2, 1, 0) + payload


def test_links_and_addresses_are_read_from_their_attributes():
    link = message(dump.RTM_NEWLINK, dump.IFINFO.pack(0, 1, 7, 0, 0) + attr(4, b"\x00" * 4)
                   + attr(dump.IFLA_IFNAME, b"eth1\0"))
    v4 = message(dump.RTM_NEWADDR, dump.IFADDR.pack(socket.AF_INET, 24, 0, 0, 7)
                 + attr(dump.IFA_ADDRESS, bytes([192, 0, 2, 99])) + attr(dump.IFA_LOCAL, bytes([192, 0, 2, 10])))
    v6 = message(dump.RTM_NEWADDR, dump.IFADDR.pack(socket.AF_INET6, 64, 0, 0, 7)
                 + attr(dump.IFA_ADDRESS, ipaddress.ip_address("2001:db8::10").packed))
    messages, done = dump.parse_messages(link + v4 + v6 + message(dump.NLMSG_DONE, struct.pack("=i", 0)))
    assert done and [k for k, _, _ in messages] == [dump.RTM_NEWLINK, dump.RTM_NEWADDR, dump.RTM_NEWADDR]
    (_, lb, la), (_, ab, aa), (_, cb, ca) = messages
    assert dump.link_name(lb, la) == (7, "eth1")
    assert dump.address(ab, aa) == (7, ipaddress.ip_interface("192.0.2.10/24"))  # IFA_LOCAL wins on IPv4
    assert dump.address(cb, ca) == (7, ipaddress.ip_interface("2001:db8::10/64"))


def test_a_refused_dump_is_an_adapter_error():
    with pytest.raises(AdapterError, match="EPERM"):
        dump.parse_messages(message(dump.NLMSG_ERROR, struct.pack("=i", -1) + b"\0" * 16))


def test_our_own_namespace_answers_with_loopback():
    assert ("lo", ipaddress.ip_interface("127.0.0.1/8")) in dump.configured(None)
