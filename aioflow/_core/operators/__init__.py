"""What runs inside a task: map, filter, process, co-process, join, window and sink
operators, and the context user functions see. The machinery that moves their batches
(tasks, channels, writers) lives in :mod:`aioflow._core.runtime`."""
