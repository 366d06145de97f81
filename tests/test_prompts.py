"""Prompt learner and text encoder: template, init, batching, g/h semantics."""

import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer

from indivaid_core.model import DescriptionGenerator, PromptLearner, TextEncoder, build_clip


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return build_clip("tiny-vit", None, (64, 32))


def test_text_encoder_matches_open_clip_encode_text(clip):
    tokens = SimpleTokenizer(context_length=clip.context_length)(["a striped zebra.", "a dog"])
    with torch.no_grad():
        ours = TextEncoder(clip)(clip.token_embedding(tokens), tokens)
        ref = clip.encode_text(tokens)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_template_and_context_slots(clip):
    pl = PromptLearner(50, clip, species="snow leopard", n_ctx=4)
    tok = SimpleTokenizer(context_length=clip.context_length)
    assert pl.template == "A photo of a X X X X snow leopard."
    ids = pl.tokens[0].tolist()
    assert ids[: pl.eot_index + 1] == [
        tok.sot_token_id,
        *tok.encode("a photo of a x x x x snow leopard."),
        tok.eot_token_id,
    ]
    assert pl.prefix.shape[1] == 5 and pl.prefix.shape[1] + 4 + pl.suffix.shape[1] == len(ids)
    assert pl.ctx.shape == (50, 4, 64)
    assert abs(pl.ctx.std().item() - 0.02) < 0.002 and abs(pl.ctx.mean().item()) < 0.002
    prompts_g, prompts_h = pl(torch.tensor([7]), torch.zeros(1, 32))
    assert torch.equal(prompts_h[0, 5:9], pl.ctx[7].detach())
    assert torch.equal(prompts_h[0, :5], pl.prefix[0])


@pytest.mark.parametrize("meta_net", [True, False])
def test_any_batch_size_matches_single_rows(clip, meta_net):
    torch.manual_seed(1)
    gen = DescriptionGenerator(clip, num_ids=20, species="zebra", n_ctx=4, meta_net=meta_net)
    for batch in (1, 3, 17):
        ids = torch.randint(0, 20, (batch,))
        feats = torch.randn(batch, 32)
        with torch.no_grad():
            g, h = gen(ids, feats)
            assert g.shape == h.shape == (batch, 32)
            for i in range(batch):
                g1, h1 = gen(ids[i : i + 1], feats[i : i + 1])
                assert torch.allclose(g[i], g1[0], atol=1e-5)
                assert torch.allclose(h[i], h1[0], atol=1e-5)


def test_g_is_image_specific_and_h_is_individual_specific(clip):
    torch.manual_seed(2)
    gen = DescriptionGenerator(clip, num_ids=5, species="zebra", meta_net=True)
    ids = torch.tensor([3, 3])
    with torch.no_grad():
        g, h = gen(ids, torch.randn(2, 32))
        assert torch.allclose(h[0], h[1], atol=1e-6)  # same individual, no image term
        assert not torch.allclose(g[0], g[1], atol=1e-4)  # different images
        assert torch.allclose(gen.individual(ids), h, atol=1e-6)
        assert not torch.allclose(gen.individual(torch.tensor([4]))[0], h[0], atol=1e-4)
    plain = DescriptionGenerator(clip, num_ids=5, species="zebra", meta_net=False)
    g, h = plain(ids, None)
    assert torch.equal(g, h)


def test_only_prompt_parameters_learn(clip):
    gen = DescriptionGenerator(clip, num_ids=4, species="zebra", meta_net=True)
    for p in gen.text_encoder.parameters():
        p.requires_grad_(False)
    g, h = gen(torch.tensor([0, 2]), torch.randn(2, 32))
    (g.sum() + h.sum()).backward()
    grad = gen.prompt_learner.ctx.grad
    assert grad[[0, 2]].abs().sum() > 0 and grad[[1, 3]].abs().sum() == 0
    assert all(p.grad is not None for p in gen.prompt_learner.meta_net.parameters())


def test_bad_inputs_are_named(clip):
    pl = PromptLearner(3, clip)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        pl(torch.tensor([3]), torch.zeros(1, 32))
    with pytest.raises(ValueError, match="img_feats"):
        pl(torch.tensor([0]), None)
    with pytest.raises(ValueError, match="context length"):
        PromptLearner(3, clip, species=" ".join(["spotted"] * 40))


@pytest.mark.parametrize("backbone", ["lite0", "tiny-vit"])
def test_truncated_text_encoder_equals_the_full_one(backbone):
    """The causal mask keeps slots after end-of-text out of the pooled feature."""
    clip = build_clip(backbone, None, (32, 32))
    full = DescriptionGenerator(clip, 5, "tiger", 4, True)
    short = DescriptionGenerator(clip, 5, "tiger", 4, True, truncate_text=True)
    short.load_state_dict(full.state_dict())
    ids, feats = torch.tensor([0, 1, 4, 4]), torch.randn(4, clip.text_projection.shape[1])
    with torch.no_grad():
        a, b = full(ids, feats), short(ids, feats)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    n_eot = int(full.prompt_learner.tokens.argmax()) + 1
    assert n_eot < full.prompt_learner.tokens.shape[1]  # something was cut
