"""Nothing is unpickled from user files: a pickle with a payload, named as a trainer checkpoint, is refused unrun."""
import os
import pickle

import pytest

from decap_core.errors import DecapError
from decap_core.trainer_checkpoints import TRAINER_STATE, checkpoint_dir, load_latest


class Payload:
    """Unpickling this creates the file named ``marker``: the proof that pickle ran it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (self.marker,))


def test_a_pickled_payload_named_trainer_pt_is_refused_without_running(tmp_path):
    marker = tmp_path / "payload-ran"
    directory = tmp_path / checkpoint_dir("run", 100)
    directory.mkdir(parents=True)
    (directory / TRAINER_STATE).write_bytes(pickle.dumps({"step": 100, "state": Payload(str(marker))}))
    with pytest.raises(DecapError, match="is damaged"):
        load_latest(str(tmp_path / "run"))
    assert not marker.exists()
    pickle.loads((directory / TRAINER_STATE).read_bytes())  # what plain unpickling would have done
    assert marker.exists()
