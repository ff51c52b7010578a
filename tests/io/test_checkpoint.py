"""Training checkpoints (stpipe.io.checkpoint): run keys, state digests, payloads that load
back exactly, writes that a kill cannot tear, and unreadable or foreign files refused."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stpipe.core.errors import StoreError
from stpipe.io.checkpoint import (
    LAST,
    capture_rng,
    load_checkpoint,
    restore_rng,
    run_key,
    save_checkpoint,
    state_digest,
)

REPO = Path(__file__).resolve().parents[2]
SECTIONS = {"train": {"epochs": 3, "lr": 1e-3}, "model": {"name": "convlstm"}}


def test_the_run_key_changes_with_everything_that_decides_the_weights() -> None:
    key = run_key(SECTIONS, store_digest="abc", device="cpu")
    assert len(key) == 16 and int(key, 16) >= 0
    assert run_key(dict(reversed(SECTIONS.items())), store_digest="abc", device="cpu") == key
    others = [
        run_key({**SECTIONS, "train": {"epochs": 4, "lr": 1e-3}}, store_digest="abc", device="cpu"),
        run_key(SECTIONS, store_digest="abd", device="cpu"),
        run_key(SECTIONS, store_digest="abc", device="cuda"),
        run_key(SECTIONS, store_digest="abc", device="cpu", init_digest="0123"),
    ]
    assert len({key, *others}) == 5


def test_the_state_digest_sees_names_dtypes_shapes_and_values() -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    digest = state_digest(state)
    assert state_digest({"b": torch.zeros(3), "w": torch.arange(6.0).reshape(2, 3)}) == digest
    assert state_digest({**state, "w": torch.arange(6.0).reshape(3, 2).t().contiguous().t()}) != (
        digest
    )
    assert state_digest({**state, "w": state["w"].t().contiguous().t()}) == digest  # strides
    assert state_digest({**state, "b": torch.zeros(3, dtype=torch.float64)}) != digest
    assert state_digest({**state, "b": torch.zeros(1, 3)}) != digest
    assert state_digest({"w": state["w"], "c": state["b"]}) != digest
    changed = state["w"].clone()
    changed[1, 2] = 5.5
    assert state_digest({**state, "w": changed}) != digest


def test_a_payload_loads_back_exactly(tmp_path: Path) -> None:
    payload = {
        "epoch": 3,
        "loss": 0.25,
        "key": "0123abcd",
        "history": [1.5, 1.0],
        "model": {"w": torch.randn(4, 5), "n": torch.tensor([1, 2], dtype=torch.int64)},
    }
    path = tmp_path / "ckpt" / LAST
    save_checkpoint(path, payload)
    loaded = load_checkpoint(path)
    assert loaded.keys() == payload.keys()
    assert (loaded["epoch"], loaded["loss"], loaded["key"], loaded["history"]) == (
        3,
        0.25,
        "0123abcd",
        [1.5, 1.0],
    )
    for name, tensor in payload["model"].items():
        assert torch.equal(loaded["model"][name], tensor)
    assert [p.name for p in path.parent.iterdir()] == [LAST], "no temporary file left"


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / LAST) is None


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / LAST
    save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 (torch.save's error for a lambda)
        save_checkpoint(path, {"epoch": 2, "hook": lambda: None})
    assert path.read_bytes() == before
    assert load_checkpoint(path) == {"epoch": 1}


KEEP_SAVING = """
import sys
from pathlib import Path
import torch
from stpipe.io.checkpoint import save_checkpoint
path = Path(sys.argv[1])
for i in range(1, 10**6):
    save_checkpoint(path, {"i": i, "w": torch.full((1 << 20,), float(i))})
    print(i, flush=True)
"""


def test_a_kill_during_saves_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / LAST
    for attempt in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", KEEP_SAVING, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        )
        assert writer.stdout.readline()  # one checkpoint written
        time.sleep(random.Random(attempt).uniform(0.05, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        loaded = load_checkpoint(path)
        assert loaded["i"] >= 1
        assert torch.equal(loaded["w"], torch.full((1 << 20,), float(loaded["i"])))


def test_a_corrupt_checkpoint_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / LAST
    save_checkpoint(path, {"w": torch.ones(1000)})
    path.write_bytes(path.read_bytes()[:200])  # torn by hand
    before = path.read_bytes()
    with pytest.raises(StoreError, match="delete it to start the run afresh") as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: checkpoint cannot be read (")
    assert path.read_bytes() == before


def test_a_checkpoint_holding_arbitrary_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / LAST
    torch.save({"epoch": 1, "where": Path("/elsewhere")}, path)  # needs unpickling a class
    with pytest.raises(StoreError, match=rf"^{path}: checkpoint cannot be read \(") as info:
        load_checkpoint(path)
    assert "delete it to start the run afresh" in str(info.value)


def test_the_random_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path / LAST, {"rng": capture_rng()})
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(load_checkpoint(tmp_path / LAST)["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected
