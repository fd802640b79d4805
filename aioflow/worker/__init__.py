"""The long-lived worker that ``aioflow run`` is: stop signals and exit codes."""
