"""The long-lived worker that ``aioflow run`` is: stop signals and exit codes (``stop``),
``AIOFLOW_*`` configuration (``config``), and ``/health`` (``health``) and ``/metrics``
(``metrics``, ``collectors``) served over HTTP (``http``)."""
