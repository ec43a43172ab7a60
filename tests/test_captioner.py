"""Each strategy of the captioner against its formula, on small random data."""
import pytest
import torch
import torch.nn.functional as F

from decap_core.captioner import Captioner
from decap_core.decoder import Decoder, DecoderConfig
from decap_core.decoder_files import DecoderBundle
from decap_core.memory import SupportMemory
from decap_core.vocab import CompactVocab

TEXTS = [f"a {c} {s}" for c in ("red", "blue", "green", "pink") for s in ("circle", "star", "cross")]


@pytest.fixture(scope="module")
def captioner():
    g = torch.Generator().manual_seed(0)
    vocab = CompactVocab.from_texts(TEXTS)
    torch.manual_seed(0)
    model = Decoder(DecoderConfig.named("toy", vocab_size=len(vocab), prefix_dim=16)).eval()
    memory = SupportMemory(TEXTS, F.normalize(torch.randn(len(TEXTS), 16, generator=g), dim=-1), "clip:x")
    return Captioner(DecoderBundle(model, vocab, "clip:x"), memory, tau=0.05, max_tokens=8)


@pytest.fixture(scope="module")
def images():
    return F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(1)), dim=-1)


def test_pd_decodes_the_softmax_mix(captioner, images):
    memory = captioner.memory.embeddings
    mix = F.normalize(torch.softmax(images @ memory.T / captioner.tau, dim=-1) @ memory, dim=-1)
    assert captioner.caption(images, "pd") == captioner.decode(mix)
    assert captioner.caption(images, "pd") != captioner.caption(images, "vd")  # random data: really different inputs


def test_nnd_clipre_and_vd(captioner, images):
    nearest = (images @ captioner.memory.embeddings.T).argmax(dim=1)
    assert captioner.caption(images, "clipre") == [TEXTS[i] for i in nearest]
    assert captioner.caption(images, "nnd") == captioner.decode(captioner.memory.embeddings[nearest])
    assert captioner.caption(images, "vd") == captioner.decode(images)


def test_decoding_is_batch_independent(captioner, images):
    whole = captioner.caption(images, "pd")
    assert [captioner.caption(images[i : i + 1], "pd")[0] for i in range(len(images))] == whole
