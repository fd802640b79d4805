"""Planning: from the logical graph to tasks of chained operators.

Forward-connected operators of equal parallelism run in one task, calling each other
directly: no channel, no task switch. An edge is chained when its target has no other
input and both ends have the same parallelism, and either the edge is forward or both
ends have parallelism 1 (then every partitioning sends everything to the one subtask,
so a ``key_by`` between two single subtasks costs nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aioflow._core.errors import PipelineError
from aioflow._core.graph.logical import DEFAULT, Edge, Node
from aioflow._core.runtime.partitioning import FORWARD, REBALANCE

__all__ = ["Plan", "PlannedEdge", "PlannedTask", "build_plan"]


@dataclass(eq=False)
class PlannedEdge:
    """An edge between two tasks, carried by channels."""

    source_task: PlannedTask
    target_task: PlannedTask
    source_node: Node
    target_node: Node
    partitioning: str
    edge: Edge

    def describe(self) -> str:
        how = self.partitioning
        if self.edge.side_tag is not None:
            how += f", side output {self.edge.side_tag!r}"
        if self.edge.input_number == 2:
            how += ", input 2"
        return f"task {self.target_task.index} ({how})"


@dataclass(eq=False)
class PlannedTask:
    index: int
    parallelism: int
    #: Chained operators, head first, in topological order.
    nodes: list[Node] = field(default_factory=list)
    #: Edges inside the task: (upstream, downstream, logical edge).
    chained: list[tuple[Node, Node, Edge]] = field(default_factory=list)
    inputs: list[PlannedEdge] = field(default_factory=list)
    outputs: list[PlannedEdge] = field(default_factory=list)

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def name(self) -> str:
        return self.chain_description()

    @property
    def is_source(self) -> bool:
        return self.head.source is not None

    def chain_description(self) -> str:
        """``a -> b -> c``, with branches of a fan-out separated by ``; ``."""
        successors: dict[int, list[Node]] = {}
        for upstream, downstream, _ in self.chained:
            successors.setdefault(upstream.id, []).append(downstream)
        paths: list[str] = []

        def walk(node: Node, prefix: str) -> None:
            path = f"{prefix} -> {node.name}" if prefix else node.name
            nexts = successors.get(node.id, [])
            if not nexts:
                paths.append(path)
            for i, nxt in enumerate(nexts):
                walk(nxt, path if i == 0 else node.name)

        walk(self.head, "")
        return "; ".join(paths)


@dataclass(eq=False)
class Plan:
    """The physical plan: tasks of chained operators and the edges between them."""

    app_name: str
    tasks: list[PlannedTask]
    parallelism: dict[int, int]

    @property
    def edges(self) -> list[PlannedEdge]:
        return [edge for task in self.tasks for edge in task.outputs]

    @property
    def stateful(self) -> bool:
        """The job keeps state beyond source positions and sink transactions: windows,
        rolling reduces, broadcast state, or anything after a ``key_by`` (keyed state and
        timers may be there)."""
        return any(node.stateful for task in self.tasks for node in task.nodes) or any(
            edge.edge.key_selector is not None for edge in self.edges
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app_name,
            "tasks": [
                {
                    "index": task.index,
                    "operators": [node.name for node in task.nodes],
                    "chain": task.chain_description(),
                    "parallelism": task.parallelism,
                    "outputs": [
                        {
                            "to_task": edge.target_task.index,
                            "partitioning": edge.partitioning,
                            "side_output": edge.edge.side_tag,
                            "input": edge.edge.input_number,
                        }
                        for edge in task.outputs
                    ],
                }
                for task in self.tasks
            ],
        }

    def __str__(self) -> str:
        operators = sum(len(task.nodes) for task in self.tasks)
        tasks = len(self.tasks)
        lines = [
            f"Plan for app {self.app_name!r}: {tasks} task{'s' * (tasks != 1)}, "
            f"{operators} operator{'s' * (operators != 1)}"
        ]
        for task in self.tasks:
            lines.append(f"  task {task.index} [parallelism {task.parallelism}]: {task.chain_description()}")
            for edge in task.outputs:
                lines.append(f"      -> {edge.describe()}")
        return "\n".join(lines)


def _resolve_parallelism(nodes: list[Node], default: int) -> dict[int, int]:
    resolved: dict[int, int] = {}
    for node in nodes:
        p = node.parallelism
        if node.source is not None:
            limit = node.source.max_parallelism
            if p is None:
                p = default if limit is None else min(default, limit)
            elif limit is not None and p > limit:
                raise PipelineError(
                    f"source {node.name!r}: parallelism {p} is more than this source supports ({limit})"
                )
        elif p is None:
            p = default
        resolved[node.id] = p
    return resolved


def _partitioning(edge: Edge, upstream_p: int, downstream_p: int, target: Node) -> str:
    if edge.partitioning == DEFAULT:
        return FORWARD if upstream_p == downstream_p else REBALANCE
    if edge.partitioning == FORWARD and upstream_p != downstream_p:
        raise PipelineError(
            f"operator {target.name!r}: a forward edge needs equal parallelism on both ends, but "
            f"{edge.source.name!r} has {upstream_p} and {target.name!r} has {downstream_p}; "
            "use rebalance() or set the same parallelism"
        )
    return edge.partitioning


def build_plan(app_name: str, nodes: list[Node], default_parallelism: int) -> Plan:
    """Chain the nodes (given in topological order) into tasks."""
    if not nodes:
        raise PipelineError(f"app {app_name!r} has no operators; add a source with app.source(...)")
    parallelism = _resolve_parallelism(nodes, default_parallelism)
    task_of: dict[int, PlannedTask] = {}
    tasks: list[PlannedTask] = []
    for node in nodes:
        p = parallelism[node.id]
        if len(node.inputs) == 1:
            edge = node.inputs[0]
            upstream_p = parallelism[edge.source.id]
            how = _partitioning(edge, upstream_p, p, node)
            if upstream_p == p and (how == FORWARD or p == 1):
                task = task_of[edge.source.id]
                task.nodes.append(node)
                task.chained.append((edge.source, node, edge))
                task_of[node.id] = task
                continue
        task = PlannedTask(index=len(tasks) + 1, parallelism=p, nodes=[node])
        tasks.append(task)
        task_of[node.id] = task
        for edge in node.inputs:
            upstream = task_of[edge.source.id]
            how = _partitioning(edge, parallelism[edge.source.id], p, node)
            planned = PlannedEdge(upstream, task, edge.source, node, how, edge)
            upstream.outputs.append(planned)
            task.inputs.append(planned)
    return Plan(app_name, tasks, parallelism)
