"""Snowflake ids: below 2^53, strictly increasing through bursts and clock steps."""
import pytest

from kefu import ids


class FakeClock:
    """A settable clock in ns, so bursts and steps back are exact."""

    def __init__(self, ms):
        self.ms = ms

    def __call__(self):
        return self.ms * 1_000_000


def test_max_id_is_below_2_53():
    assert ids.MAX_ID == 2**53 - 1
    assert float(ids.MAX_ID) == ids.MAX_ID


def test_ids_are_exact_as_doubles_at_the_end_of_time():
    clock = FakeClock(ids.EPOCH_MS + (1 << ids.TIME_BITS) - 1)
    gen = ids.Snowflake(ids.MAX_WORKER, clock=clock)
    value = gen()
    assert value <= ids.MAX_ID
    assert int(float(value)) == value


def test_overflow_past_2094_raises():
    clock = FakeClock(ids.EPOCH_MS + (1 << ids.TIME_BITS))
    with pytest.raises(OverflowError):
        ids.Snowflake(0, clock=clock)()


def test_burst_within_one_ms_strictly_increases():
    clock = FakeClock(ids.EPOCH_MS + 1000)
    gen = ids.Snowflake(3, clock=clock)
    got = [gen() for _ in range(10_000)]   # far beyond 32 per ms
    assert got == sorted(set(got))
    assert len(got) == 10_000


def test_clock_step_back_never_repeats():
    clock = FakeClock(ids.EPOCH_MS + 50_000)
    gen = ids.Snowflake(1, clock=clock)
    before = [gen() for _ in range(100)]
    clock.ms -= 10_000                      # NTP steps the clock back 10 s
    after = [gen() for _ in range(100)]
    seq = before + after
    assert seq == sorted(set(seq))


def test_catches_up_with_real_time_after_a_burst():
    clock = FakeClock(ids.EPOCH_MS + 1000)
    gen = ids.Snowflake(0, clock=clock)
    for _ in range(64):                     # borrows 1 ms ahead
        gen()
    clock.ms += 5
    assert ids.timestamp_ms(gen()) == clock.ms


def test_workers_never_collide():
    clock = FakeClock(ids.EPOCH_MS + 77)
    seen = set()
    for worker in range(ids.MAX_WORKER + 1):
        gen = ids.Snowflake(worker, clock=clock)
        for _ in range(100):
            seen.add(gen())
    assert len(seen) == (ids.MAX_WORKER + 1) * 100


def test_worker_field_bounds():
    with pytest.raises(ValueError):
        ids.Snowflake(ids.MAX_WORKER + 1)
    with pytest.raises(ValueError):
        ids.Snowflake(-1)
    assert ids.worker_for(15, 7) == ids.MAX_WORKER
    assert ids.worker_for(0, 0) == 0


def test_observe_moves_past_another_generators_id():
    clock = FakeClock(ids.EPOCH_MS + 1000)
    slow = ids.Snowflake(1, clock=clock)
    fast = ids.Snowflake(2, clock=FakeClock(ids.EPOCH_MS + 9000))
    other = fast()
    assert slow() < other
    slow.observe(other)
    assert slow() > other


def test_real_clock_ids_increase():
    gen = ids.Snowflake(5)
    got = [gen() for _ in range(1000)]
    assert got == sorted(set(got))
    assert all(0 < g <= ids.MAX_ID for g in got)
