"""All of stpipe's MLflow use: runs, logged models, the registry and its aliases.

- :mod:`~stpipe.tracking.client`: the tracking URI, retries, errors, no leaked global state;
- :mod:`~stpipe.tracking.runs`: what a training run logs;
- :mod:`~stpipe.tracking.model`: pickle-free logged models and loading them back;
- :mod:`~stpipe.tracking.registry`: versions, the champion, promotion;
- :mod:`~stpipe.tracking.locks`: workdir locks (promotion) and run leases (killed jobs);
- :mod:`~stpipe.tracking.compare`: the versions side by side.

What a logged model was trained for (its card) needs no MLflow: :mod:`stpipe.core.card`.
"""
