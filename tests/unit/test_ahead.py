"""met2net/data/ahead.py: an iterator on a thread of its own, a bounded number of items ahead."""

import threading

import pytest

from met2net.data.ahead import Ahead


@pytest.mark.parametrize("threaded", [True, False])
def test_items_come_in_order_on_another_thread_or_unthreaded_on_the_consumers(threaded):
    threads = []

    def items():
        for i in range(50):
            threads.append(threading.current_thread())
            yield i

    with Ahead(items(), threaded=threaded) as ahead:
        assert list(ahead) == list(range(50))
        assert next(ahead, "end") == "end"  # and it stays ended
    assert len(set(threads)) == 1 and (threading.current_thread() in threads) is not threaded


def test_the_iterators_error_is_raised_where_its_item_would_have_come():
    def items():
        yield 1
        yield 2
        raise ValueError("source 3 unreadable")

    with Ahead(items()) as ahead:
        assert [next(ahead), next(ahead)] == [1, 2]
        for _ in range(2):  # and again at every later call
            with pytest.raises(ValueError, match="source 3 unreadable"):
                next(ahead)


@pytest.mark.parametrize("depth", [1, 3])
def test_it_is_never_more_than_depth_items_beyond_the_one_in_hand(depth):
    """Made (the iterator's count) minus taken (the consumer's) stays at most ``depth`` + 1: ``depth`` waiting and
    one the thread holds while it waits, so memory stays at a few items whatever the sequence's length."""
    made, taken, most = [0], [0], [0]
    step = threading.Event()

    def items():
        for i in range(20):
            made[0] += 1
            yield i

    with Ahead(items(), depth=depth) as ahead:
        for _ in ahead:
            taken[0] += 1
            step.wait(0.01)  # the thread gets every chance to run further ahead
            most[0] = max(most[0], made[0] - taken[0])
    assert taken[0] == 20 and 1 <= most[0] <= depth + 1


def test_leaving_early_stops_the_thread_and_closes_the_iterator():
    """A consumer that fails mid-way leaves no thread reading (the sources close after it) and the iterator's
    cleanup has run."""
    closed = threading.Event()

    def items():
        try:
            yield from range(10**6)
        finally:
            closed.set()

    with pytest.raises(RuntimeError, match="write failed"):
        with Ahead(items(), name="t-ahead") as ahead:
            next(ahead)
            raise RuntimeError("write failed")
    assert closed.is_set()
    assert not any(t.name == "t-ahead" for t in threading.enumerate())
