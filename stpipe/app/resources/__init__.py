"""Files that stpipe ships as package data: the example configs and the Prefect deployments.

The folder mirrors the repository root, so the paths inside ``prefect.yaml``
(``data/configs/…``, ``flows/…``) mean the same here as there. In a checkout ``data`` and
``deployments`` are symlinks to the repository's own folders (one copy, the one that
``prefect deploy`` and users read); a wheel holds copies of the files, made when it is built.
The paths are resolved, so in a checkout they name the repository's files, and a config's
relative paths (its ``workdir``) mean what they mean for ``stpipe … data/configs/…``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# stpipe is installed as plain files (a wheel or a checkout), never zipped: a real path.
ROOT = Path(files(__name__))
EXAMPLE_CONFIGS = (ROOT / "data" / "configs").resolve()
PREFECT_FILE = (ROOT / "deployments" / "prefect.yaml").resolve()
