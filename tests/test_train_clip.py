"""The toy CLIP trainer: the same batches in the same order however many loader processes, repeatable
CPU training, the image output offset, and its settings' checks and flags."""
import itertools

import pytest
import torch
from safetensors.torch import load_file

from decap_core.clip import create_model
from decap_core.clip_training import ClipTrainSettings, ToyPairs, offset_image_output, train_clip
from decap_core.devices import cores_left_to
from decap_core.errors import DecapError
from jobs import train_clip as train_clip_job


def first_batches(workers: int, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    spawn = {"multiprocessing_context": "spawn"} if workers else {}
    loader = torch.utils.data.DataLoader(ToyPairs("toy-clip", seed=3, batch_size=4, nuisances="web"),
                                         batch_size=None, num_workers=workers, **spawn)
    return list(itertools.islice(loader, count))


def test_loader_processes_take_turns_without_changing_the_batches():
    alone, shared = first_batches(0), first_batches(2)
    assert len(alone) == len(shared) == 4
    for (pixels_a, tokens_a), (pixels_b, tokens_b) in zip(alone, shared):
        assert torch.equal(tokens_a, tokens_b)
        assert torch.equal(pixels_a, pixels_b)
    assert not torch.equal(alone[0][1], alone[1][1])  # consecutive batches differ: no worker repeats another's


@pytest.fixture
def two_threads():
    """Several threads are what made CPU trainings of one seed drift apart; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_two_cpu_trainings_of_one_seed_give_the_same_weights(tmp_path, two_threads):
    weights = []
    for run in ("first", "second"):
        out = str(tmp_path / f"{run}.safetensors")
        settings = ClipTrainSettings(steps=30, batch_size=64, warmup=5, eval_count=10, device="cpu",
                                     workers=0)  # rendering in process: the training keeps both threads
        train_clip(out, settings)
        weights.append(load_file(out))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_training_leaves_the_loaders_their_cores_and_gives_the_threads_back(two_threads):
    with cores_left_to(1, torch.device("cpu")):
        assert torch.get_num_threads() == 1
    with cores_left_to(0, torch.device("cpu")):
        assert torch.get_num_threads() == 2
    with cores_left_to(5, torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_image_output_offset_sets_the_resnet_bias_and_refuses_other_towers():
    model, _ = create_model("toy-clip")
    before = model.visual.attnpool.c_proj.bias.clone()
    offset_image_output(model, 0.0, seed=0)
    assert torch.equal(model.visual.attnpool.c_proj.bias, before)
    offset_image_output(model, 25.0, seed=0)
    assert abs(float(model.visual.attnpool.c_proj.bias.norm()) - 25.0) < 1e-4
    with pytest.raises(DecapError, match="ModifiedResNet"):
        offset_image_output(create_model("ViT-B-32")[0], 25.0, seed=0)


@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "steps must be an integer >= 1, got 0"),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
    ({"nuisances": "webb"}, "unknown nuisance setting 'webb'; choose one of clean, web, web-ood"),
    ({"workers": -1}, "workers must be an integer >= 0"),
    ({"image_offset": -1.0}, "image_offset must be a finite number >= 0"),
    ({"device": "tpu"}, "device must be cpu or cuda, got 'tpu'"),
    ({"clip_model": "no-such-clip"}, "unknown CLIP architecture 'no-such-clip'"),
])
def test_bad_settings_are_refused_with_one_line(bad, message):
    with pytest.raises(DecapError, match=f"^{message}"):
        ClipTrainSettings(**bad)


def test_flags_are_the_settings_fields_with_their_defaults(tmp_path):
    with pytest.raises(DecapError, match="^batch_size must be an integer >= 1, got 0$"):
        train_clip_job.main(["--out", str(tmp_path / "clip.safetensors"), "--batch-size", "0"])
    with pytest.raises(DecapError, match="^warmup must be an integer >= 0, got -1$"):
        train_clip_job.train_clip(str(tmp_path / "clip.safetensors"), warmup=-1)
    assert not (tmp_path / "clip.safetensors").exists()
