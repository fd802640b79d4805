"""The logical graph: named operators (nodes) and the edges between them.

The stream API builds it; :mod:`aioflow.graph.plan` turns it into tasks. A node knows
how to make a fresh runtime operator for each subtask; an edge says how records are
partitioned on their way (forward, hash by key, rebalance, broadcast, global) and which
output of the upstream node it reads (the main output or a side output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aioflow.connectors.base import Source
    from aioflow.operators.base import Operator
    from aioflow.time.watermarks import WatermarkStrategy

__all__ = ["DEFAULT", "Edge", "Node"]

#: Partitioning chosen at planning time: forward when parallelism matches, else rebalance.
DEFAULT = "default"


@dataclass(eq=False)
class Edge:
    source: Node
    partitioning: str = DEFAULT
    key_selector: Callable[[Any], Any] | None = None
    #: Read this side output of ``source`` instead of its main output.
    side_tag: str | None = None
    #: 1, or 2 for the second input of a two-input operator.
    input_number: int = 1


@dataclass(eq=False)
class Node:
    id: int
    name: str
    kind: str
    make_operator: Callable[[], Operator]
    parallelism: int | None = None
    inputs: list[Edge] = field(default_factory=list)
    source: Source | None = None
    timestamps: Callable[[Any], Any] | None = None
    watermarks: WatermarkStrategy | None = None
    #: True when the operator keeps keyed state (for the unnamed-operator warning).
    stateful: bool = False

    def __repr__(self) -> str:
        return f"<Node {self.name!r} ({self.kind})>"
