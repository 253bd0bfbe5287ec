import os
import pickle

import pytest
import torch

from kshot.errors import CheckpointError
from kshot.files.checkpoint import load_checkpoint, read_weights
from kshot.io import atomic_path, load_tensors, read_json, save_tensors, write_json
from kshot.models import LeNet


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_the_next_write_removes_a_killed_writers_leftover_temporary_file(tmp_path):
    leftover = tmp_path / ".out.json.abc123.tmp"  # what a SIGKILL inside atomic_path leaves
    other = tmp_path / ".other.json.abc123.tmp"  # another output's: not ours to remove
    leftover.write_text("half")
    other.write_text("half")
    write_json(tmp_path / "out.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc123.tmp", "out.json"]


def test_write_json_is_byte_identical_for_equal_objects(tmp_path):
    write_json(tmp_path / "a.json", {"b": 1, "a": [0.5, 2]})
    write_json(tmp_path / "b.json", {"a": [0.5, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_corrupt_json_names_the_file(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"m.json.*corrupt"):
        read_json(tmp_path / "m.json", what="run metrics")


class Exploit:
    """Unpickling calls ``os.mkdir(marker)``: harmless, but visible proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "code-ran"
    with open(path, "wb") as f:
        torch.save({"arch": Exploit(marker)}, f, pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"evil.pt.*refused.*weights_only.*mkdir, which would run code"):
        load_tensors(path)
    with pytest.raises(CheckpointError, match=r"evil.pt.*refused"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the unsafe way, to show the file really runs code
    assert marker.exists()


def test_truncated_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"state_dict": LeNet(1, 28, 3).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"c.pt.*corrupt or truncated"):
        load_checkpoint(path)


def test_a_weights_file_in_torchs_legacy_format_is_named_as_such(tmp_path):
    path = tmp_path / "old.pth"
    torch.save(LeNet(1, 28, 3).state_dict(), path, _use_new_zipfile_serialization=False)
    with pytest.raises(
        CheckpointError, match=r"^weights file '.*old.pth': .*legacy format.*save it again"
    ) as err:
        read_weights(path)
    assert "\n" not in str(err.value)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    arch = {"backbone": "lenet", "in_channels": 1, "image_size": 28, "n_classes": 3, "width": 1.0}
    torch.save({"arch": arch, "state_dict": LeNet(1, 28, 3, width=0.5).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"c.pt.*another architecture"):
        load_checkpoint(path)


def test_written_files_get_the_umasks_permissions_not_mkstemps_private_ones(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640


def test_save_tensors_is_byte_identical_for_equal_contents(tmp_path):
    # a temporary file's random name must not end up inside the archive (DVC hashes the bytes)
    obj = {"x": torch.arange(6).view(2, 3), "meta": {"k": 5}}
    save_tensors(tmp_path / "a.pt", obj)
    save_tensors(tmp_path / "a.pt", obj)
    first = (tmp_path / "a.pt").read_bytes()
    save_tensors(tmp_path / "a.pt", obj)
    assert (tmp_path / "a.pt").read_bytes() == first
    save_tensors(tmp_path / "b.pt", obj)
    assert (tmp_path / "b.pt").read_bytes() == first
    assert torch.equal(load_tensors(tmp_path / "a.pt", "test file")["x"], obj["x"])
