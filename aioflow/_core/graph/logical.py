"""The logical graph: named operators (nodes) and the edges between them.

:class:`LogicalGraph` is the one place nodes are added: the stream API (streams, connected
streams, windowed streams, sources) calls :meth:`LogicalGraph.add_node`, which gives every
operator its unique name. :mod:`aioflow._core.graph.plan` turns the graph into tasks. A node knows
how to make a fresh runtime operator for each subtask; an edge says how records are
partitioned on their way (forward, hash by key, rebalance, broadcast, global) and which
output of the upstream node it reads (the main output or a side output).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aioflow._core.errors import PipelineError

if TYPE_CHECKING:
    from aioflow._core.connectors.base import Source
    from aioflow._core.runtime.operator import Operator
    from aioflow._core.time.watermarks import WatermarkStrategy

__all__ = ["DEFAULT", "Edge", "LogicalGraph", "Node"]

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


class LogicalGraph:
    """The nodes of one app, in the order they were added, with unique names."""

    def __init__(self, app_name: str, max_parallelism: int) -> None:
        self.app_name = app_name
        self.max_parallelism = max_parallelism
        self.nodes: list[Node] = []
        self._names: set[str] = set()

    def __len__(self) -> int:
        return len(self.nodes)

    def check_parallelism(self, parallelism: Any, where: str) -> int:
        if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism <= 0:
            raise PipelineError(f"{where}: parallelism must be a positive int, got {parallelism!r}")
        if parallelism > self.max_parallelism:
            raise PipelineError(
                f"{where}: parallelism {parallelism} is more than max_parallelism {self.max_parallelism}"
            )
        return parallelism

    def add_node(
        self,
        kind: str,
        name: str | None,
        derived: str | None,
        make: Callable[[str], Operator],
        parallelism: int | None,
        inputs: list[Edge],
        *,
        stateful: bool = False,
        **extra: Any,
    ) -> Node:
        """Add an operator. ``name`` is the user's (must be unique); without it the name is
        ``derived`` (from the function) or ``kind``, numbered when taken."""
        final = self._unique_name(name, derived, kind)
        if parallelism is not None:
            parallelism = self.check_parallelism(parallelism, f"operator {final!r}")
        if stateful and name is None and derived is None:
            warnings.warn(
                f"operator {final!r} keeps state but has a generated name; give it name=... so "
                "its state keeps its identity when the pipeline changes",
                stacklevel=4,
            )
        self._names.add(final)
        node = Node(
            id=len(self.nodes),
            name=final,
            kind=kind,
            make_operator=lambda: make(final),
            parallelism=parallelism,
            inputs=inputs,
            stateful=stateful,
            **extra,
        )
        self.nodes.append(node)
        return node

    def truncate(self, length: int) -> None:
        """Remove the nodes added after the graph had ``length`` nodes (and free their names)."""
        for node in self.nodes[length:]:
            self._names.discard(node.name)
        del self.nodes[length:]

    def _unique_name(self, explicit: str | None, derived: str | None, kind: str) -> str:
        if explicit is not None:
            if not isinstance(explicit, str) or not explicit:
                raise PipelineError(f"operator names are non-empty strings, got {explicit!r}")
            if explicit in self._names:
                raise PipelineError(
                    f"operator name {explicit!r} is already used in app {self.app_name!r}; "
                    "names identify operators (and their state) and must be unique"
                )
            return explicit
        base = derived or kind
        name, n = base, 1
        while name in self._names:
            n += 1
            name = f"{base}_{n}"
        return name
