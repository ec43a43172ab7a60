"""Decoding speed: our batched greedy decoding against DeCap's reference way (one caption at a time,
no cache, the whole sequence recomputed at every step, CLIP's full vocabulary), and the share of
this machine's matrix-product peak that our decoding reaches, the peak measured in the same run."""
from __future__ import annotations

import json
import os
import time

import torch
import torch.nn.functional as F

from decap_core.decoder import CONFIG_DIR, Decoder, DecoderConfig
from decap_core.toy import world as toyworld
from decap_core.vocab import CompactVocab

STEPS = 30  # tokens a caption; end_id -1: no row stops early
CLIP_VOCAB = 49408  # CLIP's BPE vocabulary, DeCap's output layer
COMPACT_VOCAB = 10000  # ours for the official size: a compact vocabulary of a large corpus
PEAK_SIZE = 2048


def matmul_peak() -> float:
    """GFLOP/s of a large fp32 ``torch.matmul`` (``PEAK_SIZE`` cubed), best of eight."""
    a, b = torch.randn(PEAK_SIZE, PEAK_SIZE), torch.randn(PEAK_SIZE, PEAK_SIZE)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(8):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * PEAK_SIZE**3 / best / 1e9


@torch.no_grad()
def reference_captions_per_second(model: Decoder, prefixes: torch.Tensor) -> float:
    """DeCap's way: one caption at a time, the whole sequence through the model at every step,
    softmax over the full vocabulary, argmax."""
    started = time.perf_counter()
    for prefix in prefixes:
        tokens = torch.zeros(1, 0, dtype=torch.long)
        for _ in range(STEPS):
            probs = model(prefix[None], tokens)[:, -1].softmax(-1)
            tokens = torch.cat([tokens, probs.argmax(-1, keepdim=True)], dim=1)
    return len(prefixes) / (time.perf_counter() - started)


def ours(model: Decoder, prefixes: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Captions/s and GFLOP/s of one batched ``generate`` over ``prefixes``, best of ``repeats``
    (after a short warm-up)."""
    model.generate(prefixes[:16], end_id=-1, pad_id=0, max_tokens=2)
    best, flops = float("inf"), 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        tokens = model.generate(prefixes, end_id=-1, pad_id=0, max_tokens=STEPS)
        best = min(best, time.perf_counter() - started)
        flops = model.decoding_flops(tokens, pad_id=0)
    return len(prefixes) / best, flops / best / 1e9


def one_thread(toy: Decoder, prefixes: torch.Tensor) -> tuple[float, float, float]:
    """The toy's captions/s and GFLOP/s on one torch thread, and the one-thread peak around them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before = matmul_peak()
        rate, gflops = ours(toy, prefixes, repeats=2)
        return rate, gflops, max(before, matmul_peak())
    finally:
        torch.set_num_threads(threads)


def run() -> str:
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    peaks = [matmul_peak()]
    official = dict(prefix_dim=512, max_tokens=STEPS)
    reference_model = Decoder(DecoderConfig.named("official", vocab_size=CLIP_VOCAB, **official)).eval()
    few = F.normalize(torch.randn(2, 512), dim=-1)
    reference = reference_captions_per_second(reference_model, few)
    del reference_model
    model = Decoder(DecoderConfig.named("official", vocab_size=COMPACT_VOCAB, **official)).eval()
    reference_compact = reference_captions_per_second(model, few)
    official_rate, official_gflops = ours(model, F.normalize(torch.randn(256, 512), dim=-1), repeats=1)
    peaks.append(matmul_peak())
    toy_vocab = len(CompactVocab.from_texts(toyworld.sentences(0, "decoder", 1000)))
    toy_dim = json.loads((CONFIG_DIR / "toy-clip.json").read_text())["embed_dim"]
    toy = Decoder(DecoderConfig.named("toy", vocab_size=toy_vocab, prefix_dim=toy_dim)).eval()
    toy_prefixes = F.normalize(torch.randn(1024, toy_dim), dim=-1)
    toy_rate, toy_gflops = ours(toy, toy_prefixes, repeats=3)
    peaks.append(matmul_peak())
    peak = max(peaks)
    single_rate, single_gflops, single_peak = one_thread(toy, toy_prefixes)
    toy_name = f"toy ({toy.num_parameters() / 1e6:.1f}M parameters, width {toy.config.n_embd})"
    return "\n".join([
        f"## Decoding speed ({STEPS} tokens a caption, greedy, random weights, no row ends early)",
        "",
        "| decoder | way | output vocabulary | captions/s | vs reference | GFLOP/s | share of peak |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        f"| official (4 layers, 4 heads, width 768) | reference: one caption at a time, no cache, "
        f"sequence recomputed every step | {CLIP_VOCAB:,} | {reference:.2f} | 1.0x | | |",
        f"| official | the same reference way | {COMPACT_VOCAB:,} | {reference_compact:.2f} | "
        f"{reference_compact / reference:.1f}x | | |",
        f"| official | ours: batch 256, preallocated key/value cache | {COMPACT_VOCAB:,} | {official_rate:.1f} | "
        f"{official_rate / reference:.0f}x | {official_gflops:.0f} | {official_gflops / peak:.0%} |",
        f"| {toy_name} | ours: batch 1024 | {toy_vocab} (the demo's) | {toy_rate:.0f} | | {toy_gflops:.0f} | "
        f"{toy_gflops / peak:.0%} |",
        f"| {toy_name} | ours: batch 1024, one torch thread (share of the one-thread peak, {single_peak:.0f}) | "
        f"{toy_vocab} | {single_rate:.0f} | | {single_gflops:.0f} | {single_gflops / single_peak:.0%} |",
        "",
        f"Peak: fp32 `torch.matmul` {PEAK_SIZE}^3, best of 8, before, between and after the runs on "
        f"{torch.get_num_threads()} torch threads: {', '.join(f'{p:.0f}' for p in peaks)} GFLOP/s; the share "
        "uses the highest. GFLOP/s count 2 FLOPs a weight (blocks and output head) a position each row "
        "processes, plus attention (`Decoder.decoding_flops`). The reference's vocabulary is CLIP's, as "
        "DeCap's code decodes; ours is a compact vocabulary (the second row shows how much of the speed-up "
        f"that part is). Load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: other "
        "work on the two cores stalls every multi-threaded step of the small decoder most, so read the ratios.",
    ])


if __name__ == "__main__":
    print(run())
