from hypothesis import given, settings
from hypothesis import strategies as st

from llm_worker.worker.stream.offsets import OffsetTracker, PartitionOffsets


def test_commit_stops_at_first_unfinished() -> None:
    p = PartitionOffsets()
    for off in range(10, 15):
        p.start(off)
    p.finish(11)
    p.finish(12)
    assert p.pending_commit() is None  # 10 still running
    p.finish(10)
    assert p.pending_commit() == 13  # 10, 11, 12 done; 13 not
    p.finish(14)
    assert p.pending_commit() == 13
    p.finish(13)
    assert p.pending_commit() == 15


def test_mark_committed_and_no_repeat() -> None:
    t = OffsetTracker()
    t.start("t", 0, 0)
    t.finish("t", 0, 0)
    commits = t.pending_commits()
    assert commits == {("t", 0): (1, 0)}
    t.mark_committed({k: off for k, (off, _epoch) in commits.items()})
    assert t.pending_commits() == {}


def test_gaps_in_offsets_are_not_waited_for() -> None:
    # compacted topics and transaction markers leave offsets that are never delivered
    p = PartitionOffsets()
    for off in (0, 1, 5, 9):
        p.start(off)
    for off in (9, 5, 1, 0):
        p.finish(off)
    assert p.pending_commit() == 10


def test_redelivered_offset_is_not_tracked_twice() -> None:
    p = PartitionOffsets()
    p.start(0)
    p.start(0)
    p.finish(0)
    assert p.in_flight == 0
    assert p.pending_commit() == 1
    p.start(0)  # already passed: ignored
    assert p.in_flight == 0


def test_drop_forgets_revoked_partitions() -> None:
    t = OffsetTracker()
    t.start("t", 0, 0)
    t.start("t", 1, 0)
    t.drop([("t", 0)])
    t.finish("t", 0, 0)
    t.finish("t", 1, 0)
    assert t.pending_commits() == {("t", 1): (1, 0)}


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=60),
    data=st.data(),
)
def test_committed_offset_never_passes_an_unfinished_message(n: int, data: st.DataObject) -> None:
    """For any finishing order, the committable offset is exactly 1 + the last offset of the
    finished prefix, so it never passes a message still in flight."""
    base = data.draw(st.integers(min_value=0, max_value=10_000))
    offsets = [base + i for i in range(n)]
    order = data.draw(st.permutations(offsets))
    p = PartitionOffsets()
    for off in offsets:
        p.start(off)
    finished: set[int] = set()
    committed: int | None = None
    for off in order:
        p.finish(off)
        finished.add(off)
        c = p.pending_commit()
        if c is not None:
            # every offset below the commit point is finished
            assert all(o in finished for o in range(base, c))
            # and the commit point is as far as it can go
            assert c == base + n or c not in finished
            assert committed is None or c >= committed
            p.committed = committed = c
        unfinished = set(offsets) - finished
        if unfinished and committed is not None:
            assert committed <= min(unfinished)
    assert committed == base + n


def test_a_partition_not_tracked_has_nothing_in_flight() -> None:
    t = OffsetTracker()
    t.start("t", 0, 5)
    assert t.in_flight("t", 9) == 0 and t.in_flight("u", 0) == 0
    assert t.in_flight() == 1


def test_marking_a_commit_of_a_dropped_partition_is_harmless() -> None:
    """A commit computed before a revoke dropped the partition, recorded after it."""
    t = OffsetTracker()
    t.start("t", 0, 0)
    t.finish("t", 0, 0)
    commits = t.pending_commits()
    t.drop([("t", 0)])
    t.mark_committed(commits)  # must not raise
    assert t.pending_commits() == {}


def test_offsets_passed_by_the_commit_point_leave_no_state() -> None:
    """Memory is bounded by what is in flight, not by how many offsets went by."""
    p = PartitionOffsets()
    for off in range(1000):
        p.start(off)
    for off in reversed(range(1000)):
        p.finish(off)
    assert p.safe == 1000 and p.in_flight == 0
    assert not p._done and not p._heap


def test_offsets_started_one_at_a_time_commit_each_time() -> None:
    """A partition read one record at a time: each starts at the commit point itself."""
    p = PartitionOffsets()
    for off in range(3):
        p.start(off)
        assert p.in_flight == 1
        p.finish(off)
        assert p.pending_commit() == off + 1


def test_a_finished_offset_redelivered_before_the_commit_point_passes_it() -> None:
    p = PartitionOffsets()
    p.start(4)
    p.start(5)
    p.finish(5)  # done, but 4 still runs: the commit point stays at 4
    p.start(5)  # redelivered after a seek: already done, not started again
    assert p.in_flight == 1
    p.finish(4)
    assert p.pending_commit() == 6
