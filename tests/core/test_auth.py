"""The sans-I/O authkey handshake: two Authenticators pumped against each other, vectors, hostile input.

No sockets: bytes move between a server side and a client side through
`data_to_send()` and `receive()`, cut anywhere. Wire vectors are computed here
with `hmac` from the protocol's description, independently of `_auth`.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import io
import re
import struct
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import connecteur
from connecteur import AuthenticationError, aio, cli
from connecteur._auth import Authenticator
from connecteur.framing import LengthPrefixed
from tests.support import cuts, one_byte_at_a_time

KEY = b"the shared secret \xf0\x9f\x94\x91"
OTHER_KEY = b"not the shared secret"
NONCE = bytes(range(40))
LEGACY_NONCE = bytes(range(100, 120))
FRAMING = LengthPrefixed("!I")
APP_DATA = FRAMING.encode(b"first message") + FRAMING.encode(b"x" * 1000) + b"\x00\x00\x01"
"""What a client sends right after its welcome: two messages (one over 256 bytes) and the start of a third."""

Cut = Callable[[bytes], Iterable[bytes]]


def frame(message: bytes) -> bytes:
    return FRAMING.encode(message)


def whole(data: bytes) -> Iterable[bytes]:
    return [data]


def pump(server: Authenticator, client: Authenticator, cut: Cut = whole, app_data: bytes = b"") -> None:
    """Move bytes both ways until neither side has any to send; the client adds `app_data` once done."""
    sent_app_data = False
    while True:
        to_client, to_server = server.data_to_send(), client.data_to_send()
        if client.is_done and not sent_app_data:
            to_server, sent_app_data = to_server + app_data, True
        if not to_client and not to_server:
            return
        for piece in cut(to_client):
            client.receive(piece)
        for piece in cut(to_server):
            server.receive(piece)


def sha256_response(key: bytes, challenge: bytes) -> bytes:
    return b"{sha256}" + hmac.new(key, challenge, "sha256").digest()


# --- the handshake between two Authenticators --------------------------------------


@pytest.mark.parametrize("allow_legacy", [False, True])
def test_the_same_key_authenticates_both_sides(allow_legacy: bool) -> None:
    """Both sides end done, nothing left to send, no leftover."""
    server = Authenticator(KEY, server_side=True, allow_legacy=allow_legacy)
    client = Authenticator(KEY, server_side=False, allow_legacy=allow_legacy)
    assert (server.is_done, client.is_done) == (False, False)
    pump(server, client)
    assert (server.is_done, client.is_done) == (True, True)
    assert server.leftover() == client.leftover() == b""


def test_different_keys_fail_on_the_server_then_the_client() -> None:
    """The server rejects the response and queues #FAILURE#; the client raises on #FAILURE#."""
    server = Authenticator(KEY, server_side=True)
    client = Authenticator(OTHER_KEY, server_side=False)
    client.receive(server.data_to_send())
    with pytest.raises(AuthenticationError, match="keys differ"):
        server.receive(client.data_to_send())
    failure = server.data_to_send()
    assert failure == frame(b"#FAILURE#")
    with pytest.raises(AuthenticationError, match="rejected our response"):
        client.receive(failure)
    assert not server.is_done and not client.is_done


def test_a_wrong_answer_to_the_client_fails_on_the_client_then_the_server() -> None:
    """The client verifies second: a bad server response makes it queue #FAILURE#, and the server raises on it."""
    server = Authenticator(KEY, server_side=True)
    client = Authenticator(KEY, server_side=False)
    client.receive(server.data_to_send())  # challenge
    server.receive(client.data_to_send())  # response
    client.receive(server.data_to_send())  # welcome
    server.receive(client.data_to_send())  # client's challenge
    response = bytearray(server.data_to_send())
    response[-1] ^= 1
    with pytest.raises(AuthenticationError, match="keys differ"):
        client.receive(response)
    assert client.data_to_send() == frame(b"#FAILURE#")
    with pytest.raises(AuthenticationError, match="rejected our response"):
        server.receive(frame(b"#FAILURE#"))


def test_a_failed_side_keeps_failing() -> None:
    """After a failure, receive() raises again and receive_eof() too."""
    client = Authenticator(KEY, server_side=False)
    with pytest.raises(AuthenticationError):
        client.receive(frame(b"garbage"))
    with pytest.raises(AuthenticationError, match="already failed"):
        client.receive(frame(b"#CHALLENGE#" + bytes(40)))
    with pytest.raises(AuthenticationError, match="already failed"):
        client.receive_eof()


