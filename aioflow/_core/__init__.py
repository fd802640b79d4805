"""aioflow's implementation. Private: import the public names from :mod:`aioflow` (and
:mod:`aioflow.kafka`, :mod:`aioflow.testing`); anything here may change without notice."""


def rehome(names: list[str], namespace: dict[str, object], module: str) -> None:
    """Give the public ``names`` of ``module`` that module as ``__module__`` (as anyio
    does), so reprs, tracebacks and docs show ``aioflow.App``, not where it is built."""
    for name in names:
        value = namespace[name]
        if getattr(value, "__module__", "").startswith("aioflow._core"):
            value.__module__ = module
