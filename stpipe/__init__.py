"""stpipe: spatiotemporal forecasting on gridded data.

The package is layered; each layer imports only the ones listed before it:

- :mod:`stpipe.core`: pure computation: grid, patch arithmetic, metrics, the model card, errors;
- :mod:`stpipe.models`: the networks and the baselines (torch);
- :mod:`stpipe.io`: source files, the Zarr store and its manifest, ingestion, checkpoints;
- :mod:`stpipe.learn`: the data context, the loader, statistics, training, evaluation;
- :mod:`stpipe.forecast`: full-grid forecasts (tiling) and the forecast store;
- :mod:`stpipe.tracking`: MLflow runs, logged models, the registry;
- :mod:`stpipe.app`: the config file, the jobs, the CLI, the demo and the Prefect flows.
"""

__version__ = "0.1.0"