@pytest.mark.parametrize("cut", [whole, one_byte_at_a_time], ids=["whole", "one byte at a time"])
def test_leftover_is_the_application_data_unchanged(cut: Cut) -> None:
    """Bytes after the client's welcome, a message over 256 bytes among them, come back as they were sent."""
    server = Authenticator(KEY, server_side=True)
    client = Authenticator(KEY, server_side=False)
    pump(server, client, cut, APP_DATA)
    assert server.is_done and client.is_done
    assert server.leftover() == APP_DATA
    assert server.leftover() == b""  # taken


@given(st.data())
def test_any_cut_authenticates_and_keeps_the_leftover(data: st.DataObject) -> None:
    """Every message cut into pieces of any size from 1 byte: the same outcome."""
    server = Authenticator(KEY, server_side=True)
    client = Authenticator(KEY, server_side=False)
    pump(server, client, lambda chunk: cuts(chunk, data, max_piece=50), APP_DATA)
    assert server.is_done and client.is_done
    assert server.leftover() == APP_DATA


@given(st.data())
def test_any_cut_fails_with_different_keys(data: st.DataObject) -> None:
    """Random cuts do not change who rejects: the server, first, with #FAILURE# queued."""
    server = Authenticator(KEY, server_side=True)
    client = Authenticator(OTHER_KEY, server_side=False)
    with pytest.raises(AuthenticationError, match="keys differ"):
        pump(server, client, lambda chunk: cuts(chunk, data, max_piece=50))
    assert server.data_to_send() == frame(b"#FAILURE#")


def test_bytes_received_once_done_go_to_the_leftover() -> None:
    """The caller may keep feeding after is_done: the bytes join leftover(), in order."""
    server = Authenticator(KEY, server_side=True)
    client = Authenticator(KEY, server_side=False)
    pump(server, client)
    client.receive(b"abc")
    client.receive(memoryview(b"def"))
    assert client.leftover() == b"abcdef"
    client.receive_eof()  # the application's business now: no error


# --- vectors ------------------------------------------------------------------------


def test_the_server_challenge_vector() -> None:
    """A server sends #CHALLENGE#{sha256} and 40 bytes as soon as it exists."""
    server = Authenticator(KEY, server_side=True, _nonce=NONCE)
    assert server.data_to_send() == frame(b"#CHALLENGE#{sha256}" + NONCE)
    assert server.data_to_send() == b""


def test_the_client_sends_nothing_first() -> None:
    assert Authenticator(KEY, server_side=False).data_to_send() == b""


def test_the_sha256_response_vector() -> None:
    """The response is {sha256} + HMAC-SHA256 of the whole challenge, prefix included."""
    challenge = b"{sha256}" + NONCE
    client = Authenticator(KEY, server_side=False)
    client.receive(frame(b"#CHALLENGE#" + challenge))
    assert client.data_to_send() == frame(sha256_response(KEY, challenge))


def test_the_server_accepts_the_sha256_vector_and_welcomes() -> None:
    server = Authenticator(KEY, server_side=True, _nonce=NONCE)
    server.data_to_send()
    server.receive(frame(sha256_response(KEY, b"{sha256}" + NONCE)))
    assert server.data_to_send() == frame(b"#WELCOME#")
    assert not server.is_done  # its own answer is still to come


@pytest.mark.parametrize("name", ["sha384", "sha3_256", "sha3_384"])
def test_the_other_modern_digests_are_answered(name: str) -> None:
    """A peer may ask for any digest Python 3.12 allows: the answer uses it."""
    challenge = b"{%s}%s" % (name.encode(), NONCE)
    client = Authenticator(KEY, server_side=False)
    client.receive(frame(b"#CHALLENGE#" + challenge))
    digest = hmac.new(KEY, challenge, name).digest()
    assert client.data_to_send() == frame(b"{%s}%s" % (name.encode(), digest))


@pytest.mark.parametrize("name", ["sha384", "sha3_256", "sha3_384"])
def test_the_server_accepts_a_response_with_another_modern_digest(name: str) -> None:
    """The MAC covers our {sha256} prefix, so the peer's choice of digest cannot downgrade it."""
    server = Authenticator(KEY, server_side=True, _nonce=NONCE)
    digest = hmac.new(KEY, b"{sha256}" + NONCE, name).digest()
    server.receive(frame(b"{%s}%s" % (name.encode(), digest)))
    assert server.data_to_send().endswith(frame(b"#WELCOME#"))


