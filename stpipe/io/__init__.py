"""Reading and writing: source files, the Zarr store and its manifest, ingestion, checkpoints."""
