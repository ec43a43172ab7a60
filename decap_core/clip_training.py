"""Train the toy world's tiny CLIP contrastively, with the temperature fixed at CLIP's final value.

The toy CLIP stands in for CLIP's web pre-training. Its logit scale stays at 100, as CLIP's
ends up: with a learned temperature the toy model closes the modality gap that DeCap exists to
bridge, which would make the toy world useless for measuring it.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import fsspec
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from decap_core.clip import create_model, encode_tokens_packed, list_models, load_clip
from decap_core.devices import cores_left_to, default_device, repeatable_on_cpu
from decap_core.errors import DecapError
from decap_core.optim import ClippedAdamW
from decap_core.settings import AT_LEAST_ONE, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, described, require
from decap_core.toy import looks, zero_shot
from decap_core.toy import world as toyworld

FIXED_LOGIT_SCALE = 100.0
GRAD_CLIP = 1.0
SUPERSAMPLE = 1  # training renders unsmoothed: CLIP's preprocessing resamples them anyway, at a third of the cost


@dataclass(frozen=True)
class ClipTrainSettings:
    """The toy CLIP trainer's settings, checked when made."""

    clip_model: str = described("toy-clip", "open_clip architecture to train (a toy config)")
    steps: int = 1100
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = described(50, "steps of linear learning-rate warm-up")
    weight_decay: float = 0.1
    seed: int = described(0, "seeds the initial weights and the rendered pairs")
    nuisances: str = described("web", "how the training images vary: a setting of decap_core.toy.looks "
                                      "(clean, web, web-ood)")
    eval_count: int = described(300, "held-out images of the report")
    image_offset: float = described(
        25.0, "length of the image tower's starting output bias, which widens the modality gap (0: none)")
    workers: int = described(1, "loader processes rendering the pairs (on the CPU, training takes the cores left)")
    device: str | None = described(None, "cpu or cuda (default: cuda when there is one)")

    def __post_init__(self) -> None:
        if self.clip_model not in list_models():
            raise DecapError(f"unknown CLIP architecture {self.clip_model!r}; choose one of open_clip.list_models(), "
                             "such as toy-clip")
        require(self, AT_LEAST_ONE, "steps", "batch_size", "eval_count")
        require(self, NON_NEGATIVE_INT, "warmup", "seed", "workers")
        require(self, POSITIVE, "lr")
        if self.nuisances not in looks.NUISANCES:
            raise DecapError(f"unknown nuisance setting {self.nuisances!r}; choose one of {', '.join(looks.NUISANCES)}")
        require(self, NON_NEGATIVE, "weight_decay", "image_offset")
        if self.device is not None and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise DecapError(f"device must be cpu or cuda, got {self.device!r}")


class ToyPairs(torch.utils.data.IterableDataset):
    """Endless batches of rendered toy images (CLIP-preprocessed) and tokenised captions."""

    def __init__(self, model_name: str, seed: int, batch_size: int, nuisances: str):
        self.model_name, self.seed, self.batch_size, self.nuisances = model_name, seed, batch_size, nuisances

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rank, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        if worker:
            torch.set_num_threads(1)  # each loader process renders on one core
        _, preprocess = create_model(self.model_name)
        tokenizer = open_clip.get_tokenizer(self.model_name)
        stream = toyworld.pairs(self.seed, "clip", nuisances=self.nuisances)
        for index in itertools.count():
            batch = [next(stream) for _ in range(self.batch_size)]
            if index % workers != rank:  # loader processes take turns: the same batches in the same order
                continue
            pixels = torch.stack([preprocess(toyworld.render(scene, supersample=SUPERSAMPLE))
                                  for scene, _ in batch])
            yield pixels, tokenizer([text for _, text in batch])


def offset_image_output(model: torch.nn.Module, norm: float, seed: int) -> None:
    """Start the image tower's output bias at a random vector of length ``norm``.

    Every image embedding then shares a component that training wears down only slowly, which keeps
    the image embeddings' cone apart from the text's, as real CLIP's are (the modality gap): the
    600-step toy CLIP ended at centroid distance 0.42-0.47 with an offset of 25, 0.37-0.42 without.
    Only the start is set; the bias keeps learning.
    """
    if norm == 0:
        return
    attention_pool = getattr(model.visual, "attnpool", None)
    if attention_pool is None:
        raise DecapError("an image output offset needs open_clip's ModifiedResNet image tower "
                         "(its attention pool's bias)")
    direction = torch.randn(attention_pool.c_proj.bias.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        attention_pool.c_proj.bias.copy_(direction / direction.norm() * norm)


def train_clip(out: str, settings: ClipTrainSettings | None = None) -> dict[str, float]:
    """Train, save the state dict as safetensors at ``out``, and return the held-out report."""
    s = settings or ClipTrainSettings()
    device = default_device(s.device)
    torch.manual_seed(s.seed)
    model, _ = create_model(s.clip_model, s.seed)
    offset_image_output(model, s.image_offset, s.seed)
    model.to(device, memory_format=torch.channels_last)  # faster convolutions, on the CPU too
    model.logit_scale.data.fill_(math.log(FIXED_LOGIT_SCALE))
    model.logit_scale.requires_grad_(False)
    model.train()
    optimiser = ClippedAdamW(model, s.lr, s.weight_decay, s.steps, s.warmup, GRAD_CLIP)
    loss_fn = open_clip.ClipLoss()
    loader = torch.utils.data.DataLoader(
        ToyPairs(s.clip_model, s.seed, s.batch_size, s.nuisances), batch_size=None,
        num_workers=s.workers,
        multiprocessing_context="spawn" if s.workers else None, prefetch_factor=4 if s.workers else None,
        pin_memory=device.type == "cuda",
    )
    progress = tqdm(zip(range(s.steps), loader), total=s.steps, desc="train-clip", unit="step")
    started = time.time()
    with repeatable_on_cpu(device), cores_left_to(s.workers, device):
        for _, (pixels, tokens) in progress:
            pixels, tokens = pixels.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
            channels_last = pixels.contiguous(memory_format=torch.channels_last)
            image_features = F.normalize(model.encode_image(channels_last), dim=-1)
            text_features = encode_tokens_packed(model, tokens)  # real tokens only: no compute on padding
            loss = loss_fn(image_features, text_features, model.logit_scale.exp())
            loss.backward()
            optimiser.step()
            progress.set_postfix(loss=f"{loss.item():.3f}")
    with fsspec.open(out, "wb") as handle:
        handle.write(save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}))
    clip = load_clip(s.clip_model, out, device=str(device))
    report = zero_shot.clip_report(clip, s.seed, count=s.eval_count, nuisances=s.nuisances)
    report["train_seconds"] = time.time() - started
    return report


def format_report(report: dict[str, float]) -> str:
    """The report of ``train_clip`` (or ``zero_shot.clip_report``) as three lines."""
    return "\n".join(
        [
            f"zero-shot, one object  (top-1 among all 'a <colour> <shape>'):  {report['single_object_top1']:.1%}",
            f"zero-shot, two objects (top-1 among all two-object captions):    {report['two_object_top1']:.1%}",
            "modality gap: "
            f"matched image/text cosine {report['matched_cosine']:.3f}, "
            f"text/text {report['text_text_cosine']:.3f}, image/image {report['image_image_cosine']:.3f}, "
            f"centroid distance {report['centroid_distance']:.3f}",
        ]
    )
