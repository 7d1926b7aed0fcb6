import torch

from training.models.heads import ProjectionHead, SimCLRProjectionHead
from training.models.resnet import ResNetBackbone
from training.models.vit import ViTEncoder, patchify, sincos_pos_embed_2d


def test_resnet_embeds_small_images_at_any_width():
    for in_channels, width in ((1, 8), (3, 16)):
        net = ResNetBackbone(in_channels, width).eval()
        assert net.dim == 8 * width
        assert net(torch.randn(2, in_channels, 28, 28)).shape == (2, 8 * width)
    assert isinstance(ResNetBackbone().maxpool, torch.nn.Identity) and ResNetBackbone().conv1.stride == (1, 1)


def test_resnet_width_64_has_resnet18_parameter_count_without_fc():
    net = ResNetBackbone(3, 64)
    # torchvision resnet18 has 11,689,512 parameters: minus fc (513,000), 7x7 stem (9,408) plus 3x3 stem (1,728)
    assert sum(p.numel() for p in net.parameters()) == 11_689_512 - 513_000 - 9_408 + 1_728


def test_heads_follow_their_layer_specs():
    head = SimCLRProjectionHead(32, 16, 8)
    assert [type(m).__name__ for m in head.layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head.layers[0].bias is None and head.layers[3].bias is not None
    assert head(torch.randn(4, 32)).shape == (4, 8)
    assert len(ProjectionHead([(4, 2, None, None)]).layers) == 1


def test_patchify_orders_patches_row_major():
    images = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify(images, 2)  # (1, 4, 4)
    assert patches[0, 0].tolist() == [0, 1, 4, 5] and patches[0, 1].tolist() == [2, 3, 6, 7]
    assert patches[0, 3].tolist() == [10, 11, 14, 15]


def test_sincos_positions_are_distinct():
    pos = sincos_pos_embed_2d(7, 32)
    assert pos.shape == (49, 32)
    assert torch.cdist(pos, pos).add(torch.eye(49)).min() > 0.1


def test_vit_encoder_sees_only_the_patches_it_keeps():
    torch.manual_seed(0)
    vit = ViTEncoder(image_size=8, patch_size=4, in_channels=1, dim=16, depth=2, num_heads=2).eval()
    images = torch.randn(2, 1, 8, 8)
    keep_ids = torch.tensor([[0, 3], [1, 2]])  # (B, N_keep) patch indices
    tokens = vit.forward_tokens(images, keep_ids)
    assert tokens.shape == (2, 2, 16)
    changed = images.clone()
    changed[0, :, :4, 4:] = 99.0  # patch 1 of image 0, which it does not keep
    changed[1, :, :4, :4] = 99.0  # patch 0 of image 1, likewise
    assert torch.allclose(vit.forward_tokens(changed, keep_ids), tokens)
    changed[0, :, :4, :4] = 99.0  # patch 0 of image 0 is kept: its tokens must change
    assert not torch.allclose(vit.forward_tokens(changed, keep_ids)[0], tokens[0])
    assert vit(images).shape == (2, 16)  # the embedding uses every patch
