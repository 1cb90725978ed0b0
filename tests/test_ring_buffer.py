import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capture.ring_buffer import BufferClosed, RingBuffer
from tests.conftest import DEADLINE_S, make_bgr_frame

# A program of operations on the buffer, checked against a plain-list model of what it should hold.
ops = st.lists(st.one_of(st.just(("put",)), st.just(("get",)), st.tuples(st.just("last"), st.integers(1, 6))),
               max_size=80)


@given(capacity=st.integers(1, 6), program=ops)
@settings(max_examples=200, deadline=None)
def test_matches_model(capacity, program):
    ring = RingBuffer(capacity)
    held: list[int] = []  # seqs in the buffer, oldest first
    unread: list[int] = []
    pushed = dropped = overwritten = read = 0
    seq = 0
    for op in program:
        if op[0] == "put":
            ring.put(make_bgr_frame(seq))
            if len(held) == capacity:
                evicted = held.pop(0)
                dropped += 1
                if unread and unread[0] == evicted:
                    unread.pop(0)
                    overwritten += 1
            held.append(seq)
            unread.append(seq)
            pushed += 1
            seq += 1
        elif op[0] == "get":
            if unread:
                assert ring.get(timeout=0).seq == unread.pop(0)
                read += 1
            else:
                with pytest.raises(TimeoutError):
                    ring.get(timeout=0)
        else:
            assert [f.seq for f in ring.last(op[1])] == held[-op[1]:]
        latest = ring.latest()
        assert (latest.seq if latest else None) == (held[-1] if held else None)
    s = ring.stats()
    assert (s.pushed, s.dropped, s.overwritten_unread, s.read, s.size) == (pushed, dropped, overwritten, read, len(held))


def test_fast_producer_slow_consumer_counts_every_drop():
    ring = RingBuffer(4)
    n = 3000
    got: list = []

    def consume():
        while True:
            try:
                got.append(ring.get(timeout=DEADLINE_S))
            except BufferClosed:
                return
            time.sleep(0.0002)  # slower than the producer, so the buffer overflows

    t = threading.Thread(target=consume)
    t.start()
    for i in range(n):
        ring.put(make_bgr_frame(i, value=i % 251))
    ring.close()
    t.join(DEADLINE_S)
    assert not t.is_alive(), "the consumer did not see the close"
    seqs = [f.seq for f in got]
    assert all(a < b for a, b in zip(seqs, seqs[1:])), "sequence numbers must strictly increase, no repeats"
    for f in got:  # not torn: every pixel is the value written with that seq
        assert (f.pixels == f.seq % 251).all()
    s = ring.stats()
    assert s.pushed == n
    assert s.read == len(got)
    assert s.overwritten_unread == n - len(got), "every frame the reader never saw is counted as lost"
    assert s.overwritten_unread > 0


def test_wait_newer_returns_newest_and_wakes_on_close():
    ring = RingBuffer(8)
    for i in range(5):
        ring.put(make_bgr_frame(i))
    assert ring.wait_newer(None, 0).seq == 4
    assert ring.wait_newer(2, 0).seq == 4
    with pytest.raises(TimeoutError):
        ring.wait_newer(4, 0.01)
    result = []
    t = threading.Thread(target=lambda: result.append(_catch(lambda: ring.wait_newer(4, 5.0))))
    t.start()
    time.sleep(0.05)  # most likely waiting by now; if not, it finds the buffer closed, with the same result
    ring.close()
    t.join(DEADLINE_S)
    assert not t.is_alive() and isinstance(result[0], BufferClosed)
    assert ring.latest().seq == 4, "frames already captured stay readable after close"


def test_wait_newer_moves_the_read_cursor():
    ring = RingBuffer(3)
    for i in range(3):
        ring.put(make_bgr_frame(i))
    assert ring.wait_newer(None, 0).seq == 2  # frames 0 and 1 are passed over on purpose
    ring.put(make_bgr_frame(3))  # evicts frame 0, which the consumer had already passed
    assert ring.stats().overwritten_unread == 0
    for i in range(4, 8):  # the consumer stalls; frame 3 is evicted before anyone reached it
        ring.put(make_bgr_frame(i))
    assert ring.stats().overwritten_unread == 2
    assert ring.get(timeout=0).seq == 5


def test_put_never_blocks_and_bad_capacity():
    with pytest.raises(ValueError):
        RingBuffer(0)
    ring = RingBuffer(2)
    # A consumer waits on the buffer all along, and nobody ever reads what is put: a put that waited
    # for room (as queue.Queue's does) would never return. The puts run in a thread so that such a put
    # fails the test instead of hanging it; how fast put is, the benchmark measures.
    waiter = threading.Thread(target=lambda: _catch(lambda: ring.wait_newer(10**9, DEADLINE_S)), daemon=True)
    waiter.start()
    producer = threading.Thread(target=lambda: [ring.put(make_bgr_frame(i)) for i in range(10000)], daemon=True)
    producer.start()
    producer.join(DEADLINE_S)
    assert not producer.is_alive(), f"put blocked on a full buffer after {ring.stats().pushed} frames"
    assert ring.stats().dropped == 9998
    ring.close()
    waiter.join(DEADLINE_S)


def _catch(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the test inspects the exception type
        return exc
