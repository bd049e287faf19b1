"""Run slow steps (fetching the next files) ahead of their consumer, in one background thread, cancellably.

::

    from ssl4eos12.prefetch import prefetch

    with prefetch((functools.partial(fetch, url) for url in urls), ahead=1) as fetched:
        for data in fetched:       # the next url is fetched while this one is used
            use(data)

:func:`prefetch` takes *thunks* (zero-argument callables) and gives their results in order. At most
``ahead`` results are computed or being computed beyond the one the consumer holds, so memory holds at
most ``ahead + 1`` results. A thunk's exception comes out of ``next()`` for that item, and the iterator
goes on with the following item afterwards (a consumer can skip a bad file).

Leaving the ``with`` block, :meth:`Prefetch.close`, or the garbage collection of an abandoned iterator
(a ``break``, an exception in the consumer, a closed generator that held it) cancels the pending work,
drops the results not yet taken and joins the thread: nothing is left behind. A thunk that is running
at that moment is told through its :class:`CancelScope` (:func:`current_scope` inside the thunk): a
blocking read registers a closer with :meth:`CancelScope.closing` (e.g. shutting its socket down) and is
interrupted at once; :func:`ssl4eos12.sources.remote.fetch` does. A thunk that ignores the scope is
waited for.

A thunk may hand its result over before all its work is done: what it registers with
:meth:`CancelScope.defer` runs in the same thread right after the result is handed over, before the next
thunk (a file whose first bytes are enough to start with, and whose body keeps arriving).

The thread lives as long as the iteration: a fork (a DataLoader worker) never inherits a running one
unless it forks in the middle of an iteration, which DataLoader does not.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["CancelScope", "Cancelled", "Prefetch", "current_scope", "prefetch", "produced_ahead"]


class Cancelled(Exception):
    """Raised inside a thunk whose prefetch was closed: the result is no longer wanted."""


class CancelScope:
    """A cancellation signal for blocking work, with closers that interrupt it and objects its work shares."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._event = threading.Event()
        self._closers: dict[int, Callable[[], None]] = {}
        self._next_id = 0
        self._shared: dict[str, tuple[object, Callable[[object], None]]] = {}
        self._deferred: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check(self) -> None:
        """Raise :class:`Cancelled` once the scope is cancelled (call between blocking steps)."""
        if self._cancelled:
            raise Cancelled

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking at a cancellation; ``True`` when cancelled."""
        return self._event.wait(seconds)

    def cancel(self) -> None:
        """Cancel, and run every registered closer (each once; errors in closers are ignored)."""
        with self._lock:
            self._cancelled = True
            self._event.set()
            closers, self._closers = list(self._closers.values()), {}
            shared, self._shared = list(self._shared.values()), {}
        for closer in closers:
            with contextlib.suppress(Exception):
                closer()
        for value, close in shared:
            with contextlib.suppress(Exception):
                close(value)

    def shared(self, key: str, factory: Callable[[], T], close: Callable[[T], None]) -> T | None:
        """An object that the work of this scope shares (e.g. a pool of buffers), made by ``factory`` on first
        use and closed by :meth:`cancel`, i.e. when the prefetch ends; ``None`` once cancelled, and always
        outside a prefetch (there is no iteration to share with)."""
        with self._lock:
            if self._cancelled or self is _NEVER:
                return None
            if key not in self._shared:
                self._shared[key] = (factory(), close)
            return self._shared[key][0]  # type: ignore[return-value]

    @property
    def deferrable(self) -> bool:
        """Whether :meth:`defer` works: inside a prefetch."""
        return self is not _NEVER

    def defer(self, rest: Callable[[], None]) -> bool:
        """Run ``rest`` (the rest of the running thunk's work, e.g. the body of a file whose result is handed
        over before all its bytes are in) right after the thunk's result is handed to the consumer, in the
        prefetch's thread and scope, before the next thunk starts. ``False`` outside a prefetch: the caller
        then does the rest itself. ``rest`` must not raise; it also runs when the prefetch is cancelled (then
        :attr:`cancelled` is set), so whoever waits for it is told."""
        if self is _NEVER:
            return False
        self._deferred.append(rest)
        return True

    def run_deferred(self) -> None:
        """Run what the last thunk deferred (:meth:`defer`), in order."""
        while self._deferred:
            self._deferred.pop(0)()

    @contextlib.contextmanager
    def closing(self, closer: Callable[[], None]) -> Iterator[None]:
        """While in the block, :meth:`cancel` calls ``closer`` (from another thread) to interrupt it.

        Entered after a cancellation, the closer runs at once and :class:`Cancelled` is raised.
        """
        with self._lock:
            cancelled = self._cancelled
            if not cancelled:
                key = self._next_id
                self._next_id += 1
                self._closers[key] = closer
        if cancelled:
            with contextlib.suppress(Exception):
                closer()
            raise Cancelled
        try:
            yield
        finally:
            with self._lock:
                self._closers.pop(key, None)


_NEVER = CancelScope()  # the scope of work that runs outside any prefetch: never cancelled
_local = threading.local()


def current_scope() -> CancelScope:
    """The scope of the prefetch running the calling thunk (a never-cancelled one outside a prefetch)."""
    return getattr(_local, "scope", _NEVER)


@contextlib.contextmanager
def _in_scope(scope: CancelScope) -> Iterator[None]:
    previous = current_scope()
    _local.scope = scope
    try:
        yield
    finally:
        _local.scope = previous


class _Shared:
    """What the worker thread and the consumer share. The worker never holds the :class:`Prefetch` itself,
    so an abandoned ``Prefetch`` can be garbage-collected (and closed) while the worker runs."""

    def __init__(self, thunks: Iterator[Callable[[], T]], ahead: int):
        self.thunks = thunks
        self.ahead = ahead
        self.scope = CancelScope()
        self.condition = threading.Condition()
        self.results: collections.deque[tuple[bool, object]] = collections.deque()  # (ok, value or exception)
        self.finished = False  # the worker took the last thunk and delivered its result


def _work(shared: _Shared) -> None:
    with _in_scope(shared.scope):
        while True:
            with shared.condition:
                while len(shared.results) >= shared.ahead and not shared.scope.cancelled:
                    shared.condition.wait()
                if shared.scope.cancelled:
                    break
            try:
                thunk = next(shared.thunks)
            except StopIteration:
                break
            except BaseException as err:  # noqa: BLE001 - the iterable of thunks itself failed: hand it over, then stop
                _deliver(shared, False, err)
                break
            try:
                item = (True, thunk())
            except BaseException as err:  # noqa: BLE001 - the consumer gets it for this item
                item = (False, err)
            del thunk
            if shared.scope.cancelled:
                break  # nobody will take it: drop it here
            _deliver(shared, *item)
            del item
            shared.scope.run_deferred()  # the rest of that item's work, while the consumer already uses it
        shared.scope.run_deferred()  # cancelled: deferred work learns it (and tells whoever waits for it)
    with shared.condition:
        shared.finished = True
        shared.condition.notify_all()


def _deliver(shared: _Shared, ok: bool, value: object) -> None:
    with shared.condition:
        shared.results.append((ok, value))
        shared.condition.notify_all()


class Prefetch(Iterator[T], Generic[T]):
    """Iterator over the results of ``thunks``, computed up to ``ahead`` items in advance; see the module doc.

    ``ahead=0`` runs each thunk in the consumer's thread when its item is asked for (no thread at all).
    """

    def __init__(self, thunks: Iterable[Callable[[], T]], ahead: int = 1, name: str = "ssl4eos12-prefetch"):
        if not isinstance(ahead, int) or ahead < 0:
            raise ValueError(f"prefetch: ahead must be an integer >= 0, got {ahead!r}")
        self._shared = _Shared(iter(thunks), ahead)
        self._name = name
        self._thread: threading.Thread | None = None
        self._closed = False

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        if self._closed:
            raise StopIteration
        shared = self._shared
        if shared.ahead == 0:
            with _in_scope(shared.scope):
                try:
                    return next(shared.thunks)()
                finally:
                    shared.scope.run_deferred()  # nothing to overlap with: the rest of its work, now
        if self._thread is None:
            self._thread = threading.Thread(target=_work, args=(shared,), name=self._name, daemon=True)
            self._thread.start()
        with shared.condition:
            while not shared.results and not shared.finished:
                shared.condition.wait()
            if not shared.results:
                raise StopIteration
            ok, value = shared.results.popleft()
            shared.condition.notify_all()  # room for the next one
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    def close(self) -> None:
        """Cancel what is pending or running, drop the results not taken, and wait for the thread to end."""
        if self._closed:
            return
        self._closed = True
        shared = self._shared
        shared.scope.cancel()
        with shared.condition:
            shared.results.clear()
            shared.condition.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def prefetch(thunks: Iterable[Callable[[], T]], ahead: int = 1) -> Prefetch[T]:
    """Results of ``thunks`` in order, each computed in a background thread up to ``ahead`` items early.

    Use it as a context manager (``with prefetch(...) as results:``) so an early exit cancels the work at
    once; see the module docstring for the guarantees.
    """
    return Prefetch(thunks, ahead)


def produced_ahead(items: Iterator[T], ahead: int, name: str = "ssl4eos12-ahead") -> Iterator[T]:
    """The items of ``items``, each produced in a background thread up to ``ahead`` items before it is asked
    for: for a step whose work (reading, decoding) releases the GIL, to overlap the consumer's use of the last
    item. The items are produced in the context (:mod:`contextvars`) of the first request, one at a time.

    Closing this generator (a ``break``, an exception, garbage collection) cancels the production, joins the
    thread and then closes ``items``; an exception of ``items`` comes out of ``next()``, as ``items`` raised it.
    """
    end = object()
    step = functools.partial(contextvars.copy_context().run, next, items, end)
    with contextlib.closing(items), Prefetch(itertools.repeat(step), ahead, name) as produced:
        for item in produced:
            if item is end:
                return
            yield item
