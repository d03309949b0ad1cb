"""Checkpoints: a write killed at any moment never loads silently, damaged files are refused with a clear
error, and resuming reproduces the uninterrupted run bit for bit."""
from __future__ import annotations

import io
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc import optim
from graphc.nn import Dense, Dropout, Sequential
from graphc.train import CheckpointError, EarlyStopping, load_checkpoint, save_checkpoint, schedules

REPO = Path(__file__).resolve().parents[1]

# Saves an 8 MB checkpoint over and over, version base+1, base+2, ...; prints each version once it is saved.
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from graphc.train.checkpoint import save_checkpoint
    path, base = sys.argv[1], int(sys.argv[2])
    big = np.empty((1024, 1024))
    print("ready", flush=True)
    v = base
    while True:
        v += 1
        big.fill(v)
        save_checkpoint(path, {"w": big, "version": np.array(v)}, {"version": v})
        print(v, flush=True)
""")

# Saves version 1 (unless told not to), then starts version 2 and stops for good halfway through writing it.
STALLED_WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import graphc.io
    from graphc.train.checkpoint import save_checkpoint
    path, first = sys.argv[1], sys.argv[2] == "1"
    big = np.empty((1024, 1024))
    if first:
        save_checkpoint(path, {"w": big * 0 + 1, "version": np.array(1)}, {"version": 1})
    real_fdopen = os.fdopen

    class HalfThenStall:
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return False
        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            print("half", flush=True)
            time.sleep(60)

    graphc.io.os.fdopen = lambda fd, mode: HalfThenStall(real_fdopen(fd, mode))
    save_checkpoint(path, {"w": big * 0 + 2, "version": np.array(2)}, {"version": 2})
""")


def start(script: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=str(REPO))


def kill(proc: subprocess.Popen) -> list[str]:
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return out.split()


def assert_whole(path: Path, allowed: set[int]) -> int:
    params, meta = load_checkpoint(str(path))
    v = meta["version"]
    assert v in allowed, (v, allowed)
    assert int(params["version"]) == v and params["w"].shape == (1024, 1024)
    assert (params["w"] == v).all()  # every byte of the big array is this version's
    return v


def test_a_checkpoint_killed_at_random_moments_never_loads_silently(tmp_path):
    path = tmp_path / "ckpt.npz"
    rng = random.Random(1234)
    last_saved = None  # the newest version any writer finished (printed after os.replace)
    for run, delay in enumerate([0.0] + [rng.uniform(0.05, 0.5) for _ in range(4)]):
        base = 1000 * (run + 1)
        proc = start(WRITER, str(path), str(base))
        assert proc.stdout.readline().strip() == "ready"
        if delay:
            import time
            time.sleep(delay)
        printed = [int(v) for v in kill(proc)]
        in_flight = (printed[-1] + 1) if printed else base + 1  # may have been renamed before it was printed
        if printed:
            last_saved = printed[-1]
        if last_saved is None and not path.exists():
            with pytest.raises(CheckpointError, match="does not exist"):
                load_checkpoint(str(path))
            continue
        # a whole checkpoint: the newest one saved, or the one being written if its rename had happened
        v = assert_whole(path, {last_saved, in_flight} - {None})
        last_saved = v
    assert last_saved is not None  # at least one run got a checkpoint written


@pytest.mark.parametrize("had_one", [True, False])
def test_a_checkpoint_killed_halfway_through_writing_leaves_the_previous_one(tmp_path, had_one):
    path = tmp_path / "ckpt.npz"
    proc = start(STALLED_WRITER, str(path), "1" if had_one else "0")
    assert proc.stdout.readline().strip() == "half"
    kill(proc)
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < 8 * 1024 * 1024  # killed mid-write indeed
    if had_one:
        assert_whole(path, {1})
    else:
        assert not path.exists()
        with pytest.raises(CheckpointError, match=r"ckpt\.npz does not exist"):
            load_checkpoint(str(path))


def stalled_writer(path: Path) -> subprocess.Popen:
    """A process that saved ``path``'s version 1 and stopped halfway through writing version 2."""
    proc = start(STALLED_WRITER, str(path), "1")
    assert proc.stdout.readline().strip() == "half"
    return proc


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tmp-"))


def save_version(path: Path, v: int) -> None:
    save_checkpoint(str(path), {"w": np.full((1024, 1024), float(v)), "version": np.array(v)}, {"version": v})


