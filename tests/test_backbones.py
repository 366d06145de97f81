"""Backbones: lite0 weights are real (it recognises photos), ViT geometry, offline errors, and
the whole model trains one step on both backbones."""

import huggingface_hub
import open_clip
import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from open_clip.timm_model import TimmModel
from open_clip.transformer import VisionTransformer
from PIL import Image

from indivaid_core.losses import i2t_ce_loss, id_loss, supcon_loss, triplet_loss
from indivaid_core.model import (
    AttentionFusion,
    DescriptionGenerator,
    ReIDEncoder,
    build_clip,
    checkpoints,
    convert_lite0_state_dict,
    lite0_imagenet_classifier,
    load_lite0_imagenet,
    preprocess_info,
)
from indivaid_core.model.backbones import (
    build_image_tower,
    layer_groups,
    lite0_checkpoint_path,
)
from indivaid_core.train.stage2 import Stage2Model, param_groups

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {504, 967, 968}  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def lite0():
    return build_clip("lite0", "lite0-imagenet", (96, 96))


def test_lite0_keys_convert_one_to_one():
    raw = torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    sd = convert_lite0_state_dict(raw, [len(s) for s in net.blocks])
    assert len(sd) == len(raw)
    result = net.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(net.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(net.blocks[0][0].conv_pw.weight, raw["_blocks.0._project_conv.weight"])


def test_lite0_conversion_rejects_unknown_layouts():
    raw = torch.load(lite0_checkpoint_path(), map_location="cpu", weights_only=True)
    with pytest.raises(KeyError, match="_blocks.0._se_reduce.weight"):
        convert_lite0_state_dict({**raw, "_blocks.0._se_reduce.weight": torch.zeros(1)}, [16])
    with pytest.raises(KeyError, match="blocks"):
        convert_lite0_state_dict(raw, [1, 2, 2, 3, 3, 4])  # one stage short
    other = timm.create_model("tf_efficientnet_lite1", pretrained=False)  # deeper stages
    with pytest.raises((KeyError, RuntimeError)):
        load_lite0_imagenet(other)


@pytest.mark.parametrize(
    ("photo", "classes"), [("chelsea", IMAGENET_CATS), ("coffee", IMAGENET_COFFEE)]
)
def test_lite0_reads_real_photos(lite0, photo, classes):
    info = preprocess_info(lite0)
    assert info.image_size == (96, 96)
    tf = T.Compose(
        [T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(info.mean, info.std)]
    )
    x = tf(Image.fromarray(getattr(skimage.data, photo)()))[None]
    trunk, fc = lite0.visual.trunk.eval(), lite0_imagenet_classifier()
    with torch.no_grad():
        top1 = int(fc(trunk(x)).argmax())
    assert top1 in classes


def test_lite0_is_an_open_clip_timm_tower(lite0):
    assert isinstance(lite0, open_clip.CLIP)
    assert isinstance(lite0.visual, TimmModel)
    assert lite0.visual.trunk.num_features == 1280


def test_tiny_vit_shares_the_vit_b16_code_path():
    cfg_tiny = open_clip.get_model_config("tiny-vit")["vision_cfg"]
    cfg_b16 = open_clip.get_model_config("ViT-B-16")["vision_cfg"]
    assert "timm_model_name" not in cfg_tiny and "timm_model_name" not in cfg_b16
    assert cfg_tiny["patch_size"] == cfg_b16["patch_size"] == 16
    model = build_clip("tiny-vit", None, (224, 224))
    assert type(model.visual) is VisionTransformer
    assert preprocess_info(model).mean == open_clip.OPENAI_DATASET_MEAN


def test_vit_non_square_overlapping_patches():
    model = build_clip("tiny-vit", None, (256, 128), stride=12)
    assert model.visual.conv1.stride == (12, 12)
    assert model.visual.grid_size == (21, 10)  # (256-16)//12+1, (128-16)//12+1
    assert model.visual.positional_embedding.shape[0] == 21 * 10 + 1
    enc = ReIDEncoder(model, num_classes=3)
    out = enc(torch.randn(2, 3, 256, 128))
    assert out["global"].shape == (2, 64) and out["proj"].shape == (2, 32)
    with pytest.raises(ValueError, match="patch grid"):
        enc(torch.randn(2, 3, 224, 224))


@pytest.mark.parametrize(
    "backbone, size, stride", [("lite0", (80, 64), None), ("tiny-vit", (64, 48), 12)]
)
def test_image_tower_alone_is_the_tower_of_build_clip(backbone, size, stride):
    """build_image_tower (identify's export loading) makes the modules and random draws of
    build_clip's image tower, without its text tower."""
    alone = build_image_tower(backbone, size, stride)
    whole = build_clip(backbone, None, size, stride).visual
    assert repr(alone) == repr(whole)
    mine, theirs = alone.state_dict(), whole.state_dict()
    assert list(mine) == list(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(alone.eval()(images), whole.eval()(images))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_image_tower("no-such-net", size)


def test_checkpoint_pos_embed_is_interpolated_to_the_new_grid(tmp_path):
    square = build_clip("tiny-vit", None, (224, 224), init_seed=1)  # differs from the default 0
    path = tmp_path / "tiny.pt"
    torch.save(square.state_dict(), path)
    model = build_clip("tiny-vit", f"open_clip:{path}", (256, 128), stride=12)
    old = square.visual.positional_embedding.detach()
    new = model.visual.positional_embedding.detach()
    assert torch.equal(new[0], old[0])  # class slot untouched
    grid = old[1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    # CLIP-ReID's resize: bilinear, no antialias (tests/test_golden_clipreid.py checks it too)
    ref = F.interpolate(grid, size=(21, 10), mode="bilinear", antialias=False, align_corners=False)
    assert torch.allclose(new[1:], ref.permute(0, 2, 3, 1).reshape(210, -1), atol=1e-6)
    assert torch.equal(model.visual.conv1.weight, square.visual.conv1.weight)
    assert torch.equal(model.token_embedding.weight, square.token_embedding.weight)
    gelu = model.visual.transformer.resblocks[0].mlp.gelu
    assert not isinstance(gelu, open_clip.transformer.QuickGELU)  # open_clip: keeps GELU


def test_bare_openai_layout_file_reads_as_openai_weights(tmp_path, caplog):
    square = build_clip("tiny-vit", None, (224, 224), init_seed=1)
    path = tmp_path / "tiny.pt"
    torch.save(square.state_dict(), path)
    model = build_clip("tiny-vit", str(path), (64, 32))
    assert isinstance(
        model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU
    )
    assert "read as OpenAI weights" in caplog.text and "open_clip:" in caplog.text
    assert preprocess_info(model).mean == (0.5, 0.5, 0.5)


def test_random_parts_are_reproducible():
    a, b = build_clip("lite0", init_seed=3), build_clip("lite0", init_seed=3)
    c = build_clip("lite0", init_seed=4)
    assert torch.equal(a.token_embedding.weight, b.token_embedding.weight)
    assert torch.equal(a.visual.head.proj.weight, b.visual.head.proj.weight)
    assert not torch.equal(a.token_embedding.weight, c.token_embedding.weight)
    assert torch.equal(a.visual.trunk.conv_stem.weight, c.visual.trunk.conv_stem.weight)


def test_openai_offline_says_what_file_to_get_and_where(monkeypatch, tmp_path):
    """This machine has no internet: `openai` must fail on the first try, naming the file."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("INDIVAID_WEIGHTS_DIR", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(checkpoints, "is_online", lambda *a, **k: False)
    with pytest.raises(RuntimeError) as err:
        build_clip("ViT-B-16", "openai", (256, 128), stride=16)
    msg = str(err.value)
    assert "openaipublic.azureedge.net" in msg and "ViT-B-16.pt" in msg
    assert ".cache/clip" in msg and "INDIVAID_WEIGHTS_DIR" in msg


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        build_clip("nope")
    with pytest.raises(ValueError, match="not-a-file.pt"):
        build_clip("tiny-vit", "not-a-file.pt")
    with pytest.raises(ValueError, match="lite0-imagenet"):
        build_clip("tiny-vit", "lite0-imagenet")
    with pytest.raises(ValueError, match="stride"):
        build_clip("lite0", None, stride=8)


@pytest.mark.parametrize(
    ("backbone", "size", "sie"), [("lite0", (96, 96), 0.0), ("tiny-vit", (64, 32), 1.0)]
)
def test_whole_model_trains_one_step(backbone, size, sie):
    torch.manual_seed(0)
    num_ids, batch = 3, 6
    clip = build_clip(backbone, "lite0-imagenet" if backbone == "lite0" else None, size)
    enc = ReIDEncoder(clip, num_ids, num_cameras=2, sie_coef=sie)
    gen = DescriptionGenerator(clip, num_ids, "zebra")
    dim = enc.feature_dims["proj"]
    fusion = AttentionFusion(dim, heads=4)
    images, labels = torch.randn(batch, 3, *size), torch.tensor([0, 0, 1, 1, 2, 2])
    cams = torch.tensor([0, 1, 0, 1, 0, 1])

    out = enc(images, cams)
    g, h = gen(labels, out["proj"])
    stage1 = supcon_loss(out["proj"], g, labels, labels, 10.0) + supcon_loss(
        h, out["proj"], labels, labels, 10.0
    )
    z, weights, _ = fusion(gen.individual(torch.arange(num_ids)), g, labels)
    stage2 = (
        id_loss(out["logits"], labels)
        + sum(triplet_loss(f, labels) for f in out["triplet"])
        + i2t_ce_loss(out["proj"], z, labels, 10.0)
    )
    (stage1 + stage2).backward()

    assert weights.shape == (num_ids, 2)
    for module in (enc, gen.prompt_learner, fusion):
        grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        assert any(gr.abs().sum() > 0 for gr in grads)
    assert gen.prompt_learner.ctx.grad.abs().sum() > 0
    enc.eval()
    with torch.no_grad():
        ev = enc(images, cams)
    assert ev["global"].shape == (batch, enc.feature_dims["global"])
    assert [t.shape for t in ev["logits"]] == [(batch, num_ids)] * 2


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_bn_keeps_the_tower_statistics_but_not_the_necks(freeze):
    torch.manual_seed(0)
    enc = ReIDEncoder(build_clip("lite0", None, (64, 64)), 3)
    net = Stage2Model(enc, None, freeze_bn=freeze).train()
    tower_bn = next(m for m in enc.visual.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before_tower = tower_bn.running_mean.clone()
    before_neck = enc.bn_global.running_mean.clone()
    net(torch.randn(4, 3, 64, 64) * 3 + 1)
    assert tower_bn.training is not freeze
    assert torch.equal(tower_bn.running_mean, before_tower) is freeze
    assert not torch.equal(enc.bn_global.running_mean, before_neck)  # necks always learn
    # the tower's parameters get lr x backbone_factor (biases x bias_factor on top)
    lrs = {
        p: g["lr"]
        for g in param_groups(net, lr=1.0, wd=0.0, bias_factor=2.0, backbone_factor=0.1)
        for p in g["params"]
    }
    assert lrs[enc.visual.trunk.conv_stem.weight] == pytest.approx(0.1)
    assert lrs[enc.head_global.weight] == pytest.approx(1.0)
    assert lrs[tower_bn.bias] == pytest.approx(0.2)


def test_frozen_groups_leave_the_first_blocks_and_their_statistics_as_they_were():
    """stage2.frozen_groups: 4 freezes lite0's stem and its first three blocks: after a training
    step their weights and BatchNorm statistics are unchanged, the rest learns, and the
    optimiser is not handed them."""
    torch.manual_seed(0)
    enc = ReIDEncoder(build_clip("lite0", None, (64, 64)), 3)
    assert layer_groups(enc.visual) == 17
    net = Stage2Model(enc, None, frozen_groups=4).train()
    trunk = enc.visual.trunk
    frozen = [trunk.conv_stem, trunk.bn1, trunk.blocks[0], trunk.blocks[1]]
    before = {k: v.clone() for k, v in trunk.state_dict().items()}
    groups = param_groups(net, lr=0.1, wd=0.0, bias_factor=1.0, backbone_factor=1.0)
    opt = torch.optim.SGD(groups, lr=0.1)
    out = net(torch.randn(6, 3, 64, 64) * 3 + 1)
    (out["logits"][0].logsumexp(1).sum() + out["global"].pow(2).sum()).backward()
    opt.step()
    after = trunk.state_dict()
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    assert frozen_ids and not any(id(p) in frozen_ids for g in groups for p in g["params"])
    for key, value in before.items():
        in_frozen = key.startswith(("conv_stem.", "bn1.", "blocks.0.", "blocks.1."))
        assert torch.equal(after[key], value) is in_frozen, key
    assert trunk.blocks[2][0].bn1.training and not trunk.blocks[1][1].bn1.training


def test_frozen_groups_are_counted_as_open_clip_counts_them():
    """On a ViT, freezing all groups but the last leaves only `proj` training (open_clip's last
    group), and freezing the first leaves the blocks training: the count matches `lock`'s."""
    vit = build_clip("tiny-vit", None, (32, 32)).visual
    total = layer_groups(vit)
    assert total == len(vit.transformer.resblocks) + 2
    enc = ReIDEncoder(build_clip("tiny-vit", None, (32, 32)), 3)
    Stage2Model(enc, None, frozen_groups=total - 1)
    assert [n for n, p in enc.visual.named_parameters() if p.requires_grad] == ["proj"]
    enc = ReIDEncoder(build_clip("tiny-vit", None, (32, 32)), 3)
    Stage2Model(enc, None, frozen_groups=1)
    assert not enc.visual.conv1.weight.requires_grad and not enc.visual.ln_pre.weight.requires_grad
    assert all(p.requires_grad for p in enc.visual.transformer.parameters())
    enc = ReIDEncoder(build_clip("lite0", None, (64, 64)), 3)
    with pytest.raises(ValueError, match="17 layer groups, not 18"):
        Stage2Model(enc, None, frozen_groups=18)
    every = Stage2Model(ReIDEncoder(build_clip("lite0", None, (64, 64)), 3), None, frozen_groups=17)
    assert not any(p.requires_grad for p in every.encoder.visual.trunk.parameters())
