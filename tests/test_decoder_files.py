import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from decap_core.decoder import Decoder, DecoderConfig
from decap_core.decoder_files import DecoderBundle, load_decoder, save_decoder
from decap_core.errors import DecapError
from decap_core.vocab import PAD, CompactVocab


@pytest.fixture
def bundle():
    vocab = CompactVocab.from_texts(["a red circle", "a blue square"])
    torch.manual_seed(0)
    model = Decoder(DecoderConfig.named("toy", vocab_size=len(vocab), prefix_dim=8)).eval()
    return DecoderBundle(model, vocab, "toy-clip:abc", info={"steps": 3})


def test_round_trip(tmp_path, bundle):
    fingerprint = save_decoder(bundle, str(tmp_path / "dec"))
    loaded = load_decoder(str(tmp_path / "dec"))
    assert loaded.fingerprint == fingerprint and loaded.clip_fingerprint == "toy-clip:abc"
    assert loaded.vocab == bundle.vocab and loaded.info["steps"] == 3
    prefix = F.normalize(torch.randn(4, 8), dim=-1)
    assert torch.equal(loaded.model.generate(prefix, 3, PAD), bundle.model.generate(prefix, 3, PAD))


def test_memory_filesystem_round_trip(bundle):
    save_decoder(bundle, "memory://decoders/one")
    assert load_decoder("memory://decoders/one").vocab == bundle.vocab


def test_missing_and_damaged_checkpoints(tmp_path, bundle):
    with pytest.raises(DecapError, match="decoder metadata not found"):
        load_decoder(str(tmp_path / "nothing"))
    save_decoder(bundle, str(tmp_path / "dec"))
    weights = tmp_path / "dec" / "decoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(DecapError, match="damaged"):
        load_decoder(str(tmp_path / "dec"))
    (tmp_path / "dec" / "decoder.json").write_text("{not json")
    with pytest.raises(DecapError, match="damaged"):
        load_decoder(str(tmp_path / "dec"))


def test_mismatched_weights(tmp_path, bundle):
    save_decoder(bundle, str(tmp_path / "a"))
    other = DecoderBundle(Decoder(DecoderConfig.named("toy", vocab_size=len(bundle.vocab), prefix_dim=16)),
                          bundle.vocab, "x")
    save_decoder(other, str(tmp_path / "b"))
    (tmp_path / "a" / "decoder.safetensors").write_bytes((tmp_path / "b" / "decoder.safetensors").read_bytes())
    with pytest.raises(DecapError, match="not the ones decoder.json describes"):  # the fingerprint covers the weights
        load_decoder(str(tmp_path / "a"))
    metadata = json.loads((tmp_path / "a" / "decoder.json").read_text())
    del metadata["fingerprint"]  # a decoder.json without one: the shapes still have to fit
    (tmp_path / "a" / "decoder.json").write_text(json.dumps(metadata))
    with pytest.raises(DecapError, match="do not match"):
        load_decoder(str(tmp_path / "a"))


def test_cli_one_line_for_damaged_decoder(tmp_path, bundle):
    save_decoder(bundle, str(tmp_path / "dec"))
    (tmp_path / "dec" / "decoder.safetensors").write_bytes(b"junk")
    (tmp_path / "img").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "caption", "--input", str(tmp_path / "img" / "*.png"),
         "--clip-checkpoint", str(tmp_path / "none.pt"), "--decoder", str(tmp_path / "dec"),
         "--memory", str(tmp_path / "memory"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "decoder weights" in result.stderr and "damaged" in result.stderr
