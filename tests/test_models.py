import pytest
import torch

from sslkd.models import DINOHead, build_backbone


@pytest.mark.parametrize(
    "name, dim",
    [
        ("resnet18", 512),
        ("resnet34", 512),
        ("resnet50", 2048),
        ("resnet101", 2048),
        ("mobilenetv3_large", 960),
        ("efficientnet_b0", 1280),
    ],
)
def test_cnn_interface(name, dim):
    net = build_backbone(name, img_size=16, in_chans=3).eval()
    cls, tokens = net.forward_features(torch.randn(2, 3, 16, 16))
    assert cls.shape == (2, dim) and tokens.shape[0] == 2 and tokens.shape[2] == dim
    torch.testing.assert_close(cls, tokens.mean(1))
    with pytest.raises(ValueError, match="mask"):
        net.forward_features(torch.randn(2, 3, 16, 16), mask=torch.zeros(2, 4, 4, dtype=torch.bool))


def test_resnet_small_stem_keeps_resolution():
    small = build_backbone("resnet18", in_chans=1, small_stem=True).eval()
    big = build_backbone("resnet18", in_chans=1, small_stem=False).eval()
    x = torch.randn(1, 1, 32, 32)
    assert small.forward_features(x)[1].shape[1] == 16  # 32/8 squared
    assert big.forward_features(x)[1].shape[1] == 1


@pytest.mark.parametrize("name, dim", [("vit_tiny", 192), ("vit_small", 384), ("vit_base", 768)])
def test_vit_interface_and_patch_sizes(name, dim):
    net = build_backbone(name, img_size=16, patch_size=4, in_chans=3, depth=1).eval()
    cls, tokens = net.forward_features(torch.randn(2, 3, 16, 16))
    assert cls.shape == (2, dim) and tokens.shape == (2, 16, dim)
    _, local = net.forward_features(torch.randn(2, 3, 8, 8))  # any size: resampled pos-embed
    assert local.shape == (2, 4, dim)
    with pytest.raises(ValueError, match="divisible"):
        build_backbone(name, img_size=16, patch_size=5)


def test_vit_mask_replaces_patches_by_learned_token():
    net = build_backbone("vit_tiny", img_size=16, patch_size=4, depth=2).eval()
    x = torch.randn(2, 3, 16, 16)
    none = torch.zeros(2, 4, 4, dtype=torch.bool)
    torch.testing.assert_close(net.forward_features(x, none)[1], net.forward_features(x)[1])
    mask = none.clone()
    mask[0, 1, 2] = True
    out = net.forward_features(x, mask)[1]
    torch.testing.assert_close(out[1], net.forward_features(x)[1][1])  # other image untouched
    assert not torch.allclose(out[0], net.forward_features(x)[1][0])
    # a masked patch's content no longer matters
    x2 = x.clone()
    x2[0, :, 4:8, 8:12] = 5.0
    torch.testing.assert_close(net.forward_features(x2, mask)[1], out)
    out.sum().backward()
    assert net.mask_token.grad is not None and net.mask_token.grad.abs().sum() > 0


def test_dino_head_weight_norm():
    head = DINOHead(8, out_dim=32, hidden_dim=16, bottleneck_dim=4)
    y = head(torch.randn(5, 8))
    assert y.shape == (5, 32) and y.abs().max() <= 1 + 1e-5  # cosines: unit rows, unit input
    assert not head.last_layer.weight_g.requires_grad
    assert head(torch.randn(3, 5, 8)).shape == (3, 5, 32)
    free = DINOHead(8, 32, 16, 4, norm_last_layer=False)
    assert free.last_layer.weight_g.requires_grad
