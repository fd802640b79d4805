"""How an edge spreads records over the subtasks it feeds.

- ``forward``: subtask *i* to subtask *i* (equal parallelism; chained when possible)
- ``hash``: by key, through key groups (:mod:`aioflow._core.runtime.keygroups`)
- ``rebalance``: round robin
- ``broadcast``: every record to every subtask
- ``global``: everything to subtask 0
"""

from __future__ import annotations

__all__ = ["BROADCAST", "FORWARD", "GLOBAL", "HASH", "PARTITIONINGS", "REBALANCE"]

FORWARD = "forward"
HASH = "hash"
REBALANCE = "rebalance"
BROADCAST = "broadcast"
GLOBAL = "global"
PARTITIONINGS = (FORWARD, HASH, REBALANCE, BROADCAST, GLOBAL)
