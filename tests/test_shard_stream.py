"""The trainer's stream over train shards, tested directly: every sample once a pass, seeded order, limits."""
import itertools

import pytest

from decap_core import train_shards
from decap_core.errors import DecapError
from decap_core.toy import world as toyworld
from decap_core.train_data import ShardStream, shards_of_rank
from pipelines import make_train_shards


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    (root / "corpus.txt").write_text("\n".join(toyworld.sentences(4, "decoder", 400)) + "\n")
    metadata = make_train_shards.run(["--input", str(root / "corpus.txt"), "--output", str(root / "shards"),
                                      "--samples-per-shard", "60", "--validation-samples", "10"])
    shards = train_shards.ShardSet.open(metadata["train_pattern"])
    samples = {url: list(train_shards.read_shard(url, shards.metadata.plan.dim, shards.expected[url]))
               for url in shards.urls}
    return shards, samples


def stream(shards, seed=0, buffer=8, max_tokens=77):
    vocab = train_shards.compact_vocab(shards.metadata)
    return ShardStream(shards, shards.urls, vocab, max_tokens, buffer, seed=seed, skip_bad=False), vocab


def test_a_pass_yields_every_sample_once_with_its_shard_and_compact_tokens(shard_set):
    shards, samples = shard_set
    total = sum(len(s) for s in samples.values())
    dataset, vocab = stream(shards, buffer=8)
    first_pass = list(itertools.islice(iter(dataset), total - 8))  # the buffer holds back its last 8
    expected = {(shard_index, tuple(vocab.encode(sample.tokens)), sample.embedding.tobytes())
                for shard_index, url in enumerate(shards.urls) for sample in samples[url]}
    got = [(index, tuple(tokens), embedding.tobytes()) for embedding, tokens, index in first_pass]
    assert len(set(got)) == len(got) and set(got) <= expected


def test_the_order_is_seeded(shard_set):
    shards, _ = shard_set
    def keys(seed):
        return [embedding.tobytes() for embedding, _, _ in itertools.islice(iter(stream(shards, seed)[0]), 50)]
    assert keys(0) == keys(0) and keys(0) != keys(1)


def test_too_long_sentences_are_skipped_and_none_usable_is_an_error(shard_set):
    shards, _ = shard_set
    short = [tokens for _, tokens, _ in itertools.islice(iter(stream(shards, max_tokens=9)[0]), 40)]
    assert short and max(len(tokens) for tokens in short) <= 9
    with pytest.raises(DecapError, match="no usable samples"):
        next(iter(stream(shards, max_tokens=2)[0]))


def test_ranks_get_their_own_shards(shard_set):
    shards, _ = shard_set
    urls = list(shards.urls)
    assert sorted(shards_of_rank(urls, 0, 2) + shards_of_rank(urls, 1, 2)) == sorted(urls)
    with pytest.raises(DecapError, match="cannot feed"):
        shards_of_rank(urls, 0, len(urls) + 1)


def test_a_glob_opens_the_shards_its_brace_pattern_names(shard_set):
    shards, _ = shard_set
    directory = shards.urls[0].rsplit("/", 1)[0]
    assert len(shards.urls) > 1
    globbed = train_shards.ShardSet.open(f"{directory}/train-*.tar")
    assert globbed.urls == shards.urls and globbed.expected == shards.expected
    with pytest.raises(DecapError, match="no shard URLs"):
        train_shards.ShardSet.open(f"{directory}/nothing-*.tar")