def test_the_legacy_md5_vectors() -> None:
    """A 20-byte challenge is answered with the raw HMAC-MD5; a raw HMAC-MD5 response is verified."""
    client = Authenticator(KEY, server_side=False, allow_legacy=True)
    client.receive(frame(b"#CHALLENGE#" + LEGACY_NONCE))
    response = client.data_to_send()
    assert response == frame(hmac.new(KEY, LEGACY_NONCE, "md5").digest())
    assert response.hex() == "00000010" + "f96c74071a48330b0ff0d47dbe5437bd"  # pinned: no {md5} prefix, 16 bytes
    server = Authenticator(KEY, server_side=True, allow_legacy=True, _nonce=NONCE)
    server.data_to_send()
    server.receive(frame(hmac.new(KEY, b"{sha256}" + NONCE, "md5").digest()))
    assert server.data_to_send() == frame(b"#WELCOME#")


# --- legacy forms -------------------------------------------------------------------


def test_a_legacy_challenge_is_refused_by_default() -> None:
    client = Authenticator(KEY, server_side=False)
    with pytest.raises(AuthenticationError, match=r"legacy 20-byte HMAC-MD5 challenge.*allow_legacy_auth=True"):
        client.receive(frame(b"#CHALLENGE#" + LEGACY_NONCE))
    assert client.data_to_send() == b""  # the answering side just closes, as multiprocessing does


def test_a_legacy_response_is_refused_by_default_with_failure_queued() -> None:
    server = Authenticator(KEY, server_side=True, _nonce=NONCE)
    server.data_to_send()
    with pytest.raises(AuthenticationError, match="legacy HMAC-MD5; pass allow_legacy_auth=True"):
        server.receive(frame(hmac.new(KEY, b"{sha256}" + NONCE, "md5").digest()))
    assert server.data_to_send() == frame(b"#FAILURE#")


def test_the_legacy_hint_names_the_real_parameter_and_option() -> None:
    """The refusal says what to pass, and every public entry point takes it (it named allow_legacy, which none does)."""
    client = Authenticator(KEY, server_side=False)
    with pytest.raises(AuthenticationError) as info:
        client.receive(frame(b"#CHALLENGE#" + LEGACY_NONCE))
    named = re.search(r"pass (\w+)=True \((--[\w-]+) on the command line\)", str(info.value))
    assert named is not None, str(info.value)
    parameter, option = named.groups()
    for entry in (connecteur.connect, connecteur.Server, aio.connect, aio.serve):
        assert parameter in inspect.signature(entry).parameters, entry
    for command in ("serve", "send", "chat"):
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert cli.main([command, "--help"]) == 0
        assert option in out.getvalue(), command


def test_an_md5_prefixed_challenge_needs_allow_legacy() -> None:
    challenge = b"{md5}" + NONCE
    with pytest.raises(AuthenticationError, match=r"legacy digest md5.*allow_legacy"):
        Authenticator(KEY, server_side=False).receive(frame(b"#CHALLENGE#" + challenge))
    client = Authenticator(KEY, server_side=False, allow_legacy=True)
    client.receive(frame(b"#CHALLENGE#" + challenge))
    assert client.data_to_send() == frame(b"{md5}" + hmac.new(KEY, challenge, "md5").digest())


def test_an_md5_prefixed_response_needs_allow_legacy() -> None:
    response = frame(b"{md5}" + hmac.new(KEY, b"{sha256}" + NONCE, "md5").digest())
    server = Authenticator(KEY, server_side=True, _nonce=NONCE)
    with pytest.raises(AuthenticationError, match="allow_legacy"):
        server.receive(response)
    legacy_server = Authenticator(KEY, server_side=True, allow_legacy=True, _nonce=NONCE)
    legacy_server.receive(response)
    assert legacy_server.data_to_send().endswith(frame(b"#WELCOME#"))


# --- malformed and hostile input ----------------------------------------------------


@pytest.mark.parametrize("server_side", [True, False])
def test_an_oversize_header_is_refused_before_its_body(server_side: bool) -> None:
    """A header announcing 257 bytes fails at once; 256 is still a possible handshake message."""
    side = Authenticator(KEY, server_side=server_side)
    side.receive(struct.pack("!I", 256)[:3])
    with pytest.raises(AuthenticationError, match=r"257 bytes.*at most 256 bytes.*auth key"):
        side.receive(struct.pack("!I", 257)[3:])
    Authenticator(KEY, server_side=server_side).receive(struct.pack("!I", 256))
    if server_side:
        assert side.data_to_send().endswith(frame(b"#FAILURE#"))


def test_a_peer_without_a_key_is_told_apart() -> None:
    """Application data instead of a challenge: the error says so and hints at the key."""
    client = Authenticator(KEY, server_side=False)
    with pytest.raises(AuthenticationError, match="expected a challenge, got 12 bytes: does the peer use an auth key"):
        client.receive(frame(b"hello world!"))


