from __future__ import annotations

import open_clip
import pytest
import torch

from model.encoders import TemporalTransformer, TextEncoder, WeightsError, create_clip, trim_tokens
from model.glccl import RetrievalModel, make_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RetrievalModel(make_config("glccl", backbone="glccl-test", num_frames=4, max_words=16)).eval()


def test_text_features_match_open_clip_and_the_cut_context(model):
    tokenizer = model.tokenizer()
    tokens = tokenizer(["a red circle moves left", "a blue square"])
    assert tokens.shape == (2, 16)
    with torch.no_grad():
        cut = model.encode_text(trim_tokens(tokens))
        clip_tokens = torch.nn.functional.pad(tokens, (0, 77 - 16))  # the full 77-token context
        full = model.encode_text(clip_tokens)
    assert cut.words.shape[1] == 7  # "a red circle moves left" + SOT + EOT
    torch.testing.assert_close(cut.sentence, full.sentence, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cut.words, full.words[:, :7], rtol=1e-5, atol=1e-5)
    # SOT (position 0) is never a word: its feature is the same for every query
    assert cut.word_mask.tolist() == [[False] + [True] * 6, [False] + [True] * 4 + [False] * 2]


def test_sentence_feature_is_open_clips_encode_text():
    torch.manual_seed(3)
    clip = create_clip("glccl-test").eval()
    tokens = open_clip.get_tokenizer("glccl-test")(["a red circle moves left", "a blue square"])  # [2, 77]
    with torch.no_grad():
        ours = TextEncoder(clip)(trim_tokens(tokens)).sentence
        torch.testing.assert_close(ours, clip.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_temporal_transformer_ignores_padded_frames():
    torch.manual_seed(1)
    tt = TemporalTransformer(32, 6, 2).eval()
    with torch.no_grad():  # away from the identity it starts as, so frames really attend to each other
        for p in tt.parameters():
            p.normal_(std=0.2)
    frames = torch.randn(2, 6, 32)
    mask = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    noisy = frames.clone()
    noisy[0, 4:] = 100 * torch.randn(2, 32)
    with torch.no_grad():
        a, b = tt(frames, mask), tt(noisy, mask)
        alone = tt(frames[:1, :4], mask[:1, :4])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[0, :4], alone[0])
    assert torch.all(a[0, 4:] == 0)


def test_temporal_transformer_starts_as_the_identity_plus_positions():
    tt = TemporalTransformer(32, 6, 3).eval()
    frames, mask = torch.randn(2, 6, 32), torch.ones(2, 6, dtype=torch.bool)
    with torch.no_grad():
        expected = 2 * frames + tt.position.weight  # V = (V0 + P) + V0 when every residual branch is zero
        torch.testing.assert_close(tt(frames, mask), expected)


def test_video_encoder_skips_padded_frames(model):
    frames = torch.randn(2, 4, 3, 32, 32)
    mask = torch.tensor([[True, True, False, False], [True] * 4])
    with torch.no_grad():
        out = model.encode_video(frames, mask)
        garbage = frames.clone()
        garbage[0, 2:] = 9.0
        again = model.encode_video(garbage, mask)
    assert out.frames.shape == (2, 4, 32)
    torch.testing.assert_close(out.frames, again.frames)


def test_clip_weights_load_from_a_local_file(tmp_path):
    torch.manual_seed(2)
    source = create_clip("glccl-test")
    path = tmp_path / "clip.pt"
    torch.save(source.state_dict(), path)
    loaded = create_clip("glccl-test", pretrained=path)
    for (k, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    model = RetrievalModel(make_config("glccl", backbone="glccl-test"), clip_weights=path)
    assert torch.equal(model.text.token_embedding.weight, source.token_embedding.weight)


def test_missing_or_mismatched_clip_weights_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        create_clip("glccl-test", pretrained=tmp_path / "nope.pt")
    other = tmp_path / "tiny.pt"
    torch.save(create_clip("glccl-tiny").state_dict(), other)
    with pytest.raises(WeightsError, match="do not fit backbone 'glccl-test'"):
        create_clip("glccl-test", pretrained=other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pt"):
        create_clip("glccl-test", pretrained=junk)


def test_exported_clip_towers_load_back_as_clip_weights(model, tmp_path):
    from model.glccl import export_clip

    path = export_clip(model, tmp_path / "clip.pt")
    other = RetrievalModel(make_config("xclip", backbone="glccl-test", num_frames=4, max_words=16), clip_weights=path)
    tokens = trim_tokens(model.tokenizer()(["a red circle moves left"]))
    frames, mask = torch.randn(1, 4, 3, 32, 32), torch.ones(1, 4, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(other.eval().encode_text(tokens).sentence, model.encode_text(tokens).sentence)
        torch.testing.assert_close(other.video.encode_frames(frames, mask), model.video.encode_frames(frames, mask))


def test_the_demo_backbone_encodes_a_frame_alone_as_in_a_batch():
    # glccl-tiny-rn's tower is convolutional with BatchNorm: in eval a frame's feature must not depend
    # on the other frames extracted with it (in train mode it does), or stored features would drift
    torch.manual_seed(0)
    model = RetrievalModel(make_config("glccl", backbone="glccl-tiny-rn", num_frames=3, max_words=16))
    frames, mask = torch.randn(4, 3, 3, 64, 64), torch.ones(4, 3, dtype=torch.bool)
    with torch.no_grad():
        model.train()
        trained = model.encode_video(frames, mask).frames[:1]
        model.eval()
        batch = model.encode_video(frames, mask).frames[:1]
        alone = model.encode_video(frames[:1], mask[:1]).frames
    assert batch.shape == (1, 3, 128)
    torch.testing.assert_close(alone, batch, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(trained, batch, rtol=1e-4, atol=1e-5)  # batch statistics: what eval avoids
