"""Batch forecasts: the champion over the whole grid, into a crash-safe forecast store.

- :mod:`~stpipe.forecast.tiling`: cutting the grid into overlapping tiles and stitching them;
- :mod:`~stpipe.forecast.predict`: the input window, tiling, stitching (torch);
- :mod:`~stpipe.forecast.store`: the forecast Zarr store and its commit protocol;
- :mod:`~stpipe.forecast.access`: where a forecast store lives, the writer's lock, I/O errors;
- :mod:`~stpipe.forecast.verify`: scoring past forecasts once their truth has arrived.
"""
