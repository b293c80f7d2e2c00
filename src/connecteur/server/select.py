"""The select engine: the HOWTO's non-blocking sockets multiplexed with select.

One thread, one `Poller` (epoll called directly on Linux, `selectors`
elsewhere: kqueue on BSD and macOS). The listening socket sits in the
readers; every connection is non-blocking. A readable connection is read
once with ``recv_into`` into one buffer shared by all connections (the loop
is single-threaded), or straight into the body of a large message under way;
the bytes go to the connection's `Session` (``server/_session.py``: decoder,
handler calls, replies, counts, deadlines), and the replies to every message
of that read leave in one write (a large reply with its header, uncopied, in
one ``sendmsg``). Writes never block: what the socket does not take is
queued, and the connection watches for writability only while a queue is
non-empty; once writable, several queued buffers leave in one ``sendmsg``.

Backpressure: a connection whose queue passes the server's ``high_water``
(`HIGH_WATER` by default) is no longer read until the queue falls below its
``low_water`` (`LOW_WATER`), and the handler's ``paused``/``resumed`` hooks
are told; one whose queue passes `HARD_CAP` (only `peer.send()` and
`broadcast` can push it there) is disconnected, unless the send's
slow-consumer policy drops instead (``server/_fanout.py``).

Timers without threads: idle and per-message deadlines live on the
connections; a heap holds at most one entry per connection, checked lazily
when it comes due, so activity costs no heap operation. The loop sleeps in
``poll()`` until the next entry is due, so an idle server uses no CPU.

Other threads reach the loop through its `Inbox` and a wake-up socket pair
(`connecteur._loop`, shared with the fault proxy).
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from .. import _socket
from .._loop import Inbox, Timers
from ..framing import BodyPool, Buffer
from ._budget import Budget, OverBudget
from ._engine import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    LAST_ACCEPTS,
    EngineConfig,
    StopSignal,
    accept_ready,
    log_abandoned,
    refuse_if_full,
    refuse_untrusted,
    shut_down,
)
from ._fanout import CLOSED, DELIVERED, DROPPED, BroadcastResult, DropOldest, check_policy
from ._handler import HandlerFailed
from ._limits import HARD_CAP as HARD_CAP
from ._limits import HIGH_WATER as HIGH_WATER
from ._limits import LOW_WATER as LOW_WATER
from ._limits import RECV_SIZE as RECV_SIZE
from ._peer import Peer, closed_locally
from ._poller import READ, READABLE, WRITABLE, WRITE, Poller
from ._session import Session

__all__ = ["SelectEngine"]

_ACCEPT = object()  # selector data of the listening socket
_WAKE = object()  # selector data of the wake-up socket
_READ, _WRITE, _READABLE, _WRITABLE = READ, WRITE, READABLE, WRITABLE
_GATHER_MAX = 64  # buffers in one sendmsg, far under IOV_MAX (1024 on Linux); more are joined first
_GATHER_BYTES = 512 * 1024  # no more taken off the queue for one sendmsg: about what a socket's buffer takes
# Every connection's queue until bytes first wait in it: an empty deque is 0.7 KiB, a
# third of an idle connection. Never appended to (maxlen 0 would drop what it got): see _queue_list.
_NOTHING_QUEUED: deque[memoryview] = deque(maxlen=0)


class SelectEngine:
    """One thread multiplexing every connection; see the module's description."""

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._poller: Poller[object] = Poller()
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self.body_pool = BodyPool()  # the loop's one spare buffer for large messages
        self._traffic = config.counters.traffic()  # counted by the loop's thread only
        self._links: dict[int, _SelectLink] = {}  # by key: see _timers
        self._next_key = 0
        self.budget = Budget(config.max_buffered, config.counters, self._call_later)
        self._later: list[tuple[float, Callable[[], None]]] = []  # run by the None timer entries
        # (due, tie-breaker, the link's key in _links; None: the engine's own entry). A key, not
        # the link: a closed connection must not live on in the heap until its entry comes due.
        # Not a weak reference either: that would keep _SelectLink a Python class when compiled,
        # every attribute of it then looked up by name.
        self._timers: Timers[int | None] = Timers()
        self._stop = StopSignal()
        self._inbox = Inbox(self._stop)
        self._loop_thread = 0
        self._listener: socket.socket | None = None
        self._abandoned = False  # see abandon()
        self._running = True  # False once serve() returned: a broadcast from another thread stops waiting
        config.counters.watch_queued(self.queued)

    def request_stop(self, deadline: float) -> None:
        """Ask `serve` to stop by `deadline`; safe from threads and signal handlers."""
        self._stop.request(deadline)

    def wakeup_fd(self) -> int:
        """A descriptor for `signal.set_wakeup_fd`, watched by the loop (see `Engine`)."""
        return self._stop.wakeup_fd

    def abandon(self) -> None:
        """The loop is stuck in a handler past the stop deadline: shut everything down (see `Engine`).

        When the handler returns, the loop finishes the events it had in
        hand (their replies go nowhere: the sockets are shut down), closes
        every socket and ends.
        """
        self._abandoned = True
        log_abandoned(self._loop_thread, "the select engine's thread")
        # list(): one step under the GIL, while the loop may still change the set.
        shut_down([self._listener, *(link.sock for link in list(self._links.values()))])

    def serve(self, listener: socket.socket) -> None:
        """Accept and serve until a stop is requested, then stop gracefully (see `Engine`)."""
        self._loop_thread = threading.get_ident()
        listener.setblocking(False)
        self._listener = listener
        self._poller.register(listener, _READ, _ACCEPT)
        self._poller.register(self._stop.reader, _READ, _WAKE)
        try:
            self._run_until_stopped()
        finally:
            self._running = False
            self._stop_accepting(drain_backlog=False)
            for link in list(self._links.values()):
                link.abort()
            self._poller.close()
            self._stop.close()

    # --- the loop ---------------------------------------------------------------

    def _run_until_stopped(self) -> None:
        """The event loop. Invariant: every open connection is registered for reading
        unless paused by backpressure or half-closed, and for writing iff its queue
        is non-empty."""
        poll, objects, timers = self._poller.poll, self._poller.objects, self._timers.entries
        while True:
            if self._stop.deadline is not None:
                self._stop_accepting(drain_backlog=not self._abandoned)
                if not self._links or time.monotonic() >= self._stop.deadline:
                    return
            timeout = None
            if timers:
                timeout = max(0.0, timers[0][0] - time.monotonic())
            if self._stop.deadline is not None:
                deadline_in = max(0.0, self._stop.deadline - time.monotonic())
                timeout = deadline_in if timeout is None else min(timeout, deadline_in)
            for fd, events in poll(timeout):
                data = objects.get(fd)  # None: closed by an earlier event of this batch
                if type(data) is _SelectLink:
                    if events & _WRITABLE:
                        data.on_writable()
                    if events & _READABLE and data.is_open:
                        data.on_readable()
                elif data is _ACCEPT:
                    self._accept_some()
                elif data is _WAKE:
                    self._inbox.run()
            data = None  # else a closed connection lives on here until the next event
            if timers and timers[0][0] <= time.monotonic():
                self._run_due_timers()

    def call_soon(self, action: Callable[[], None]) -> None:
        """Run `action` on the loop's thread: at once there, else after a wake-up."""
        if threading.get_ident() == self._loop_thread:
            action()
        else:
            self._inbox.put(action)

    # --- fan-out (docs/fan-out.md) ------------------------------------------------

    def peers(self) -> list[Peer]:
        """The live peers (handshakes done, not closed); safe from any thread."""
        # list(): one step under the GIL, while the loop may still change the set.
        return [link.session.peer for link in list(self._links.values()) if link.is_open and link.session.announced]

    def queued(self) -> int:
        """Bytes queued for all the connections now (the `Stats.queued` gauge; any thread, approximate)."""
        return sum(link.queued for link in list(self._links.values()))

    def broadcast(self, data: bytes, exclude: Iterable[Peer], policy: str | None) -> BroadcastResult:
        """Queue the framed `data` to every live peer but `exclude`; from another thread, wait for the loop to."""
        policy = check_policy(policy if policy is not None else self._config.slow_consumer)
        skip = set(exclude)
        if threading.get_ident() == self._loop_thread:
            return self._fan_out(data, skip, policy)
        result: list[BroadcastResult] = []
        done = threading.Event()

        def fan_out() -> None:
            result.append(self._fan_out(data, skip, policy))
            done.set()

        self._inbox.put(fan_out)
        while not done.wait(0.1):  # the loop may end meanwhile (a stop): then nobody is there to send to
            if not self._running:
                return BroadcastResult()
        return result[0]

    def _fan_out(self, data: bytes, skip: set[Peer], policy: str) -> BroadcastResult:
        delivered = dropped = closed = 0  # not BroadcastResult sums: a new object per peer costs (profiled)
        for link in list(self._links.values()):  # a link may close (and leave the set) as it is sent to
            if link.session.announced and link.session.peer not in skip:
                result = link.offer(data, policy)
                delivered += result.delivered
                dropped += result.dropped
                closed += result.closed
        return BroadcastResult(delivered, dropped, closed)

    # --- accepting -------------------------------------------------------------

    def _accept_some(self) -> None:
        listener = self._listener
        assert listener is not None
        if self._abandoned:  # shut down: accept() would fail
            self._stop_accepting(drain_backlog=False)
            return
        if accept_ready(listener, self._admit, ACCEPT_BATCH):
            # Out of descriptors: stop watching the listener, or it would
            # show readable at once and spin.
            self._poller.unregister(listener)
            self.add_timer(time.monotonic() + ACCEPT_BACKOFF, None)

    def _admit(self, sock: socket.socket, address: object) -> bool:
        if refuse_if_full(self._config, sock, address) or refuse_untrusted(self._config, sock, address):
            return False
        counters = self._config.counters
        sock.setblocking(False)
        _socket.configure_stream(sock, self._config.keepalive)
        link = _SelectLink(self, sock, address, self._next_key)
        self._links[link.key] = link
        self._next_key += 1
        counters.opened()
        self._poller.register(sock, _READ, link)
        link.start()
        return False

    def _stop_accepting(self, *, drain_backlog: bool = True) -> None:
        listener = self._listener
        if listener is not None:
            self._listener = None
            self._poller.unregister(listener)
            if drain_backlog:
                accept_ready(listener, self._admit, LAST_ACCEPTS)
            listener.close()

    def _resume_accepting(self) -> None:
        listener = self._listener
        if listener is not None and self._stop.deadline is None and listener.fileno() not in self._poller.objects:
            self._poller.register(listener, _READ, _ACCEPT)

    # --- timers ----------------------------------------------------------------

    def add_timer(self, due: float, link: _SelectLink | None) -> None:
        """Check `link`'s deadlines at `due` (None: resume accepting, check the budget)."""
        timers = self._timers
        if len(timers.entries) > 2 * len(self._links) + 64:
            # Entries of closed or re-armed links wait for their due time;
            # with many short connections they would pile up, so sweep them.
            timers.keep(self._is_live)
        timers.add(due, None if link is None else link.key)

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        for due, key in self._timers.pop_due(now):
            if key is None:
                self._resume_accepting()
                self._run_later(now)
            elif (link := self._links.get(key)) is not None and link.is_timer_live(due):
                link.check_timers()

    def _call_later(self, seconds: float, action: Callable[[], None]) -> None:
        """Run `action` on the loop in `seconds` (the budget's check; few, so a list will do)."""
        due = time.monotonic() + seconds
        self._later.append((due, action))
        self.add_timer(due, None)

    def _run_later(self, now: float) -> None:
        due = [action for when, action in self._later if when <= now]
        self._later = [entry for entry in self._later if entry[0] > now]
        for action in due:
            action()

    # --- connections (called by links) ------------------------------------------

    def update_interest(self, link: _SelectLink, events: int, before: int) -> None:
        """Watch `link` for `events` instead of `before` (0: not watched)."""
        if not events:
            self._poller.unregister(link.sock)
        elif not before:
            self._poller.register(link.sock, events, link)
        else:
            self._poller.modify(link.sock, events)

    def forget(self, link: _SelectLink) -> None:
        """Unregister a closed connection."""
        self._poller.unregister(link.sock)
        self._links.pop(link.key, None)

    def _is_live(self, due: float, key: int | None) -> bool:
        """False for a timer entry of a closed or re-armed link: the sweep drops it."""
        if key is None:
            return True
        link = self._links.get(key)
        return link is not None and link.is_timer_live(due)


