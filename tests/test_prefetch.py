"""ssl4eos12.prefetch: order, bound, errors per item, and nothing left behind by a closed or abandoned iteration."""

from __future__ import annotations

import gc
import threading

import pytest

from ssl4eos12.prefetch import Cancelled, CancelScope, current_scope, prefetch


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("ssl4eos12-")]


class Recorder:
    """Thunks that record when they start, and what the consumer had taken by then."""

    def __init__(self):
        self.started: list[tuple[int, int]] = []  # (item, items the consumer had taken)
        self.taken = 0
        self.threads = set()
        self.lock = threading.Lock()

    def thunk(self, i: int):
        def run():
            with self.lock:
                self.started.append((i, self.taken))
                self.threads.add(threading.current_thread())
            return i * i

        return run


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_results_in_order_and_never_more_than_ahead_in_advance(ahead):
    rec = Recorder()
    out = []
    with prefetch((rec.thunk(i) for i in range(10)), ahead=ahead) as results:
        for value in results:
            out.append(value)
            with rec.lock:
                rec.taken += 1
            threading.Event().wait(0.01)  # a slow consumer: the thunks get as far ahead as they may
    assert out == [i * i for i in range(10)]
    assert [i for i, _ in rec.started] == list(range(10))
    # Item i starts while the consumer holds item taken - 1 (taken is counted just after next() returns, so it
    # may lag by one): computed or running beyond the held item, i - taken + 1 <= ahead (+1 for the lag).
    distances = [i - taken + 1 for i, taken in rec.started]
    assert max(distances) <= ahead + 1, rec.started
    assert max(distances) >= ahead, rec.started  # and it does run that far ahead
    assert (rec.threads == {threading.current_thread()}) == (ahead == 0)
    assert not prefetch_threads()


def test_ahead_zero_runs_in_the_consumers_thread():
    seen = []
    with prefetch([lambda: seen.append(threading.current_thread())] * 2, ahead=0) as results:
        list(results)
    assert seen == [threading.current_thread()] * 2


def test_an_error_comes_out_at_its_item_and_iteration_goes_on():
    def boom():
        raise ValueError("item 1 is bad")

    with prefetch([lambda: 0, boom, lambda: 2], ahead=2) as results:
        assert next(results) == 0
        with pytest.raises(ValueError, match="item 1 is bad"):
            next(results)
        assert next(results) == 2
        with pytest.raises(StopIteration):
            next(results)


def blocking_thunks(started: threading.Event, interrupted: list):
    """A first thunk that returns, then one that blocks until its scope's closer interrupts it."""
    def block():
        release = threading.Event()
        started.set()
        try:
            with current_scope().closing(release.set):
                release.wait(60)
                current_scope().check()
        except Cancelled:
            interrupted.append(True)
            raise
        return "never taken"

    yield lambda: "first"
    yield block


def test_break_cancels_the_running_thunk_and_joins_the_thread():
    started, interrupted = threading.Event(), []
    with prefetch(blocking_thunks(started, interrupted), ahead=1) as results:
        for value in results:
            assert value == "first"
            assert started.wait(10)
            break
    assert interrupted == [True]
    assert not prefetch_threads()


def test_an_exception_in_the_consumer_and_an_abandoned_iterator_leave_no_thread():
    started, interrupted = threading.Event(), []

    def consumer():
        with prefetch(blocking_thunks(started, interrupted), ahead=1) as results:
            next(results)
            started.wait(10)
            raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        consumer()
    assert interrupted == [True] and not prefetch_threads()

    # never closed, only dropped: the garbage collector closes it
    started, interrupted = threading.Event(), []

    def generator():
        results = prefetch(blocking_thunks(started, interrupted), ahead=1)
        yield from results

    iterator = generator()
    assert next(iterator) == "first"
    assert started.wait(10)
    del iterator
    gc.collect()
    assert interrupted == [True] and not prefetch_threads()


def test_shared_objects_live_as_long_as_the_prefetch():
    closed = []

    def thunk():
        return current_scope().shared("pool", lambda: ["pool"], closed.append)

    with prefetch([thunk, thunk], ahead=1) as results:
        first, second = list(results)
    assert first is second and closed == [first]
    assert CancelScope().shared("x", list, closed.append) is not None
    assert current_scope().shared("x", list, closed.append) is None  # outside a prefetch: nothing shared


def test_bad_ahead_is_refused():
    with pytest.raises(ValueError, match="ahead must be an integer >= 0"):
        prefetch([], ahead=-1)


def test_produced_ahead_keeps_order_context_and_errors_and_leaves_nothing_behind():
    import contextvars

    from ssl4eos12.prefetch import produced_ahead

    setting = contextvars.ContextVar("setting", default="outside")
    produced, closed = [], []

    def items(fail_at=None):
        try:
            for i in range(6):
                if i == fail_at:
                    raise ValueError(f"item {i} is bad")
                produced.append((i, setting.get(), threading.current_thread().name))
                yield i
        finally:
            closed.append(threading.current_thread().name)

    token = setting.set("requested")  # the context of the first request is the one the items are made in
    try:
        assert list(produced_ahead(items(), 2)) == list(range(6))
    finally:
        setting.reset(token)
    assert {(s, t) for _, s, t in produced} == {("requested", "ssl4eos12-ahead")} and not prefetch_threads()

    produced.clear()
    ahead = produced_ahead(items(), 2)
    assert next(ahead) == 0
    ahead.close()  # a break: the thread is joined, then the items are closed here
    assert not prefetch_threads() and closed[-1] == threading.current_thread().name
    assert len(produced) <= 4  # the one taken, at most 2 ahead and one being made

    with pytest.raises(ValueError, match="item 3 is bad"):
        list(produced_ahead(items(fail_at=3), 2))
    assert not prefetch_threads()
