"""DeCap's decoder: a GPT-style prefix language model that rebuilds a sentence from a CLIP embedding.

The (unit-norm) CLIP embedding, mapped by a linear layer, is the first position; the sentence's
tokens follow, so position 0 predicts the first word and the last position the end token. Tokens
are ids of a compact vocabulary (``decap_core.vocab``): the model predicts only tokens its corpus
uses. Decoding is batched, with a key/value cache: greedy and beam search, a length limit, each row
stopping at its end token. Tensors in, tensors out: files live in ``decap_core.checkpoint``.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIG_DIR = pathlib.Path(__file__).parent / "model_configs"
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DecoderConfig:
    """Architecture of the decoder; ``vocab_size`` and ``prefix_dim`` come from corpus and CLIP."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 768
    max_tokens: int = 40
    dropout: float = 0.1
    vocab_size: int = 0
    prefix_dim: int = 512

    @classmethod
    def named(cls, name: str, **overrides) -> "DecoderConfig":
        """A config from ``model_configs/decoder-<name>.json`` (``official`` or ``toy``)."""
        path = CONFIG_DIR / f"decoder-{name}.json"
        if not path.exists():
            known = sorted(p.stem.removeprefix("decoder-") for p in CONFIG_DIR.glob("decoder-*.json"))
            raise ValueError(f"unknown decoder config {name!r}; known: {', '.join(known)}")
        return cls(**{**json.loads(path.read_text()), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        # With a cache, new positions come last and may see every earlier one; the causal mask
        # is only needed among the new positions themselves, which is when there is no past.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=past is None and length > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(batch, length, width)
        return self.proj(y), (k, v)


class MLP(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, past=None):
        attended, present = self.attn(self.ln_1(x), past)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), present


class Decoder(nn.Module):
    """Prefix LM: ``forward(prefix, tokens)`` gives next-token logits at every position."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("DecoderConfig.vocab_size must be set from the compact vocabulary")
        self.config = config
        self.prefix_map = nn.Linear(config.prefix_dim, config.n_embd)
        self.token_embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.position_embedding = nn.Embedding(config.max_tokens + 1, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 1 + T, V]`` for inputs ``[prefix, tokens...]`` (tokens without start)."""
        logits, _ = self._run(self._embed(prefix, tokens, offset=0), past=None)
        return logits

    def _embed(self, prefix: torch.Tensor | None, tokens: torch.Tensor | None, offset: int) -> torch.Tensor:
        parts = []
        if prefix is not None:
            parts.append(self.prefix_map(prefix.to(self.prefix_map.weight.dtype)).unsqueeze(1))
        if tokens is not None and tokens.shape[1] > 0:
            parts.append(self.token_embedding(tokens))
        x = torch.cat(parts, dim=1)
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        return self.drop(x + self.position_embedding(positions))

    def _run(self, x: torch.Tensor, past: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[i])
            presents.append(present)
        return self.head(self.ln_f(x)), presents

    def loss(self, prefix: torch.Tensor, tokens: torch.Tensor, pad_id: int, label_smoothing: float = 0.1):
        """Cross-entropy of the sentence given its prefix. ``tokens``: ``[start, w1..wn, end, pad..]``."""
        targets = tokens[:, 1:]
        logits = self(prefix, tokens[:, 1:-1])
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
            ignore_index=pad_id, label_smoothing=label_smoothing,
        ), logits, targets

    # ---- decoding -------------------------------------------------------------------------
    def _start(self, prefix: torch.Tensor, use_cache: bool):
        logits, cache = self._run(self._embed(prefix, None, 0), None)
        return logits[:, -1].float(), (cache if use_cache else (prefix, None))

    def _advance(self, tokens: torch.Tensor, history: torch.Tensor, state, use_cache: bool):
        """Next-token log-probs after ``history`` ``[N, t]`` (``tokens`` is its last column)."""
        if use_cache:
            logits, cache = self._run(self._embed(None, tokens[:, None], history.shape[1]), state)
            return logits[:, -1].float(), cache
        prefix, _ = state
        logits = self(prefix, history)
        return logits[:, -1].float(), state

    @staticmethod
    def _reorder(state, index: torch.Tensor, use_cache: bool):
        if use_cache:
            return [(k.index_select(0, index), v.index_select(0, index)) for k, v in state]
        return (state[0].index_select(0, index), None)

    @torch.no_grad()
    def generate(
        self,
        prefix: torch.Tensor,
        end_id: int,
        pad_id: int,
        max_tokens: int | None = None,
        beam_width: int = 1,
        use_cache: bool = True,
        length_penalty: float = 0.0,
        banned_ids: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """Decode a batch of prefixes ``[B, D]`` into token ids ``[B, L]`` (pad after each end).

        ``beam_width`` 1 is greedy decoding. Beams are ranked by summed log-probability divided
        by ``length ** length_penalty``. ``use_cache=False`` recomputes the whole sequence at every
        step, as the reference implementation does; it exists to check the cache. ``banned_ids``
        (pad, unk, start) are never produced.
        """
        banned = torch.tensor(sorted({pad_id, *banned_ids}), device=prefix.device)

        def log_probs(logits: torch.Tensor) -> torch.Tensor:
            logits[:, banned] = float("-inf")
            return logits.log_softmax(-1)

        max_tokens = min(max_tokens or self.config.max_tokens, self.config.max_tokens)
        batch, width = prefix.shape[0], beam_width
        logits, state = self._start(prefix, use_cache)
        logprobs = log_probs(logits)
        scores, first = logprobs.topk(width, dim=-1)  # [B, W]
        history = first.reshape(batch * width, 1)
        state = self._reorder(state, torch.arange(batch, device=prefix.device).repeat_interleave(width), use_cache)
        finished = (first == end_id).reshape(-1)
        for _ in range(max_tokens - 1):
            if bool(finished.all()):
                break
            logits, state = self._advance(history[:, -1], history, state, use_cache)
            logprobs = log_probs(logits)
            # A finished beam continues with pad at no cost, so it keeps its score and stays unique.
            logprobs[finished] = float("-inf")
            logprobs[finished, pad_id] = 0.0
            candidates = (scores.reshape(-1, 1) + logprobs).reshape(batch, -1)
            scores, flat = candidates.topk(width, dim=-1)
            vocab = logprobs.shape[-1]
            rows = (flat // vocab + torch.arange(batch, device=prefix.device)[:, None] * width).reshape(-1)
            tokens = (flat % vocab).reshape(-1)
            history = torch.cat([history.index_select(0, rows), tokens[:, None]], dim=1)
            finished = finished.index_select(0, rows) | (tokens == end_id)
            state = self._reorder(state, rows, use_cache)
        lengths = ((history != pad_id).sum(dim=1)).float().reshape(batch, width)
        ranked = scores / lengths.clamp(min=1) ** length_penalty
        best = ranked.argmax(dim=1) + torch.arange(batch, device=prefix.device) * width
        return history.index_select(0, best)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Approximate training FLOPs per token (6N plus attention), as nanoGPT estimates them."""
        c = self.config
        return 6 * self.num_parameters() + 12 * c.n_layer * c.n_embd * (c.max_tokens + 1)
