"""aioflow's implementation. Private: import the public names from :mod:`aioflow` (and
:mod:`aioflow.kafka`, :mod:`aioflow.testing`); anything here may change without notice."""
