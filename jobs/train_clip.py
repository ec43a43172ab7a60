"""Train the toy world's tiny CLIP contrastively, with the temperature fixed at CLIP's final value.

The toy CLIP stands in for CLIP's web pre-training. Its logit scale stays at 100, as CLIP's
ends up: with a learned temperature the toy model closes the modality gap that DeCap exists to
bridge, which would make the toy world useless for measuring it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import time

import fsspec
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from decap_core import toyeval, toyworld
from decap_core.clip import create_model, encode_tokens_packed, load_clip
from decap_core.devices import default_device, repeatable_on_cpu
from decap_core.errors import DecapError
from decap_core.optim import adamw, warmup_cosine

FIXED_LOGIT_SCALE = 100.0


class ToyPairs(torch.utils.data.IterableDataset):
    """Endless batches of rendered toy images (CLIP-preprocessed) and tokenised captions."""

    def __init__(self, model_name: str, seed: int, batch_size: int, render_size: int):
        self.model_name, self.seed, self.batch_size, self.render_size = model_name, seed, batch_size, render_size

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        rank, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        if worker:
            torch.set_num_threads(1)  # each loader process renders on one core
        _, preprocess = create_model(self.model_name)
        tokenizer = open_clip.get_tokenizer(self.model_name)
        stream = toyworld.pairs(self.seed, "clip")
        for index in itertools.count():
            batch = [next(stream) for _ in range(self.batch_size)]
            if index % workers != rank:  # loader processes take turns: the same batches in the same order
                continue
            pixels = torch.stack([preprocess(toyworld.render(scene, self.render_size, supersample=2)) for scene, _ in batch])
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
        raise DecapError("an image output offset needs open_clip's ModifiedResNet image tower (its attention pool's bias)")
    direction = torch.randn(attention_pool.c_proj.bias.shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        attention_pool.c_proj.bias.copy_(direction / direction.norm() * norm)


def train_clip(
    out: str,
    model_name: str = "toy-clip",
    steps: int = 800,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 50,
    weight_decay: float = 0.1,
    seed: int = 0,
    render_size: int = 128,
    eval_count: int = 300,
    image_offset: float = 25.0,
    workers: int = 1,
    device: str | None = None,
) -> dict[str, float]:
    """Train, save the state dict as safetensors at ``out``, and return the held-out report.

    ``image_offset``: length of the image tower's starting output bias (see ``offset_image_output``).
    ``workers`` loader processes render the pairs; ``device`` defaults to CUDA when there is one.
    """
    device = default_device(device)
    torch.manual_seed(seed)
    model, _ = create_model(model_name, seed)
    offset_image_output(model, image_offset, seed)
    model.to(device, memory_format=torch.channels_last)  # faster convolutions, on the CPU too
    model.logit_scale.data.fill_(math.log(FIXED_LOGIT_SCALE))
    model.logit_scale.requires_grad_(False)
    model.train()
    optimizer = adamw(model, lr, weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    loss_fn = open_clip.ClipLoss()
    loader = torch.utils.data.DataLoader(
        ToyPairs(model_name, seed, batch_size, render_size), batch_size=None, num_workers=workers,
        multiprocessing_context="spawn", prefetch_factor=4, pin_memory=device.type == "cuda",
    )
    progress = tqdm(zip(range(steps), loader), total=steps, desc="train-clip", unit="step")
    started = time.time()
    with repeatable_on_cpu(device):
        for _, (pixels, tokens) in progress:
            pixels, tokens = pixels.to(device, non_blocking=True), tokens.to(device, non_blocking=True)
            image_features = F.normalize(model.encode_image(pixels.contiguous(memory_format=torch.channels_last)), dim=-1)
            text_features = encode_tokens_packed(model, tokens)  # real tokens only: no compute on padding
            loss = loss_fn(image_features, text_features, model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            progress.set_postfix(loss=f"{loss.item():.3f}")
    with fsspec.open(out, "wb") as handle:
        handle.write(save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}))
    clip = load_clip(model_name, out, device=str(device))
    report = toyeval.clip_report(clip, seed, count=eval_count)
    report["train_seconds"] = time.time() - started
    return report


def format_report(report: dict[str, float]) -> str:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="decap train-clip", description=__doc__)
    parser.add_argument("--out", required=True, help="checkpoint URL to write (.safetensors)")
    parser.add_argument("--clip-model", default="toy-clip")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-offset", type=float, default=25.0,
                        help="length of the image tower's starting output bias, which widens the modality gap (0: none)")
    parser.add_argument("--workers", type=int, default=1, help="loader processes rendering the pairs")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    args = parser.parse_args(argv)
    report = train_clip(args.out, args.clip_model, args.steps, args.batch_size, args.lr,
                        weight_decay=args.weight_decay, seed=args.seed, image_offset=args.image_offset, workers=args.workers, device=args.device)
    print(format_report(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
