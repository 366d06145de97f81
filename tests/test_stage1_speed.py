"""Stage 1's fast text path (`stage1.truncate_text`): the prefix computed once per layer, the
slots after end-of-text dropped, the last layer at end-of-text only. It must give the plain
path's features and gradients to float rounding, and leave the plain path bit for bit alone."""

from pathlib import Path

import open_clip
import pytest
import torch

from indivaid_core.model import DescriptionGenerator, TextEncoder, build_clip

GOLDEN = Path(__file__).parent / "golden" / "clipreid"
GOLDEN_ARCH = "clipreid-golden-tiny"
TOWERS = {"lite0": (32, 32), "tiny-vit": (64, 32)}


@pytest.fixture(scope="module", params=sorted(TOWERS))
def clip(request) -> open_clip.CLIP:
    """Each text tower the tests build: lite0's (4 layers, 4 heads) and tiny-vit's (2, 2)."""
    return build_clip(request.param, None, TOWERS[request.param]).requires_grad_(False).eval()


def pair(clip, meta_net: bool, n_ctx: int, species: str) -> tuple[DescriptionGenerator, ...]:
    """A plain and a fast generator with the same weights."""
    torch.manual_seed(3)
    plain = DescriptionGenerator(clip, 6, species, n_ctx, meta_net)
    fast = DescriptionGenerator(clip, 6, species, n_ctx, meta_net, truncate_text=True)
    fast.load_state_dict(plain.state_dict())
    assert fast.text_encoder.cache_prefix and not plain.text_encoder.cache_prefix
    return plain, fast


def run(gen: DescriptionGenerator, ids: torch.Tensor, feats: torch.Tensor) -> dict:
    """g, h, h by `individual`, and the gradients of a loss that weighs every output row."""
    gen.zero_grad(set_to_none=True)
    g, h = gen(ids, feats)
    weights = torch.linspace(-1.0, 2.0, g.numel()).view_as(g)
    ((g * weights).sum() + (h * weights.flip(0)).sum()).backward()
    grads = {k: p.grad.clone() for k, p in gen.named_parameters() if p.grad is not None}
    return {"g": g.detach(), "h": h.detach(), "ind": gen.individual(ids).detach(), **grads}


@pytest.mark.parametrize("meta_net", [True, False])
@pytest.mark.parametrize("n_ctx", [2, 4])
@pytest.mark.parametrize("species", ["snow leopard", "stoat"])  # 2 words; 2 BPE tokens
def test_fast_text_path_equals_the_plain_one(clip, meta_net, n_ctx, species):
    plain, fast = pair(clip, meta_net, n_ctx, species)
    ids = torch.tensor([0, 3, 3, 5, 1, 3])
    feats = torch.randn(len(ids), clip.text_projection.shape[1])
    a, b = run(plain, ids, feats), run(fast, ids, feats)
    assert a.keys() == b.keys() and "prompt_learner.ctx" in a
    assert meta_net == any("meta_net" in k for k in a)
    for key in a:
        scale = a[key].abs().max()
        assert scale > 0, key  # a dead output or gradient would pass any tolerance
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-5 * max(1.0, scale))


def test_cached_encoder_equals_open_clip_encode_text(clip):
    """Real token embeddings, split after "<SOT> a photo of a", against open_clip itself."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=clip.context_length)
    tokens = tokenizer(["a photo of a red fox."])
    emb = clip.token_embedding(tokens)
    enc = TextEncoder(clip, truncate=True)
    with torch.no_grad():
        ours = enc(emb[:, 5:].expand(3, -1, -1), tokens, prefix=emb[:, :5])
        ref = clip.encode_text(tokens)
    torch.testing.assert_close(ours, ref.expand(3, -1), rtol=1e-5, atol=1e-5)


def test_plain_path_is_bitwise_unchanged(clip):
    """truncate_text false must keep the bits of full prompts through open_clip's blocks."""
    torch.manual_seed(4)
    gen = DescriptionGenerator(clip, 6, "sea star", 4, True)
    ids, feats = torch.tensor([2, 2, 4]), torch.randn(3, clip.text_projection.shape[1])
    with torch.no_grad():
        g, h = gen(ids, feats)
        prompts_g, _ = gen.prompt_learner(ids, feats)
        full_h = gen.prompt_learner.individual_prompts(torch.tensor([2, 4]))
        ref = gen.text_encoder(torch.cat([prompts_g, full_h]), gen.prompt_learner.tokens)
    assert torch.equal(g, ref[:3]) and torch.equal(h, ref[3:][torch.tensor([0, 0, 1])])


def test_fast_path_runs_and_computes_fewer_slots(clip, monkeypatch):
    """The fast path is taken (the full one is never called) and its MLPs see fewer slots."""
    plain, fast = pair(clip, True, 4, "tiger")
    ids, feats = torch.tensor([0, 1, 1, 4]), torch.randn(4, clip.text_projection.shape[1])
    tokens = plain.prompt_learner.tokens
    n_eot, p = int(tokens.argmax()) + 1, plain.prompt_learner.prefix.shape[1]
    rows = 4 + 3  # four g rows, three distinct h rows
    blocks = clip.transformer.resblocks
    seen: list[int] = []
    hooks = [
        b.mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[:-1].numel()))
        for b in blocks
    ]
    try:
        with torch.no_grad():
            plain(ids, feats)
            full = sum(seen)
            seen.clear()
            monkeypatch.setattr(TextEncoder, "_full", lambda *a: pytest.fail("full path ran"))
            fast(ids, feats)
    finally:
        for hook in hooks:
            hook.remove()
    assert full == len(blocks) * rows * tokens.shape[1]
    layers = len(blocks)
    assert sum(seen) == layers * p + (layers - 1) * rows * (n_eot - p) + rows


@torch.no_grad()
def test_fast_path_matches_the_clipreid_golden_text_features():
    """The released code's outputs (tests/golden/clipreid): CLIP-ReID's h and IndivAID's g."""
    if GOLDEN_ARCH not in open_clip.list_models():
        open_clip.add_model_config(GOLDEN / "model_config")
    text = torch.load(GOLDEN / "text_features.pt", map_location="cpu", weights_only=True)
    clip = build_clip(GOLDEN_ARCH, str(GOLDEN / "clip_tiny_openai_state_dict.pt"), (256, 128), 16)
    gen = DescriptionGenerator(clip.eval(), 3, "stoat", 4, True, truncate_text=True)
    assert gen.text_encoder.cache_prefix
    pl = gen.prompt_learner
    pl.ctx.copy_(text["ctx"])
    pl.meta_net[0].weight.copy_(text["ia_meta_linear1_weight"])
    pl.meta_net[0].bias.copy_(text["ia_meta_linear1_bias"])
    pl.meta_net[2].weight.copy_(text["ia_meta_linear2_weight"])
    pl.meta_net[2].bias.copy_(text["ia_meta_linear2_bias"])
    close = {"rtol": 1e-4, "atol": 1e-5}  # the fixtures' tolerance
    torch.testing.assert_close(gen.individual(text["labels"]), text["text_features"], **close)
    batch = gen.individual(text["batch_labels"])
    torch.testing.assert_close(batch, text["batch_text_features"], **close)
    g, _ = gen(text["ia_image_labels"], text["ia_image_features"])
    torch.testing.assert_close(g, text["ia_text_features_per_image"], **close)
