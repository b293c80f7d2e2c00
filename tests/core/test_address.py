"""Address parsing and formatting: every accepted form, and a clear AddressError for the rest."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

import connecteur
from connecteur.address import TcpAddress, UnixAddress, format_address, parse_address

AddressError = connecteur.AddressError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9000", TcpAddress("127.0.0.1", 9000)),
        ("localhost:80", TcpAddress("localhost", 80)),
        ("example.com:65535", TcpAddress("example.com", 65535)),
        ("127.0.0.1:0", TcpAddress("127.0.0.1", 0)),  # port 0: the system picks a free port
        ("[::1]:8080", TcpAddress("::1", 8080)),
        ("[::]:0", TcpAddress("::", 0)),
        ("[2001:db8::1]:443", TcpAddress("2001:db8::1", 443)),
        ("[::ffff:127.0.0.1]:80", TcpAddress("::ffff:127.0.0.1", 80)),
        (":9000", TcpAddress("", 9000)),  # every interface
        (":0", TcpAddress("", 0)),
        ("unix:/tmp/connecteur.sock", UnixAddress("/tmp/connecteur.sock")),
        ("unix:/run/a b:c.sock", UnixAddress("/run/a b:c.sock")),
        (("127.0.0.1", 9000), TcpAddress("127.0.0.1", 9000)),
        (("localhost", 0), TcpAddress("localhost", 0)),
        (("", 80), TcpAddress("", 80)),
        (("::1", 8080, 0, 0), TcpAddress("::1", 8080)),
        (("::1", 0, 0, 0), TcpAddress("::1", 0)),
    ],
)
def test_accepted_forms(value: object, expected: TcpAddress | UnixAddress) -> None:
    assert parse_address(value) == expected


def test_a_parsed_address_passes_through() -> None:
    tcp = TcpAddress("127.0.0.1", 80)
    unix = UnixAddress("/tmp/s")
    assert parse_address(tcp) is tcp
    assert parse_address(unix) is unix


@pytest.mark.parametrize(
    "value",
    [
        "nohost",
        "",
        "host:99999",
        "host:65536",
        "host:abc",
        "host:",
        "host:-1",
        "host:+80",
        "host: 80",
        "host:8 0",
        "host:\u0663",  # ARABIC-INDIC DIGIT THREE: a digit, but not ASCII
        "::1:80",  # unbracketed IPv6
        "::1",
        "2001:db8::1:443",
        "[nothex]:80",
        "[127.0.0.1]:80",
        "[]:80",
        "[::1]",
        "[::1:80",
        "::1]:80",
        "unix:",
        "unix:/tmp/a\0b",
        80,
        None,
        b"127.0.0.1:80",
        ["127.0.0.1", 80],
        ("127.0.0.1",),
        ("127.0.0.1", 80, 0),
        ("127.0.0.1", "80"),
        (80, "127.0.0.1"),
        ("127.0.0.1", 65536),
        ("127.0.0.1", -1),
        ("127.0.0.1", True),
    ],
    ids=repr,
)
def test_bad_addresses_raise_address_error_naming_them(value: object) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, connecteur.ConnecteurError)
    assert repr(value) in str(info.value)


def test_unbracketed_ipv6_error_shows_the_fix() -> None:
    with pytest.raises(AddressError, match=r"\[::1\]:80"):
        parse_address("::1:80")


def test_bad_port_error_gives_the_range() -> None:
    with pytest.raises(AddressError, match="65535"):
        parse_address("host:99999")


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (TcpAddress("127.0.0.1", 80), "127.0.0.1:80"),
        (TcpAddress("::1", 80), "[::1]:80"),
        (TcpAddress("", 9000), ":9000"),
        (UnixAddress("/tmp/s"), "unix:/tmp/s"),
        (("127.0.0.1", 80), "127.0.0.1:80"),
        (("::1", 80, 0, 0), "[::1]:80"),  # what getpeername() gives for IPv6
        ("/tmp/s", "unix:/tmp/s"),  # what getpeername() gives for AF_UNIX
        ("unix:/tmp/s", "unix:/tmp/s"),
    ],
)
def test_format_address(address: object, text: str) -> None:
    assert format_address(address) == text


def test_format_address_of_anything_else_is_its_repr() -> None:
    assert format_address(None) == "None"
    assert format_address(b"\0abstract") == repr(b"\0abstract")


@pytest.mark.parametrize(
    "text", ["127.0.0.1:80", "example.com:0", "[::1]:8080", "[fe80::1]:1", ":9000", "unix:/tmp/x.sock"]
)
def test_canonical_text_round_trips(text: str) -> None:
    assert str(parse_address(text)) == text
    assert format_address(parse_address(text)) == text


hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True
)
hosts = st.one_of(
    hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.just(""),
)
ports = st.integers(min_value=0, max_value=65535)


@given(host=hosts, port=ports)
def test_any_tcp_address_round_trips_through_text(host: str, port: int) -> None:
    address = TcpAddress(host, port)
    assert parse_address(format_address(address)) == address
    assert parse_address((host, port)) == address
    assert parse_address(format_address((host, port))) == address


@given(host=st.ip_addresses(v=6), port=ports)
def test_ipv6_text_is_bracketed(host: ipaddress.IPv6Address, port: int) -> None:
    text = format_address((str(host), port, 0, 0))
    assert text == f"[{host}]:{port}"
    assert parse_address(text) == TcpAddress(str(host), port)


@given(path=st.text(min_size=1).filter(lambda p: "\0" not in p))
def test_any_unix_path_round_trips(path: str) -> None:
    address = UnixAddress(path)
    assert parse_address(format_address(address)) == address
    assert parse_address(f"unix:{path}") == address


@given(port=st.integers().filter(lambda p: not 0 <= p <= 65535))
def test_any_port_out_of_range_is_refused(port: int) -> None:
    with pytest.raises(AddressError):
        parse_address(f"host:{port}")
    with pytest.raises(AddressError):
        parse_address(("host", port))


def test_ipv6_scope_is_kept_from_a_string_and_from_a_tuple() -> None:
    assert parse_address("[fe80::1%eth0]:80") == TcpAddress("fe80::1%eth0", 80)
    assert parse_address(("fe80::1", 80, 0, 3)) == TcpAddress("fe80::1%3", 80)
    assert parse_address(("::1", 80, 0, 0)) == TcpAddress("::1", 80)
