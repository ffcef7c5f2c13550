"""A replica's share of the cluster-wide rate limits (a row's `rpm_limit`, an endpoint's)."""

from __future__ import annotations

__all__ = ["replica_share"]


def replica_share(members: int, partitions: int, mine: int) -> float | None:
    """This replica's share of a cluster-wide limit (a row's `rpm_limit`, say).

    With the consumer group's member count (`members` > 0, from the broker): 1/members, but
    members beyond the partition count own nothing and call nothing, so they take no share:
    1/min(members, partitions). When the broker reports no members (0; Tansu, until the group
    has committed offsets), this replica's fraction of the partitions, `mine/partitions`. None
    while this replica owns no partitions (it calls nothing; keep the share it has).
    """
    if mine <= 0:
        return None
    if members > 0:
        return 1.0 / (min(members, partitions) if partitions > 0 else members)
    if partitions > 0:
        return min(mine / partitions, 1.0)
    return None
