import pytest
import torch
import torch.nn.functional as F

from decap_core.decoder import Decoder, DecoderConfig
from decap_core.vocab import PAD, UNK, CompactVocab, clip_token_ids, pad_batch

END = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Decoder(DecoderConfig.named("toy", vocab_size=60, prefix_dim=16, max_tokens=14)).eval()


@pytest.fixture(scope="module")
def prefixes():
    return F.normalize(torch.randn(9, 16, generator=torch.Generator().manual_seed(1)), dim=-1)


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
        loss, _, _ = model.loss(prefixes, tokens, PAD, label_smoothing=0.1)
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
