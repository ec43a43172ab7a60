import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from decap_core.decoder import Decoder, DecoderConfig
from decap_core.training import sentence_loss
from decap_core.vocab import PAD, UNK, CompactVocab, clip_token_ids, pad_batch

END = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Decoder(DecoderConfig.named("toy", vocab_size=60, prefix_dim=16, max_tokens=14)).eval()


@pytest.fixture(scope="module")
def prefixes():
    return F.normalize(torch.randn(9, 16, generator=torch.Generator().manual_seed(1)), dim=-1)


@pytest.fixture(scope="module")
def batch():
    return F.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(2)), dim=-1)


@pytest.fixture(scope="module")
def varied_end(model, batch):
    """An end id at which the rows of ``batch`` end at many different steps (some never)."""
    free = model.generate(batch, -1, PAD, banned_ids=BANNED, use_cache=False)

    def first_steps(token):
        return {int((row == token).nonzero()[0, 0]) if (row == token).any() else -1 for row in free}

    return max(set(free.flatten().tolist()), key=lambda token: len(first_steps(token)))


BANNED = (UNK, 2, 5)


@torch.no_grad()
def todays_cached_generate(model, prefix, end_id, pad_id, max_tokens, beam_width, banned_ids, length_penalty):
    """Cached decoding as it was before the preallocated cache: every step concatenates its keys and
    values to the cache and reorders every row of it, for greedy decoding too; no row leaves."""

    def run(x, past):
        presents = []
        for i, block in enumerate(model.blocks):
            h = block.ln_1(x)
            q, k, v = block.attn.qkv(h).split(h.shape[-1], dim=2)
            q, k, v = (t.view(*h.shape[:2], block.attn.n_head, -1).transpose(1, 2) for t in (q, k, v))
            if past is not None:
                k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None and h.shape[1] > 1)
            x = x + block.attn.proj(y.transpose(1, 2).reshape(h.shape))
            x = x + block.mlp(block.ln_2(x))
            presents.append((k, v))
        return model.head(model.ln_f(x))[:, -1].float(), presents

    banned = torch.tensor(sorted({pad_id, *banned_ids}))

    def log_probs(logits):
        logits[:, banned] = float("-inf")
        return logits.log_softmax(-1)

    batch, width = len(prefix), beam_width
    logits, cache = run(model._embed(prefix, None, 0), None)
    scores, first = log_probs(logits).topk(width, dim=-1)
    history = first.reshape(batch * width, 1)
    rows = torch.arange(batch).repeat_interleave(width)
    cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]
    finished = (first == end_id).reshape(-1)
    for _ in range(max_tokens - 1):
        if bool(finished.all()):
            break
        logits, cache = run(model._embed(None, history[:, -1:], history.shape[1]), cache)
        logprobs = log_probs(logits)
        logprobs[finished] = float("-inf")
        logprobs[finished, pad_id] = 0.0
        scores, flat = (scores.reshape(-1, 1) + logprobs).reshape(batch, -1).topk(width, dim=-1)
        vocab = logprobs.shape[-1]
        rows = (flat // vocab + torch.arange(batch)[:, None] * width).reshape(-1)
        tokens = (flat % vocab).reshape(-1)
        history = torch.cat([history.index_select(0, rows), tokens[:, None]], dim=1)
        finished = finished.index_select(0, rows) | (tokens == end_id)
        cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]
    lengths = (history != pad_id).sum(dim=1).float().reshape(batch, width)
    best = (scores / lengths.clamp(min=1) ** length_penalty).argmax(dim=1) + torch.arange(batch) * width
    return history.index_select(0, best)


@pytest.mark.parametrize("beam_width", [1, 3])
@pytest.mark.parametrize("max_tokens, length_penalty", [(14, 0.0), (9, 1.0)])
def test_decoding_equals_todays_cached_decoding_and_recomputation(
    model, batch, varied_end, beam_width, max_tokens, length_penalty
):
    settings = dict(max_tokens=max_tokens, beam_width=beam_width, banned_ids=BANNED, length_penalty=length_penalty)
    tokens = model.generate(batch, varied_end, PAD, **settings)
    lengths = (tokens != PAD).sum(dim=1)
    assert len(set(lengths.tolist())) >= 4 and int(lengths.max()) == max_tokens  # rows end at many steps
    assert not set(tokens.flatten().tolist()) & set(BANNED)
    today = todays_cached_generate(model, batch, varied_end, PAD, max_tokens, beam_width, BANNED, length_penalty)
    assert torch.equal(tokens, today)
    assert torch.equal(tokens, model.generate(batch, varied_end, PAD, use_cache=False, **settings))


