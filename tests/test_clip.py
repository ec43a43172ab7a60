import subprocess
import sys

import open_clip
import pytest
import torch
import torch.nn.functional as F

from decap_core.clip import encode_tokens_packed, load_clip, pack_lengths
from decap_core.errors import DecapError
from decap_core.toy import world as toyworld

SENTENCES = ["a red circle", "there is a small blue square, a large green star and a pink cross",
             "an orange triangle next to a black circle", "hello"]


@pytest.mark.parametrize("name", ["ViT-B-32", "toy-clip"])
def test_packed_text_encoding_equals_open_clip(name):
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    tokens = open_clip.get_tokenizer(name)(SENTENCES + toyworld.sentences(0, "memory", 12))
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tokens), dim=-1)
        got = encode_tokens_packed(model, tokens)
    lengths = (tokens != 0).sum(1).tolist()
    packs = pack_lengths(lengths, tokens.shape[1])
    assert len(packs) < len(lengths)  # several sentences really share a row
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_packing_holds_every_sentence_once_within_the_capacity():
    lengths = [5, 77, 30, 30, 17, 1, 60, 12, 12, 12]
    packs = pack_lengths(lengths, 77)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 77 for pack in packs)
    assert len(packs) == 4  # 77 | 60+17 | 30+30+12+5 | 12+12+1: first fit decreasing


def test_packed_encoding_of_one_sentence_and_of_one_cut_at_the_context():
    torch.manual_seed(0)
    model = open_clip.create_model("toy-clip", pretrained=None).eval()
    texts = ["a red circle", " and ".join(["a small blue square next to a large green star"] * 6)]
    tokens = open_clip.get_tokenizer("toy-clip")(texts)
    assert int((tokens[1] != 0).sum()) == tokens.shape[1]  # the long one fills the whole context
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tokens), dim=-1)
        torch.testing.assert_close(encode_tokens_packed(model, tokens), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(encode_tokens_packed(model, tokens[:1]), expected[:1], atol=1e-5, rtol=0)


def test_checkpoint_round_trips_through_open_clip(tmp_path):
    torch.manual_seed(1)
    model = open_clip.create_model("toy-clip", pretrained=None).eval()
    from safetensors.torch import save_file

    path = tmp_path / "toy.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    reloaded, _, _ = open_clip.create_model_and_transforms("toy-clip", pretrained=str(path))
    ours = load_clip("toy-clip", str(path))
    tokens = open_clip.get_tokenizer("toy-clip")(SENTENCES)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval().encode_text(tokens), model.encode_text(tokens))
    torch.testing.assert_close(ours.encode_text(SENTENCES), F.normalize(model.encode_text(tokens), dim=-1),
                               atol=1e-5, rtol=0)
    assert ours.fingerprint.startswith("toy-clip:") and ours.fingerprint != "toy-clip:random"
    image = toyworld.render(toyworld.scenes(0, "eval", 1)[0], 128)
    embedding = ours.encode_images([image])
    assert embedding.shape == (1, ours.embed_dim)
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(1))


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(DecapError, match="not found"):
        load_clip("toy-clip", str(tmp_path / "missing.safetensors"))
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DecapError, match="damaged"):
        load_clip("toy-clip", str(damaged))
    with pytest.raises(DecapError, match="unknown CLIP architecture"):
        load_clip("no-such-model")
    torch.save(open_clip.create_model("RN50", pretrained=None).state_dict(), tmp_path / "rn50.pt")
    with pytest.raises(DecapError, match="does not fit"):
        load_clip("toy-clip", str(tmp_path / "rn50.pt"))


def test_cli_prints_one_line_for_a_missing_checkpoint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "train-decoder", "--clip-checkpoint", str(tmp_path / "nope.pt"),
         "--out", str(tmp_path / "dec")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "CLIP checkpoint not found" in result.stderr and "Traceback" not in result.stderr