class _SelectLink:
    """One non-blocking connection: the I/O around its `Session`, driven by the engine's loop."""

    __slots__ = (
        "_budget_paused",
        "_close_asked",
        "_droppable",
        "_engine",
        "_events",
        "_outgoing",
        "_paused",
        "_queued",
        "_timer_due",
        "is_open",
        "key",
        "session",
        "sock",
    )

    def __init__(self, engine: SelectEngine, sock: socket.socket, address: object, key: int) -> None:
        self._engine = engine
        self.key = key
        """Its key in the engine's table of links, which its timer entries name it by."""
        self.sock = sock
        self.session = Session(
            engine._config, address, self, traffic=engine._traffic, budget=engine.budget, holder=self,
            body_pool=engine.body_pool,
        )  # fmt: skip
        self._outgoing = _NOTHING_QUEUED
        self._queued = 0  # bytes in _outgoing
        self._events = _READ
        self._paused = False  # reading stopped by backpressure
        self._budget_paused = False  # reading stopped: the server is over max_buffered
        self._close_asked = False  # close() from another thread, not run yet
        self._timer_due: float | None = None
        self._droppable: DropOldest | None = None  # made by the first "drop_oldest" send that queues
        self.is_open = True

    # --- the Link interface (any thread) ---------------------------------------

    def send(self, message: Buffer, policy: str | None = None) -> None:
        """Queue one message; from another thread the loop writes it soon after."""
        if not self.is_open or self._close_asked or self.session.closing:
            raise closed_locally(self.session.peer.address)
        data = self.session.frame(message)
        if policy is not None or self._engine._config.slow_consumer != "close":
            policy = check_policy(policy if policy is not None else self._engine._config.slow_consumer)
            self._engine.call_soon(functools.partial(self._offer_quietly, data, policy))
        elif threading.get_ident() == self._engine._loop_thread:
            self._send_framed(data)
        else:
            self._engine.call_soon(functools.partial(self._send_framed, data))  # no closure: mypyc fails on one here

    def _offer_quietly(self, data: bytes, policy: str) -> None:
        self.offer(data, policy)  # a drop is counted in peer.dropped and the stats

    @property
    def queued(self) -> int:
        """Bytes queued, not yet taken by the socket."""
        return self._queued

    def offer(self, data: bytes, policy: str) -> BroadcastResult:
        """On the loop's thread: send the framed `data` under the slow-consumer `policy` (see `_fanout`)."""
        session = self.session
        if session.closing:  # closed, or closing: nothing more goes out
            return CLOSED
        if self._paused and (policy == "drop" or (policy == "drop_oldest" and session.encrypts)):
            return self._count_dropped(DROPPED)
        queued_before = self._queued
        self._send_framed(data)
        if not self.is_open:
            return CLOSED
        if policy != "drop_oldest" or not queued_before or session.in_handler:
            return DELIVERED
        outgoing = self._outgoing
        if outgoing and outgoing[-1].obj is data:  # queued whole, unencrypted, behind what was queued
            if self._droppable is None:
                self._droppable = DropOldest()
            self._droppable.add(outgoing[-1])
        if self._droppable is None:
            return DELIVERED
        dropped, freed = self._droppable.drop_over(self._queued, self._engine._config.high_water)
        self._queued -= freed
        if not dropped:
            return DELIVERED
        self.session.account(self._queued)
        return self._count_dropped(BroadcastResult(delivered=1, dropped=dropped))

    def _count_dropped(self, result: BroadcastResult) -> BroadcastResult:
        self.session.peer.dropped += result.dropped
        self._engine._config.counters.dropped_messages(result.dropped)
        return result

    def _send_framed(self, data: bytes) -> None:
        if self.is_open:
            self.session.send(data)  # from a handler: after the replies before it, in one write
            if not self.session.in_handler:
                self._flush()

    def close(self) -> None:
        """Close once the replies already due are sent; safe from any thread."""
        if threading.get_ident() != self._engine._loop_thread:
            self._close_asked = True  # so that a send() after this close() raises at once
            self._engine.call_soon(self.close)
        elif self.is_open:
            self.session.close()
            if not self.session.in_handler:
                self._flush()

    def abort(self) -> None:
        """Close at once, dropping what is queued: the stop deadline passed."""
        self._finish()

    def evict(self, error: OverBudget) -> None:
        """Close at once: the server stayed over `max_buffered` and this connection holds the most."""
        self._fail(error)

    def pause_reading_for_budget(self, paused: bool) -> None:
        """Stop or resume reading this connection for the server's memory budget."""
        self._budget_paused = paused
        self._set_events(_READ | (_WRITE if self._queued else 0))  # the loop's invariant; _set_events masks

    # --- the loop's side --------------------------------------------------------

    def start(self) -> None:
        """Tell the handler (or begin the handshake), and arm the timers."""
        self.session.start()
        self._flush()

    def on_readable(self) -> None:
        """Read once and hand the bytes to the session (a large message's body straight, uncopied)."""
        session = self.session
        decoder, body = session.direct, None
        if decoder is not None and decoder.reading_body:
            body = decoder.recv_buffer()
        try:
            count = self.sock.recv_into(self._engine._buffer if body is None else body)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        if not count:
            session.receive_eof()
        elif body is None:
            session.receive_data(self._engine._view[:count])
        else:
            session.buffer_filled(count)
        self._flush()

    def on_writable(self) -> None:
        """Send queued bytes until the socket would block or the queue is empty.

        Several queued buffers leave in one gathering ``sendmsg`` (`_GATHER_MAX`
        of them, or `_GATHER_BYTES`); those the socket did not take, or took
        only part of, go back to the queue's head.
        """
        outgoing = self._outgoing
        while outgoing:
            batch = self._take_batch()
            if not batch:  # only dropped messages were left
                break
            try:
                sent = self.sock.send(batch[0]) if len(batch) == 1 else self.sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(exc)
                return
            self._queued -= sent
            if self._put_back(batch, sent):
                break
        if self._queued:
            self._apply_backpressure()
            return
        if self.session.closing:
            self._finish()
            return
        self._set_events(self._events & ~_WRITE)
        self._apply_backpressure()

    def _take_batch(self) -> list[memoryview]:
        """Take the next buffers to write off the queue's head, skipping those "drop_oldest" dropped."""
        outgoing, droppable = self._outgoing, self._droppable
        batch: list[memoryview] = []
        size = 0
        while outgoing and len(batch) < _GATHER_MAX and size < _GATHER_BYTES:
            view = outgoing.popleft()
            if droppable is None or not droppable.was_dropped(view):  # a dropped one is no longer in _queued
                batch.append(view)
                size += view.nbytes
        return batch

    def _put_back(self, batch: list[memoryview], sent: int) -> bool:
        """The socket took `sent` bytes of `batch`: queue the rest back at the head; True if any.

        A buffer the socket took part of goes back as a slice, a new object:
        no longer whole, so "drop_oldest" can no longer drop it. Those it took
        nothing of go back as they were, still droppable.
        """
        droppable = self._droppable
        for index, view in enumerate(batch):
            if sent >= view.nbytes:
                sent -= view.nbytes
                if droppable is not None:
                    droppable.taken(view)
                continue
            rest = batch[index:]
            if sent:
                if droppable is not None:
                    droppable.taken(view)
                rest[0] = view[sent:]
            self._outgoing.extendleft(reversed(rest))
            return True
        return False

    def _flush(self) -> None:
        """Write what the session has to send; arm its next deadline; close when it says so.

        The bytes leave now, in one system call, as far as the socket takes
        them (several buffers, such as a large reply's header and body, in one
        gathering ``sendmsg``, uncopied); the rest is queued, and so is all of
        it while bytes before it wait in the queue.
        """
        session = self.session
        if out := session.data_to_send():
            if len(out) > _GATHER_MAX:
                out = [b"".join(out)]
            if self._queued:
                self._queue_behind(out)
            else:
                try:
                    sent = self.sock.send(out[0]) if len(out) == 1 else self.sock.sendmsg(out)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError as exc:
                    self._fail(exc)
                    return
                if len(out) > 1 or sent < len(out[0]):
                    self._queue_unsent(out, sent)
            if not self.is_open:  # past the hard cap
                return
        if session.new_deadline:
            self._arm_timer()
        if session.closing:
            if session.error is not None or not self._queued:
                self._finish()
            else:
                self._set_events(_WRITE)  # no more reading

    def _queue_behind(self, buffers: list[Buffer]) -> None:
        """Queue `buffers` whole behind the bytes already waiting."""
        outgoing = self._queue_list()
        for part in buffers:
            outgoing.append(memoryview(part))
            self._queued += len(part)
        self._apply_backpressure()

    def _queue_unsent(self, buffers: list[Buffer], sent: int) -> None:
        """Queue what a write of `buffers` that took `sent` bytes left."""
        for part in buffers:
            if sent >= len(part):
                sent -= len(part)
            else:
                self._queue(memoryview(part)[sent:])
                sent = 0

    def _queue(self, rest: memoryview) -> None:
        """Queue what the socket did not take of a write."""
        self._queue_list().append(rest)
        self._queued += rest.nbytes
        self._set_events(self._events | _WRITE)
        self._apply_backpressure()

    def _queue_list(self) -> deque[memoryview]:
        """The queue of bytes waiting for the socket, made when bytes first wait."""
        if self._outgoing is _NOTHING_QUEUED:
            self._outgoing = deque()
        return self._outgoing

    def _apply_backpressure(self) -> None:
        """The queue changed: tell the session (for the budget); stop or resume reading past the water marks."""
        queued, config = self._queued, self._engine._config
        self.session.account(queued)
        if queued > HARD_CAP:
            self._fail(ConnectionError(f"{queued} bytes queued for a peer that does not read; limit is {HARD_CAP}"))
        elif not self._paused and queued > config.high_water:
            self._paused = True
            self._set_events(self._events & ~_READ)
            self._writability_changed(paused=True)
        elif self._paused and queued < config.low_water:
            self._paused = False
            self._set_events(self._events | _READ)
            self._writability_changed(paused=False)

    def _writability_changed(self, *, paused: bool) -> None:
        """Tell the handler's ``paused``/``resumed`` hook, if it has one."""
        handler = self._engine._config.handler
        if handler.watches_writability and self.session.announced:
            try:
                handler.writability_changed(self.session.peer, paused=paused)
            except HandlerFailed as exc:
                self._fail(exc)

    def _set_events(self, events: int) -> None:
        if self.session.closing or self._paused or self._budget_paused:
            events &= ~_READ
        if not events and not (self._budget_paused and not self._queued):
            # Nothing to wait for: keep the socket registered for errors only.
            # (Paused for the budget, with nothing to write: not watched at all,
            # or a level-triggered READ would fire on every loop.)
            events = _WRITE if self._queued else _READ
        if events != self._events and self.is_open:
            self._engine.update_interest(self, events, self._events)
            self._events = events

    # --- timers ----------------------------------------------------------------

    def _arm_timer(self) -> None:
        due = self.session.next_deadline()
        if due is not None and (self._timer_due is None or due < self._timer_due):
            self._timer_due = due
            self._engine.add_timer(due, self)

    def is_timer_live(self, due: float) -> bool:
        """True when the heap entry due at `due` is this open link's current one."""
        return self.is_open and self._timer_due == due

    def check_timers(self) -> None:
        """Its heap entry came due: close on an expired deadline, else re-arm."""
        self._timer_due = None
        self.session.check_deadlines(time.monotonic())
        if self.session.error is not None:
            self._finish()
        else:
            self._arm_timer()

    # --- ending ------------------------------------------------------------------

    def _fail(self, error: BaseException) -> None:
        """Close at once because of `error`."""
        self.session.fail(error)
        self._finish()

    def _finish(self) -> None:
        """Close the socket, drop what is queued, and let the session report the end."""
        if not self.is_open:
            return
        self.is_open = False
        self._engine.forget(self)
        self.sock.close()
        self._outgoing.clear()  # now: a timer entry or the handler may hold this object longer
        self._droppable = None
        self._queued = 0
        self.session.connection_lost()