def test_finished_rows_leave_the_batch(model, batch, varied_end):
    rows = []
    hook = model.head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    try:
        tokens = model.generate(batch, varied_end, PAD, banned_ids=BANNED)
    finally:
        hook.remove()
    active = [(tokens[:, :step] != varied_end).all(dim=1).sum() for step in range(len(rows))]
    assert rows[0] == len(batch) and rows[-1] < len(batch)
    assert all(later <= earlier for earlier, later in zip(rows, rows[1:]))
    # every row still decoding is in the batch; of the finished ones at most an eighth stay, or 16 rows
    assert all(int(a) <= r <= max(int(a) + len(batch) // 8, 16) for a, r in zip(active, rows))


def test_decoding_flops_count_what_the_matrix_products_do(model, batch):
    with FlopCounterMode(display=False) as counter:
        tokens = model.generate(batch, -1, PAD)  # no row ends: every row runs every step
    n = tokens.shape[1]
    attention = 4 * model.config.n_embd * model.config.n_layer * len(batch) * n * (n + 1) / 2
    # the counter sees the linear layers and the batched attention products; every row ran n positions
    assert counter.get_flop_counts()["Global"][torch.ops.aten.bmm] == attention
    assert model.decoding_flops(tokens, PAD) == pytest.approx(counter.get_total_flops(), rel=1e-9)
    shorter = tokens.clone()
    shorter[: len(batch) // 2, n // 2 :] = PAD  # rows that ended earlier count less
    assert model.decoding_flops(shorter, PAD) < model.decoding_flops(tokens, PAD)


def test_named_configs():
    official = DecoderConfig.named("official", vocab_size=100)
    assert (official.n_layer, official.n_head, official.n_embd) == (4, 4, 768)
    with pytest.raises(ValueError, match="unknown decoder config"):
        DecoderConfig.named("huge")


@pytest.mark.parametrize("beam_width", [1, 3])
def test_cache_equals_recomputation(model, prefixes, beam_width):
    cached = model.generate(prefixes, END, PAD, beam_width=beam_width, use_cache=True)
    recomputed = model.generate(prefixes, END, PAD, beam_width=beam_width, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_beam_width_one_is_greedy(model, prefixes):
    greedy = model.generate(prefixes, END, PAD)
    beam = model.generate(prefixes, END, PAD, beam_width=1)
    assert torch.equal(greedy, beam)
    # greedy really is argmax at every step: re-score the greedy sequence step by step
    for row, prefix in zip(greedy, prefixes):
        for step, token in enumerate(row.tolist()):
            logits = model(prefix[None], row[None, :step])[0, -1]
            logits[PAD] = float("-inf")
            assert int(logits.argmax()) == token
            if token == END:
                break


def test_rows_stop_at_end_and_respect_the_limit(model, prefixes):
    tokens = model.generate(prefixes, END, PAD, max_tokens=6, beam_width=2)
    assert tokens.shape[1] <= 6
    for row in tokens.tolist():
        if END in row:
            assert all(t == PAD for t in row[row.index(END) + 1 :])
        assert PAD not in row[: row.index(END) if END in row else len(row)]


def test_banned_tokens_never_appear(model, prefixes):
    tokens = model.generate(prefixes, END, PAD, banned_ids=(UNK, 2, 5, 7))
    assert not set(tokens.flatten().tolist()) & {UNK, 2, 5, 7}


def test_beam_search_finds_a_sequence_at_least_as_likely_as_greedy(model, prefixes):
    @torch.no_grad()
    def logprob(prefix, row):
        total, history = 0.0, []
        for token in row.tolist():
            logits = model(prefix[None], torch.tensor([history], dtype=torch.long))[0, -1]
            logits[PAD] = float("-inf")
            total += float(logits.log_softmax(-1)[token])
            if token == END:
                break
            history.append(token)
        return total

    greedy = model.generate(prefixes, END, PAD, max_tokens=8)
    beam = model.generate(prefixes, END, PAD, max_tokens=8, beam_width=4)
    for prefix, g, b in zip(prefixes, greedy, beam):
        assert logprob(prefix, b) >= logprob(prefix, g) - 1e-4


def test_decoder_learns_to_rebuild_sentences():
    texts = ["a red circle", "a blue square and a green star", "there is a small pink cross", "a black triangle"]
    vocab = CompactVocab.from_texts(texts)
    tokens = torch.from_numpy(pad_batch([vocab.encode(clip_token_ids(t)) for t in texts]))
    prefixes = torch.eye(4, 8)
    torch.manual_seed(0)
    model = Decoder(DecoderConfig.named("toy", vocab_size=len(vocab), prefix_dim=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, _ = sentence_loss(model, prefixes, tokens, label_smoothing=0.1)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * first
    model.eval()
    out = model.generate(prefixes, vocab.end_id, PAD, banned_ids=(UNK, vocab.start_id))
    assert [vocab.decode_text(row) for row in out.tolist()] == texts


def test_vocab_round_trip():
    texts = ["an orange star, a small red circle and a large blue square"]
    vocab = CompactVocab.from_texts(texts)
    ids = vocab.encode(clip_token_ids(texts[0]))
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id and UNK not in ids
    assert vocab.decode_text(ids) == texts[0]
    assert vocab.encode(clip_token_ids("zebra"))[1] == UNK
