"""Decoding speed: batched greedy decoding with a key/value cache against DeCap's reference way
(one image at a time, the whole sequence recomputed at every step), official-size decoder."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from decap_core.decoder import Decoder, DecoderConfig

STEPS = 30  # tokens per caption: every row runs to the limit (random weights never pick the end)


def _captions_per_second(model: Decoder, prefixes: torch.Tensor, batch_size: int, use_cache: bool) -> float:
    started = time.perf_counter()
    for start in range(0, len(prefixes), batch_size):
        model.generate(prefixes[start : start + batch_size], end_id=-1, pad_id=0, max_tokens=STEPS,
                       use_cache=use_cache)
    return len(prefixes) / (time.perf_counter() - started)


def run() -> str:
    torch.manual_seed(0)
    model = Decoder(DecoderConfig.named("official", vocab_size=10000, prefix_dim=512, max_tokens=STEPS)).eval()
    prefixes = F.normalize(torch.randn(256, 512), dim=-1)
    reference = _captions_per_second(model, prefixes[:8], batch_size=1, use_cache=False)
    single_cached = _captions_per_second(model, prefixes[:16], batch_size=1, use_cache=True)
    batched = _captions_per_second(model, prefixes, batch_size=128, use_cache=True)
    flops = 2 * (model.num_parameters() - model.head.weight.numel()) + 2 * model.head.weight.numel()
    achieved = batched * STEPS * flops / 1e9
    return "\n".join([
        "## Decoding speed (official-size decoder: 4 layers, 4 heads, width 768; 30 tokens a caption)",
        "",
        "| way | captions/s | vs reference |",
        "| --- | ---: | ---: |",
        f"| reference: one at a time, no cache | {reference:.1f} | 1.0x |",
        f"| one at a time, key/value cache | {single_cached:.1f} | {single_cached / reference:.1f}x |",
        f"| batch 128, key/value cache | {batched:.1f} | {batched / reference:.1f}x |",
        "",
        f"Batched decoding does about {achieved:.0f} GFLOP/s of matrix work (2 FLOPs a weight a token).",
    ])


if __name__ == "__main__":
    print(run())
