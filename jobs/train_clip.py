"""Train the toy world's tiny CLIP contrastively, with the temperature fixed at CLIP's final value.

The toy CLIP stands in for CLIP's web pre-training. Its logit scale stays at 100, as CLIP's
ends up: with a learned temperature the toy model closes the modality gap that DeCap exists to
bridge, which would make the toy world useless for measuring it.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import fsspec
import open_clip
import torch
from safetensors.torch import save as save_safetensors
from tqdm import tqdm

from decap_core import toyeval, toyworld
from decap_core.clip import create_model, load_clip
from decap_core.optim import adamw, warmup_cosine

FIXED_LOGIT_SCALE = 100.0


class ToyPairs(torch.utils.data.IterableDataset):
    """Endless batches of rendered toy images (CLIP-preprocessed) and tokenised captions."""

    def __init__(self, model_name: str, seed: int, batch_size: int, render_size: int):
        self.model_name, self.seed, self.batch_size, self.render_size = model_name, seed, batch_size, render_size

    def __iter__(self):
        torch.set_num_threads(1)  # one core renders while the other trains
        _, preprocess = create_model(self.model_name)
        tokenizer = open_clip.get_tokenizer(self.model_name)
        stream = toyworld.pairs(self.seed, "clip")
        while True:
            batch = [next(stream) for _ in range(self.batch_size)]
            pixels = torch.stack([preprocess(toyworld.render(scene, self.render_size, supersample=2)) for scene, _ in batch])
            yield pixels, tokenizer([text for _, text in batch])


def train_clip(
    out: str,
    model_name: str = "toy-clip",
    steps: int = 600,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 50,
    weight_decay: float = 0.1,
    seed: int = 0,
    render_size: int = 128,
    eval_count: int = 300,
) -> dict[str, float]:
    """Train, save the state dict as safetensors at ``out``, and return the held-out report."""
    torch.manual_seed(seed)
    model, _ = create_model(model_name, seed)
    model.logit_scale.data.fill_(math.log(FIXED_LOGIT_SCALE))
    model.logit_scale.requires_grad_(False)
    model.train()
    optimizer = adamw(model, lr, weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup))
    loss_fn = open_clip.ClipLoss()
    loader = torch.utils.data.DataLoader(
        ToyPairs(model_name, seed, batch_size, render_size), batch_size=None, num_workers=1,
        multiprocessing_context="spawn", prefetch_factor=4,
    )
    progress = tqdm(zip(range(steps), loader), total=steps, desc="train-clip", unit="step")
    started = time.time()
    for _, (pixels, tokens) in progress:
        image_features, text_features, logit_scale = model(pixels, tokens)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.3f}")
    with fsspec.open(out, "wb") as handle:
        handle.write(save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}))
    clip = load_clip(model_name, out)
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
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = train_clip(args.out, args.clip_model, args.steps, args.batch_size, args.lr,
                        weight_decay=args.weight_decay, seed=args.seed)
    print(format_report(report))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
