"""Prefect flows of stpipe: thin wrappers that wire the jobs into scheduled runs.

``ingest_flow``, ``train_flow``, ``forecast_flow`` and ``nightly_flow`` each take the path of
a pipeline config (TOML) and optional ``overrides`` (dotted keys, as ``--set`` on the CLI);
the tasks they call live in :mod:`stpipe.app.flows.common`. Deployments and their schedules
are in ``deployments/prefect.yaml``; the repository's ``flows/`` folder holds the entrypoint
files it names.
"""
