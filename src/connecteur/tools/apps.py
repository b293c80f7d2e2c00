"""Small handlers for `connecteur serve --app NAME`, the demo and the tests."""

from __future__ import annotations

import string
import threading
from collections.abc import Callable, Iterable
from typing import Final, final

from ..errors import ConnecteurError, FramingError
from ..server import MessageHandler, Peer, PeerHandler

__all__ = ["APPS", "ONE_PROCESS_APPS", "Chat", "PubSub", "discard", "echo", "upper"]


def echo(message: bytes) -> bytes:
    """Reply with the message itself."""
    return message


def upper(message: bytes) -> bytes:
    """Reply with the message in upper case (ASCII letters only)."""
    return message.upper()


def discard(message: bytes) -> None:
    """Reply with nothing: a sink, like the discard service (RFC 863)."""
    return None


@final
class Chat:
    """A chat room: each member's messages go to every other member, under its name.

    `connecteur serve --app chat` serves one; `connecteur chat` is its client.
    The protocol, in messages of the server's framing (any framing of
    variable length; with ``fixed:N`` no name fits):

    - A client's first message is its name: 1 to `MAX_NAME` letters, digits,
      ``-``, ``_`` or ``.`` in UTF-8, not taken by another member. The
      server answers ``* welcome NAME; here: ann, bob`` (at most
      `MAX_LISTED` names, then ``and N more``; or ``; nobody else is here``)
      and tells the others ``* NAME joined``. A name it cannot take gets
      ``* refused: REASON``, then the server closes the connection.
    - Every later message is text, any bytes: the other members receive
      ``NAME: text``; the sender receives nothing back, except
      ``* not sent: REASON`` when the framing cannot carry the text with the
      name prefixed (and can carry that notice).
    - When a member's connection ends, the others receive ``* NAME left``.

    Messages from the server that start with ``* `` are the room's notices;
    any other is ``NAME: text``, cut at the first ``": "`` (a name holds
    neither ``*`` nor ``:``). A member's welcome is always the first message
    it receives.

    Thread-safe: the threads engine calls it from one thread per connection;
    texts are sent outside the room's lock (a send never waits for its peer,
    but it may run a handler's paused/resumed hook). The room lives in
    this object, so every connection must be in the same process: use the
    select, threads or asyncio engine with one worker. With the processes
    engine or ``workers > 1`` each process would hold a separate room.
    Create one `Chat` per server.
    """

    MAX_NAME: Final = 32
    """The longest name, in characters: enough for a nickname, short enough for a prefix."""

    MAX_LISTED: Final = 20
    """How many members a welcome names at most (then ``and N more``): the
    welcome is sent under the room's lock, so it stays small."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: dict[Peer, str] = {}  # guarded by _lock

    def __repr__(self) -> str:
        return f"<Chat {len(self._members)} members>"

    @classmethod
    def check_name(cls, name: str) -> None:
        """Check that `name` follows the protocol's rule (whether it is taken aside).

        Raises:
            ValueError: the name is empty, too long or holds another character.
        """
        if not 1 <= len(name) <= cls.MAX_NAME or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"a name is 1 to {cls.MAX_NAME} letters, digits, '-', '_' or '.', not {name!r}")

    def received(self, peer: Peer, message: bytes) -> bytes | None:
        """Take a newcomer's name, or pass a member's text on to the others."""
        with self._lock:
            name = self._members.get(peer)
            others = [other for other in self._members if other is not peer]
        if name is not None:
            error = self._broadcast(name.encode() + b": " + message, others)
            if error is not None:
                self._broadcast(f"* not sent: {error}".encode(), [peer])  # if even this fits the framing
            return None
        if peer.data.get("chat_refused"):
            return None  # more bytes that arrived with a refused name, before the close
        return self._join(peer, message)

    def closed(self, peer: Peer, error: BaseException | None) -> None:
        """Tell the others that a member left."""
        with self._lock:
            name = self._members.pop(peer, None)
            others = list(self._members)
        if name is not None:
            self._broadcast(f"* {name} left".encode(), others)

    def _join(self, peer: Peer, message: bytes) -> bytes | None:
        with self._lock:
            try:
                name = message.decode()
                self.check_name(name)
                if name in self._members.values():
                    raise ValueError(f"the name {name!r} is taken")
            except ValueError as exc:  # UnicodeDecodeError included
                peer.data["chat_refused"] = True
                peer.close()  # after this reply
                return f"* refused: {exc}".encode()
            others = list(self._members)
            # Sent under the lock, so no member's text can reach the newcomer
            # before it. It cannot block: a fresh connection has nothing queued.
            try:
                peer.send(self._welcome(name, others))
            except (ConnecteurError, OSError):
                return None  # gone already: its closed() finds no member to announce
            self._members[peer] = name
        self._broadcast(f"* {name} joined".encode(), others)
        return None

    def _welcome(self, name: str, others: list[Peer]) -> bytes:
        names = [self._members[other] for other in others]
        if not names:
            return f"* welcome {name}; nobody else is here".encode()
        listed = ", ".join(names[: self.MAX_LISTED])
        more = f" and {len(names) - self.MAX_LISTED} more" if len(names) > self.MAX_LISTED else ""
        return f"* welcome {name}; here: {listed}{more}".encode()

    @staticmethod
    def _broadcast(message: bytes, peers: Iterable[Peer]) -> FramingError | None:
        """Send `message` to each peer; return the error if the framing cannot carry it.

        Called without the lock, which a send need not hold: the room stays
        open to the other threads while it runs.
        """
        for peer in peers:
            try:
                peer.send(message)
            except FramingError as exc:
                return exc  # the same for every peer
            except (ConnecteurError, OSError):
                continue  # that peer is leaving; its closed() tells the others
        return None


_TOPIC_CHARACTERS: Final = frozenset(string.ascii_letters + string.digits + "-_./:")


@final
class PubSub:
    """Topics: clients subscribe to some, and each message published to one goes to its subscribers.

    `connecteur serve --app pubsub` serves it; `connecteur sub` and
    `connecteur pub` are its clients. The protocol, in messages of the
    server's framing (any framing of variable length), ASCII commands:

    - ``sub TOPIC``: subscribe; the server answers ``* subscribed TOPIC``.
      A topic is 1 to `MAX_TOPIC` letters, digits, ``-``, ``_``, ``.``,
      ``/`` or ``:``.
    - ``unsub TOPIC``: unsubscribe; answered ``* unsubscribed TOPIC``.
    - ``pub TOPIC PAYLOAD``: every subscriber of TOPIC (the publisher too,
      if it subscribed) receives what follows ``pub ``: ``TOPIC PAYLOAD``
      (PAYLOAD is any bytes; ``pub TOPIC`` alone publishes ``TOPIC``). The
      publisher receives nothing back, so that it can publish at full speed.
    - Anything else, a bad topic, or more than `MAX_SUBSCRIPTIONS` topics
      for one client: ``* error: REASON``; the connection stays open.

    Messages from the server that start with ``* `` answer the client's
    commands, in order; any other is a publication, ``TOPIC PAYLOAD`` cut at
    the first space. A publication to a subscriber is sent with the server's
    slow-consumer policy (``serve --slow-consumer``, docs/fan-out.md): a
    subscriber that does not read is closed at the hard cap (``close``), or
    misses publications (``drop``, ``drop_oldest``), and never slows the
    publisher or the other subscribers.

    Thread-safe; the topics live in this object, so every connection must be
    in one process: the select, threads or asyncio engine, one worker.
    Create one `PubSub` per server.
    """

    MAX_TOPIC: Final = 64
    """The longest topic, in characters."""

    MAX_SUBSCRIPTIONS: Final = 1024
    """Topics one client may subscribe to: what a client can make the server hold stays bounded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[bytes, set[Peer]] = {}  # guarded by _lock
        self.published = 0
        """Publications taken (each sent to every subscriber of its topic)."""

    def __repr__(self) -> str:
        return f"<PubSub {len(self._subscribers)} topics>"

    @classmethod
    def check_topic(cls, topic: str) -> None:
        """Check that `topic` follows the protocol's rule.

        Raises:
            ValueError: the topic is empty, too long or holds another character.
        """
        if not 1 <= len(topic) <= cls.MAX_TOPIC or not set(topic) <= _TOPIC_CHARACTERS:
            raise ValueError(f"a topic is 1 to {cls.MAX_TOPIC} ASCII letters, digits, '-', '_', '.', '/' or ':'")

    def received(self, peer: Peer, message: bytes) -> bytes | None:
        """Run one command."""
        command, _, rest = bytes(message).partition(b" ")
        try:
            if command == b"pub":
                self._publish(self._topic(rest.partition(b" ")[0]), bytes(message), len(command) + 1)
                return None
            if command == b"sub":
                return self._subscribe(peer, self._topic(rest))
            if command == b"unsub":
                return self._unsubscribe(peer, self._topic(rest))
            raise ValueError("commands are 'sub TOPIC', 'unsub TOPIC' and 'pub TOPIC PAYLOAD'")
        except ValueError as exc:
            return f"* error: {exc}".encode()

    def closed(self, peer: Peer, error: BaseException | None) -> None:
        """Forget the peer's subscriptions."""
        with self._lock:
            for topic in peer.data.pop("pubsub_topics", ()):
                self._forget(topic, peer)

    def _topic(self, raw: bytes) -> bytes:
        self.check_topic(raw.decode("ascii", "replace"))
        return raw

    def _subscribe(self, peer: Peer, topic: bytes) -> bytes:
        with self._lock:
            topics: set[bytes] = peer.data.setdefault("pubsub_topics", set())
            if topic not in topics and len(topics) >= self.MAX_SUBSCRIPTIONS:
                raise ValueError(f"at most {self.MAX_SUBSCRIPTIONS} topics per client")
            topics.add(topic)
            self._subscribers.setdefault(topic, set()).add(peer)
        return b"* subscribed " + topic

    def _unsubscribe(self, peer: Peer, topic: bytes) -> bytes:
        with self._lock:
            peer.data.get("pubsub_topics", set()).discard(topic)
            self._forget(topic, peer)
        return b"* unsubscribed " + topic

    def _forget(self, topic: bytes, peer: Peer) -> None:
        subscribers = self._subscribers.get(topic)
        if subscribers is not None:
            subscribers.discard(peer)
            if not subscribers:
                del self._subscribers[topic]

    def _publish(self, topic: bytes, message: bytes, start: int) -> None:
        """Send ``TOPIC PAYLOAD`` (`message` from `start`) to the topic's subscribers, outside the lock."""
        with self._lock:
            subscribers = list(self._subscribers.get(topic, ()))
            self.published += 1
        publication = memoryview(message)[start:]
        for subscriber in subscribers:
            try:
                subscriber.send(publication)
            except FramingError:
                return  # cannot happen: shorter than the command the framing carried
            except (ConnecteurError, OSError):
                continue  # that subscriber is leaving; its closed() forgets it


APPS: Final[dict[str, Callable[[], MessageHandler | PeerHandler]]] = {
    "echo": lambda: echo,
    "upper": lambda: upper,
    "discard": lambda: discard,
    "chat": Chat,
    "pubsub": PubSub,
}
"""The apps the command line knows: name -> a function that returns a new
handler (a fresh room for ``chat``; the stateless apps return themselves)."""

ONE_PROCESS_APPS: Final = frozenset({"chat", "pubsub"})
"""Apps whose state spans connections: every connection must be served by
one process (the select, threads or asyncio engine, one worker)."""
