"""DeCap's decoder: a GPT-style prefix language model that rebuilds a sentence from a CLIP embedding.

The (unit-norm) CLIP embedding, mapped by a linear layer, is the first position; the sentence's
tokens follow, so position 0 predicts the first word and the last position the end token. Tokens
are ids of a compact vocabulary (``decap_core.vocab``): the model predicts only tokens its corpus
uses. Decoding is batched, with a preallocated key/value cache written in place: greedy and beam
search, a length limit, each row stopping at its end token, finished rows dropped from the batch.
Tensors in, tensors out: files live in ``decap_core.decoder_files``.
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from decap_core.errors import DecapError

CONFIG_DIR = pathlib.Path(__file__).parent / "model_configs"
# Matrix products give every row the same bits whatever the number of rows from 12 rows up (MKL,
# measured); dropping finished rows never leaves fewer, so it cannot change any token.
MIN_ROWS = 16


class UnknownDecoderConfig(DecapError, ValueError):
    """A decoder config name with no ``model_configs/decoder-<name>.json``."""


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
            raise UnknownDecoderConfig(f"unknown decoder config {name!r}; known: {', '.join(known)}")
        return cls(**{**json.loads(path.read_text()), **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer, preallocated for ``capacity`` positions: ``[T, N, H, d]`` each.

    A step writes its keys and values in place after the ``length`` filled positions (one contiguous
    block a step) and attends over the filled prefix; nothing moves unless rows are reordered or
    dropped (``select``).
    """

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int = 0):
        self.layers = layers
        self.length = length

    @classmethod
    def empty(cls, config: DecoderConfig, rows: int, capacity: int, like: torch.Tensor) -> "KVCache":
        shape = (capacity, rows, config.n_head, config.n_embd // config.n_head)
        return cls([(like.new_empty(shape), like.new_empty(shape)) for _ in range(config.n_layer)])

    def select(self, index: torch.Tensor) -> "KVCache":
        """A cache of rows ``index`` (beam reordering, dropping finished rows)."""
        return KVCache([(k.index_select(1, index), v.index_select(1, index)) for k, v in self.layers], self.length)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0):
        """Causal attention over ``x``; with ``cache`` (this layer's buffers, filled before ``start``),
        ``x`` is one new position a row, written after them, attending to every filled position."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        if cache is None:
            q, k, v = (t.view(batch, length, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=length > 1, dropout_p=self.dropout if self.training else 0.0,
            )
            return self.proj(y.transpose(1, 2).reshape(batch, length, width))
        if length != 1:
            raise ValueError("cached attention takes one new position a row")
        cache[0][start] = k.view(batch, self.n_head, -1)
        cache[1][start] = v.view(batch, self.n_head, -1)
        # [T, N, H, d] read in place as N * H matrices [T, d]: batched products of one query each,
        # cheaper than the fused kernel, which is built for many queries.
        pairs, end = batch * self.n_head, start + 1
        keys, values = (c[:end].permute(1, 2, 0, 3).reshape(pairs, end, -1) for c in cache)
        query = q.reshape(pairs, 1, -1)
        weights = (torch.bmm(query, keys.transpose(1, 2)) * query.shape[-1] ** -0.5).softmax(-1)
        return self.proj(torch.bmm(weights, values).view(batch, 1, width))


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

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0):
        x = x + self.attn(self.ln_1(x), cache, start)
        return x + self.mlp(self.ln_2(x))


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
        return self._run(self._embed(prefix, tokens, offset=0))

    def _embed(self, prefix: torch.Tensor | None, tokens: torch.Tensor | None, offset: int) -> torch.Tensor:
        parts = []
        if prefix is not None:
            parts.append(self.prefix_map(prefix.to(self.prefix_map.weight.dtype)).unsqueeze(1))
        if tokens is not None and tokens.shape[1] > 0:
            parts.append(self.token_embedding(tokens))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        positions = torch.arange(offset, offset + x.shape[1], device=x.device)
        return self.drop(x + self.position_embedding(positions))

    def _run(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits for positions ``x``; with a cache they follow its filled prefix and are added to it."""
        for i, block in enumerate(self.blocks):
            x = block(x) if cache is None else block(x, cache.layers[i], cache.length)
        if cache is not None:
            cache.length += x.shape[1]
        return self.head(self.ln_f(x))

    # ---- decoding -------------------------------------------------------------------------
    def _next_logits(self, state: KVCache | torch.Tensor, history: torch.Tensor, steps: int) -> torch.Tensor:
        """Next-token logits after ``history[:, :steps]``; ``state`` is the cache or, without one, the prefixes."""
        if isinstance(state, KVCache):
            return self._run(self._embed(None, history[:, steps - 1 : steps], steps), state)[:, -1].float()
        return self(state, history[:, :steps])[:, -1].float()

    @staticmethod
    def _select(state: KVCache | torch.Tensor, rows: torch.Tensor) -> KVCache | torch.Tensor:
        return state.select(rows) if isinstance(state, KVCache) else state.index_select(0, rows)

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
        (pad, unk, start) are never produced. Rows whose beams have all ended leave the active
        batch once they are an eighth of it, so they stop costing compute.
        """
        device, width = prefix.device, beam_width
        banned = torch.tensor(sorted({pad_id, *banned_ids}), device=device)

        def log_probs(logits: torch.Tensor) -> torch.Tensor:
            logits[:, banned] = float("-inf")
            return logits.log_softmax(-1)

        max_tokens = min(max_tokens or self.config.max_tokens, self.config.max_tokens)
        batch = prefix.shape[0]
        state = KVCache.empty(self.config, batch, max_tokens, self.prefix_map.weight) if use_cache else prefix
        logits = self._run(self._embed(prefix, None, 0), state if use_cache else None)[:, -1].float()
        scores, first = log_probs(logits).topk(width, dim=-1)  # [B, W]
        if width > 1:
            state = self._select(state, torch.arange(batch, device=device).repeat_interleave(width))
        history = torch.full((batch * width, max_tokens), pad_id, dtype=torch.long, device=device)
        history[:, 0] = first.reshape(-1)
        finished = (first == end_id).reshape(-1)
        items = torch.arange(batch, device=device)  # the batch row of each active row
        out = torch.full((batch, max_tokens), pad_id, dtype=torch.long, device=device)
        steps = 1
        while steps < max_tokens:
            done = finished.view(-1, width).all(dim=1)
            if bool(done.all()):
                break
            drop = _rows_to_drop(done, width)
            if drop is not None:
                out[items[drop]] = _best_beams(history, scores, drop, pad_id, length_penalty)
                keep = (~drop).nonzero().squeeze(1)
                rows = (keep[:, None] * width + torch.arange(width, device=device)).reshape(-1)
                items, scores, history, finished = items[keep], scores[keep], history[rows], finished[rows]
                state = self._select(state, rows)
            logprobs = log_probs(self._next_logits(state, history, steps))
            # A finished beam continues with pad at no cost, so it keeps its score and stays unique.
            logprobs[finished] = float("-inf")
            logprobs[finished, pad_id] = 0.0
            vocab = logprobs.shape[-1]
            scores, flat = (scores.reshape(-1, 1) + logprobs).reshape(len(items), -1).topk(width, dim=-1)
            if width > 1:  # beams move between rows; with one beam a row stays where it is
                rows = (flat // vocab + torch.arange(len(items), device=device)[:, None] * width).reshape(-1)
                history, finished = history.index_select(0, rows), finished.index_select(0, rows)
                state = self._select(state, rows)
            tokens = (flat % vocab).reshape(-1)
            history[:, steps] = tokens
            finished = finished | (tokens == end_id)
            steps += 1
        out[items] = _best_beams(history, scores, torch.ones_like(items, dtype=torch.bool), pad_id, length_penalty)
        return out[:, :steps]

    def decoding_flops(self, tokens: torch.Tensor, pad_id: int) -> float:
        """Matrix FLOPs that greedy ``generate`` needs for its output ``tokens`` ``[B, L]``.

        A row of n tokens fed n positions (the prefix, then each token but its last); each costs
        2 FLOPs a weight of the blocks and the output head, plus attention over the filled prefix
        (4 x width a position a layer); the prefix adds its linear map. Rows that ended count nothing.
        """
        c = self.config
        weights = sum(m.weight.numel() for m in self.blocks.modules() if isinstance(m, nn.Linear))
        weights += self.head.weight.numel()
        positions = (tokens != pad_id).sum(dim=1).double()
        attended = (positions * (positions + 1) / 2).sum()  # position i attends to i + 1 positions
        return float(2 * weights * positions.sum() + 4 * c.n_embd * c.n_layer * attended
                     + 2 * self.prefix_map.weight.numel() * len(tokens))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Approximate training FLOPs per token (6N plus attention), as nanoGPT estimates them."""
        c = self.config
        return 6 * self.num_parameters() + 12 * c.n_layer * c.n_embd * (c.max_tokens + 1)


def _rows_to_drop(done: torch.Tensor, width: int) -> torch.Tensor | None:
    """Which finished rows to drop from the active batch: once they are an eighth of it, never leaving
    fewer than ``MIN_ROWS`` rows (the first finished ones stay to make up the number); else None."""
    active, count = len(done), int(done.sum())
    stay = max(0, -(-MIN_ROWS // width) - (active - count))
    if count <= stay or (count - stay) * 8 < active:
        return None
    drop = done.clone()
    drop[done.nonzero()[:stay, 0]] = False
    return drop


def _best_beams(history: torch.Tensor, scores: torch.Tensor, rows: torch.Tensor, pad_id: int,
                length_penalty: float) -> torch.Tensor:
    """The best-ranked beam of each row in the mask ``rows``: ``[n, L]`` from ``history`` ``[A * W, L]``."""
    beams = history.view(*scores.shape, -1)[rows]
    lengths = (beams != pad_id).sum(dim=2).float()
    best = (scores[rows] / lengths.clamp(min=1) ** length_penalty).argmax(dim=1)
    return beams[torch.arange(len(best), device=beams.device), best]