def test_the_next_save_removes_the_temporary_file_of_a_killed_writer(tmp_path):
    path = tmp_path / "ckpt.npz"
    kill(stalled_writer(path))
    assert len(leftovers(tmp_path)) == 1  # what the killed write left
    assert_whole(path, {1})
    save_version(path, 3)
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    assert_whole(path, {3})


def test_a_live_writers_temporary_file_is_left_alone_until_it_dies(tmp_path):
    path = tmp_path / "ckpt.npz"
    proc = stalled_writer(path)
    try:
        (live,) = leftovers(tmp_path)
        assert live.startswith(f".tmp-ckpt.npz.{socket.gethostname()}.{proc.pid}.")  # it names its writer
        size = (tmp_path / live).stat().st_size
        save_version(path, 3)  # another process is writing the same checkpoint right now: not ours to remove
        assert leftovers(tmp_path) == [live] and (tmp_path / live).stat().st_size == size
        assert_whole(path, {3})
    finally:
        kill(proc)
    save_version(path, 4)  # now its writer is dead
    assert leftovers(tmp_path) == []
    assert_whole(path, {4})


# -- damaged files --------------------------------------------------------------------------------------------

PARAMS = {"dense_1.W": np.arange(12, dtype=np.float32).reshape(3, 4), "dense_1.W.m": np.linspace(0, 1, 5),
          "adam.t": np.array(3.0)}
META = {"epoch": 2, "step_count": 8, "schedule": {"lr": 0.01}}


def same_as_saved(params, meta) -> bool:
    return (meta == META and set(params) == set(PARAMS)
            and all(params[k].dtype == PARAMS[k].dtype and np.array_equal(params[k], PARAMS[k]) for k in PARAMS))


def test_round_trip(tmp_path):
    save_checkpoint(str(tmp_path / "c.npz"), PARAMS, META)
    assert same_as_saved(*load_checkpoint(str(tmp_path / "c.npz")))


@pytest.mark.parametrize("keep", [0, 1, 30, 0.5, -1])
def test_a_truncated_file_is_refused(tmp_path, keep):
    path = tmp_path / "c.npz"
    save_checkpoint(str(path), PARAMS, META)
    data = path.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r"c\.npz is truncated or corrupt"):
        load_checkpoint(str(path))


def test_every_flipped_byte_is_refused_or_harmless(tmp_path):
    """Flip each byte of a checkpoint in turn: loading must raise CheckpointError or return exactly what
    was saved (a flip in, say, a zip timestamp changes nothing). No other outcome, no other exception."""
    path = tmp_path / "c.npz"
    save_checkpoint(str(path), PARAMS, META)
    data = path.read_bytes()
    refused = 0
    for mask in (0x01, 0x80, 0xFF):
        for i in range(len(data)):
            flipped = bytearray(data)
            flipped[i] ^= mask
            bad = tmp_path / f"bad-{i}.npz"  # a new file each time: rewriting one in place is slow on ext4
            bad.write_bytes(bytes(flipped))
            try:
                loaded = load_checkpoint(str(bad))
            except CheckpointError as err:
                assert f"bad-{i}.npz" in str(err)
                refused += 1
                continue
            finally:
                bad.unlink()
            assert same_as_saved(*loaded), f"byte {i} ^ {mask:#x} loaded silently altered data"
    assert refused > 0.7 * 3 * len(data)


def test_a_flip_in_array_data_is_named(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(str(path), PARAMS, META)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(np.linspace(0, 1, 5).tobytes()) + 9  # inside dense_1.W.m's values
    data[at] ^= 0x04
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c\.npz is truncated or corrupt .*dense_1\.W\.m"):
        load_checkpoint(str(path))


def rewrite_member(path: Path, member: str, array: np.ndarray) -> None:
    """Replace one array of the archive, with a valid zip CRC: only graphc's own checksums can tell."""
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.save(buf, array)
    members[member] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)


def test_an_altered_array_fails_its_checksum(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(str(path), PARAMS, META)
    altered = PARAMS["dense_1.W"].copy()
    altered[1, 2] += 1.0
    rewrite_member(path, "dense_1.W.npy", altered)
    with pytest.raises(CheckpointError, match=r"array 'dense_1\.W' does not match its checksum"):
        load_checkpoint(str(path))


def test_a_foreign_npz_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, w=np.ones(3))
    with pytest.raises(CheckpointError, match="no manifest: not written by graphc"):
        load_checkpoint(str(path))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.npz does not exist"):
        load_checkpoint(str(tmp_path / "nowhere.npz"))


