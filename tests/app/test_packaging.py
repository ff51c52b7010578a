"""stpipe as a package outside the source tree: what the wheel holds, where the shipped
example files come from, the floors of the dependencies, and the optional GRIB extra.

(``bash .ci/run package`` installs the wheel, with the floor versions of ``.ci/floors.txt``,
into a fresh venv, runs the demo from another directory and a fast subset of the tests.)
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from stpipe.app.resources import EXAMPLE_CONFIGS, PREFECT_FILE
from stpipe.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RESOURCES = "stpipe/app/resources"
FLOOR_NOT_INSTALLED = {"torch"}  # see the header of .ci/floors.txt


def _tracked_copy(dest: Path) -> Path:
    """The committed files (symlinks as symlinks): a wheel built in the checkout itself would
    also pack whatever a previous build left in ``build/``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    )
    for name in filter(None, listed.stdout.split("\0")):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    source = _tracked_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("stpipe-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


@pytest.mark.slow
def test_the_wheel_holds_the_package_its_example_files_and_nothing_else(wheel):
    names = wheel.namelist()
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))

    assert {n.split("/")[0] for n in names} == {"stpipe", dist_info}  # no flows/, tests/
    shipped = {
        f"{RESOURCES}/deployments/prefect.yaml": REPO / "deployments" / "prefect.yaml",
        **{
            f"{RESOURCES}/data/configs/{p.name}": p
            for p in sorted((REPO / "data" / "configs").glob("*.toml"))
        },
    }
    assert len(shipped) >= 3
    for name, source in shipped.items():
        assert wheel.read(name) == source.read_bytes(), name
    assert wheel.read(f"{dist_info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()


@pytest.mark.slow
def test_the_wheel_s_metadata_declares_the_license_and_grib_as_an_extra(wheel):
    metadata_file = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(wheel.read(metadata_file).decode())
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    always = {canonicalize_name(r.name) for r in requires if r.marker is None}
    grib = {
        canonicalize_name(r.name)
        for r in requires
        if r.marker is not None and r.marker.evaluate({"extra": "grib"})
    }

    assert metadata["License-Expression"] == "Apache-2.0"
    assert {"requests", "cftime", "psutil", "numpy", "zarr", "prefect", "mlflow"} <= always
    assert not always & {"cfgrib", "eccodes", "numcodecs"}
    assert {"cfgrib", "eccodes"} <= grib


def test_the_license_is_the_full_apache_2_text():
    text = (REPO / "LICENSE").read_text()

    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "9. Accepting Warranty or Additional Liability." in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert len(text.splitlines()) == 202


def test_in_a_checkout_the_shipped_files_are_the_repository_s_own():
    # one copy: the package's data/ and deployments/ are symlinks to the repository's
    assert EXAMPLE_CONFIGS == REPO / "data" / "configs"
    assert PREFECT_FILE == REPO / "deployments" / "prefect.yaml"
    for link in ("data", "deployments"):
        assert (REPO / RESOURCES / link).is_symlink(), link


@pytest.mark.parametrize("flow_file", sorted((REPO / "flows").glob("*.py")), ids=lambda p: p.name)
def test_each_entrypoint_file_re_exports_the_package_s_flow(flow_file):
    # what lets `stpipe serve` take flows/<name>.py:<flow> from stpipe.app.flows.<name>
    spec = importlib.util.spec_from_file_location(f"entrypoint_{flow_file.stem}", flow_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    package = importlib.import_module(f"stpipe.app.flows.{flow_file.stem}")

    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is getattr(package, name), name


def _declared_floors() -> dict[str, Version]:
    project = PYPROJECT["project"]
    floors = {}
    for text in [*project["dependencies"], *project["optional-dependencies"]["grib"]]:
        requirement = Requirement(text)
        (floor,) = (Version(s.version) for s in requirement.specifier if s.operator == ">=")
        for name in (requirement.name, *requirement.extras):  # dask[distributed]: both
            floors[canonicalize_name(name)] = floor
    return floors


def _pinned_floors() -> dict[str, Version]:
    pins = {}
    for line in (REPO / ".ci" / "floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            (pin,) = Requirement(line).specifier
            assert pin.operator == "==", line
            pins[canonicalize_name(Requirement(line).name)] = Version(pin.version)
    return pins


def test_the_floors_run_pins_each_declared_dependency_at_its_floor():
    declared = _declared_floors()
    pinned = _pinned_floors()  # also pins of dependencies of dependencies that the floors need

    assert {n: v for n, v in pinned.items() if n in declared} == {
        n: v for n, v in declared.items() if n not in FLOOR_NOT_INSTALLED
    }
    assert declared.keys() >= FLOOR_NOT_INSTALLED


def test_without_cfgrib_reading_grib_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cfgrib", None)  # as if the grib extra were not installed
    monkeypatch.delitem(sys.modules, "stpipe.io.sources.grib", raising=False)

    with pytest.raises(
        ConfigError, match=r"^GRIB files need cfgrib: pip install 'stpipe\[grib\]'$"
    ):
        importlib.import_module("stpipe.io.sources.grib")