@pytest.mark.parametrize(
    ("challenge", "error"),
    [
        (b"#CHALLENGE#" + bytes(19), "19 bytes; at least 20"),
        (b"#CHALLENGE#" + bytes(40), "no {digest} prefix"),
        (b"#CHALLENGE#{sha1}" + NONCE, "unsupported digest b'sha1'"),
        (b"#CHALLENGE#{sha256" + NONCE, "no {digest} prefix"),
    ],
)
def test_bad_challenges_are_refused(challenge: bytes, error: str) -> None:
    with pytest.raises(AuthenticationError, match=re.escape(error)):
        Authenticator(KEY, server_side=False).receive(frame(challenge))


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"hello world!", "without a digest: does the peer use an auth key"),
        (b"{sha256}" + bytes(31), "sha256 digest has 31 bytes, not 32"),
        (b"{sha1}" + bytes(20), "unsupported digest"),
        (b"#WELCOME#", "without a digest"),
    ],
)
def test_bad_responses_are_refused_with_failure_queued(response: bytes, error: str) -> None:
    server = Authenticator(KEY, server_side=True)
    server.data_to_send()
    with pytest.raises(AuthenticationError, match=re.escape(error)):
        server.receive(frame(response))
    assert server.data_to_send() == frame(b"#FAILURE#")


def test_something_else_than_a_welcome_is_refused() -> None:
    client = Authenticator(KEY, server_side=False)
    client.receive(frame(b"#CHALLENGE#{sha256}" + NONCE))
    with pytest.raises(AuthenticationError, match="expected #WELCOME# or #FAILURE#, got 5 bytes"):
        client.receive(frame(b"hello"))


@pytest.mark.parametrize(
    ("server_side", "steps", "waiting_for"),
    [
        (False, 0, "the challenge"),
        (True, 0, "the response to our challenge"),
        (False, 1, "the welcome"),
        (True, 1, "the challenge"),
    ],
)
def test_an_eof_names_the_step(server_side: bool, steps: int, waiting_for: str) -> None:
    """receive_eof() says what the handshake was waiting for, and counts a partial message."""
    server = Authenticator(KEY, server_side=True)
    client = Authenticator(KEY, server_side=False)
    if steps:
        client.receive(server.data_to_send())
        server.receive(client.data_to_send())
    side = server if server_side else client
    side.receive(b"\x00\x00")
    expected = f"peer closed the connection while waiting for {waiting_for} (2 bytes of a message received)"
    with pytest.raises(AuthenticationError, match=re.escape(expected)):
        side.receive_eof()


def test_the_key_must_be_non_empty_bytes() -> None:
    with pytest.raises(TypeError, match="must be bytes, not str"):
        Authenticator("secret", server_side=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be bytes, not bytearray"):
        Authenticator(bytearray(b"secret"), server_side=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        Authenticator(b"", server_side=False)


def handshake_like(body: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return body.map(frame)


HOSTILE_CHUNKS = st.lists(
    st.one_of(
        st.binary(max_size=300),
        handshake_like(st.binary(max_size=256)),
        handshake_like(st.binary(max_size=60).map(lambda b: b"#CHALLENGE#" + b)),
        handshake_like(st.binary(max_size=60).map(lambda b: b"#CHALLENGE#{sha256}" + b)),
        handshake_like(st.binary(max_size=40).map(lambda b: b"{sha256}" + b)),
        handshake_like(st.binary(min_size=16, max_size=16)),
        handshake_like(st.sampled_from([b"#WELCOME#", b"#FAILURE#", b"{md5}", b"{", b"}"])),
    ),
    max_size=8,
)


@given(st.booleans(), st.booleans(), HOSTILE_CHUNKS, st.booleans())
def test_arbitrary_bytes_only_raise_authentication_error(
    server_side: bool, allow_legacy: bool, chunks: list[bytes], eof: bool
) -> None:
    """Whatever the peer sends, receive() and receive_eof() raise AuthenticationError or nothing; no key in errors."""
    side = Authenticator(KEY, server_side=server_side, allow_legacy=allow_legacy)
    errors: list[AuthenticationError] = []
    for chunk in chunks:
        try:
            side.receive(chunk)
        except AuthenticationError as exc:
            errors.append(exc)
    if eof:
        try:
            side.receive_eof()
        except AuthenticationError as exc:
            errors.append(exc)
    for error in map(str, errors):
        assert KEY.hex() not in error and repr(KEY) not in error
    assert len(side.data_to_send()) <= 2 * (4 + 256)  # a challenge and an answer or #FAILURE#, at most
