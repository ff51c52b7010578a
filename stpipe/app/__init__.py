"""The application layer: the config file, the jobs, the CLI, the demo and the Prefect flows.

The only layer that reads :class:`~stpipe.app.config.Config` and knows that Prefect exists.
"""