# -- resume ------------------------------------------------------------------------------------------------------

def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)  # 50 rows, batches of 16: a partial last batch
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    xv = rng.normal(size=(30, 6)).astype(np.float32)
    yv = (xv[:, 0] + xv[:, 1] > 0).astype(np.int64)
    return (x, y), (xv, yv)


def new_model():
    return Sequential([Dense(16, "relu"), Dropout(0.25), Dense(3)], input_shape=(6,), seed=3)


SCHEDULES = {
    "step-per-epoch": lambda: schedules.step(0.02, drop=0.5, every=1),
    "step-per-step": lambda: schedules.step(0.02, drop=0.7, every=3, per="step"),
    "plateau": lambda: schedules.reduce_on_plateau(0.05, patience=1),
}
CONSTANT = {"constant": lambda: schedules.constant(0.05)}


def run(epochs, path, resume=False, schedule="step-per-epoch", early_stopping=None):
    train, val = problem()
    model = new_model()  # a NEW model and Trainer every time: nothing carries over but the file
    h = graphc.fit(model, train, epochs=epochs, batch_size=16, optimizer=optim.Adam(0.01),
                   schedule={**SCHEDULES, **CONSTANT}[schedule](), validation_data=val, early_stopping=early_stopping, seed=7,
                   checkpoint=str(path), resume=resume, backend="reference", verbose=False)
    return model, h


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path, schedule):
    straight, h_straight = run(4, tmp_path / "straight.npz", schedule=schedule)
    run(2, tmp_path / "resumed.npz", schedule=schedule)
    resumed, h_resumed = run(4, tmp_path / "resumed.npz", resume=True, schedule=schedule)
    a, b = straight._trainer.state, resumed._trainer.state  # weights and Adam's moments and step count
    assert sorted(a) == sorted(b) and "adam.t" in a and float(a["adam.t"]) == 4 * 4
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert a[k].dtype == b[k].dtype
    for k in ("loss", "acc", "val_loss", "lr"):
        assert h_straight[k] == h_resumed[k], k
    assert h_resumed.epochs == [1, 2, 3, 4]
    if schedule == "step-per-epoch":
        assert h_straight["lr"] == pytest.approx([0.02, 0.01, 0.005, 0.0025])
    # the checkpoint after 4 epochs is the same in both runs, too
    pa, ma = load_checkpoint(str(tmp_path / "straight.npz"))
    pb, mb = load_checkpoint(str(tmp_path / "resumed.npz"))
    assert ma["epoch"] == mb["epoch"] == 4 and ma["step_count"] == mb["step_count"] == 16
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


def test_resume_with_early_stopping_matches_the_uninterrupted_run(tmp_path):
    """Early stopping's best weights and its patience count survive the interruption."""
    es = lambda: EarlyStopping(patience=2)  # noqa: E731
    straight, h_straight = run(30, tmp_path / "straight.npz", schedule="constant", early_stopping=es())
    assert h_straight.stopped_early and h_straight.best_epoch < len(h_straight.epochs) < 30
    cut = h_straight.best_epoch + 1  # interrupted after the best epoch, with one bad epoch counted
    run(cut, tmp_path / "resumed.npz", schedule="constant", early_stopping=es())
    resumed, h_resumed = run(30, tmp_path / "resumed.npz", resume=True, schedule="constant", early_stopping=es())
    assert h_resumed.epochs == h_straight.epochs and h_resumed.best_epoch == h_straight.best_epoch
    for k, v in straight.named_values().items():
        np.testing.assert_array_equal(resumed.named_values()[k], v, err_msg=k)


@pytest.mark.parametrize("layers,message", [
    (lambda: [Dense(8), Dense(3)], r"dense_1\.W \[6, 16\] \(model: \[6, 8\]\).*: it was written for another model"),
    (lambda: [Dense(16), Dense(16), Dense(3)], r"lacks \['dense_3\.W', 'dense_3\.b'\]: it was written for another model"),
])
def test_resuming_a_checkpoint_of_another_model_is_refused(tmp_path, layers, message):
    run(1, tmp_path / "c.npz")
    train, _ = problem()
    other = Sequential(layers(), input_shape=(6,))
    with pytest.raises(CheckpointError, match=message):
        graphc.fit(other, train, epochs=2, batch_size=16, checkpoint=str(tmp_path / "c.npz"), resume=True,
                   backend="reference", verbose=False)
