"""BoT and SSB-BoT blocks: the BoT block against its definition, ratio-1 equivalence, where
the attention runs, and padded batches (an image alone and in a padded batch give the same
features in its region)."""
import pytest
import torch
import torch.nn.functional as F

from ssb_det.layers import SaliencySampler
from ssb_det.modeling import BoTBlock, SSBBoTBlock
from test_blocks import _randomise_bn  # tests/modeling is on sys.path


def _peaked_saliency(module, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, SaliencySampler):
            w = m.saliency_conv.weight
            w.data.copy_(torch.randn(w.shape, generator=gen, dtype=w.dtype))
    return module


def _block(cls, in_ch=16, out_ch=32, stride=1, **kwargs):
    torch.manual_seed(0)
    block = cls(in_ch, out_ch, bottleneck_channels=8, stride=stride, norm="BN",
                attention_span=16, **kwargs)
    _randomise_bn(block)
    return block.double().eval()


@pytest.mark.parametrize("stride", [1, 2])
def test_bot_block_is_conv1_attention_pool_bn_conv3_plus_shortcut(stride):
    block = _block(BoTBlock, stride=stride)
    x = torch.randn(2, 16, 7, 6, dtype=torch.float64)
    with torch.no_grad():
        a = F.relu(block.conv1(x))
        b = block.attn(a)
        if stride == 2:  # BoTNet: 2x2 average pooling after the attention
            b = F.avg_pool2d(b, 2, 2, ceil_mode=True)
        b = F.relu(block.attn_norm(b))
        want = F.relu(block.conv3(b) + block.shortcut(x))
        got = block(x)
    assert got.shape == (2, 32, 4, 3) if stride == 2 else (2, 32, 7, 6)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("in_ch", [16, 32])
def test_ssb_bot_ratio_one_zero_saliency_equals_the_bot_block(in_ch):
    ref = _block(BoTBlock, in_ch=in_ch)
    ssb = _block(SSBBoTBlock, in_ch=in_ch, sampling_ratio=1.0, grid_size=7, grid_padding=6,
                 kernel_sigma=2.0)
    missing, unexpected = ssb.load_state_dict(ref.state_dict(), strict=False)
    assert missing == ["sampler.saliency_conv.weight"] and unexpected == []
    x = torch.randn(2, in_ch, 9, 11, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ssb(x), ref(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride,size,attended", [(1, (9, 12), (5, 6)), (2, (9, 12), (5, 6)),
                                                  (2, (8, 7), (4, 4))])
def test_ssb_bot_attends_over_the_sampled_positions(stride, size, attended):
    # Stride 1 at ratio 0.5: round(r H) x round(r W), restored to H x W. Stride 2: straight
    # to the output size ceil(H / 2) x ceil(W / 2), whatever the stage ratio.
    block = _block(SSBBoTBlock, stride=stride, sampling_ratio=0.5 if stride == 1 else 0.25)
    seen = []
    block.attn.register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape[-2:])))
    x = torch.randn(1, 16, *size, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
    assert seen == [attended]
    assert y.shape[-2:] == (size if stride == 1 else attended)


@pytest.mark.parametrize("cls,stride", [(BoTBlock, 1), (BoTBlock, 2), (SSBBoTBlock, 1),
                                        (SSBBoTBlock, 2)])
def test_an_image_alone_and_in_a_padded_batch_give_the_same_features_in_its_region(cls, stride):
    block = _peaked_saliency(_block(cls, stride=stride))
    gen = torch.Generator().manual_seed(2)
    batch = torch.randn(2, 16, 11, 13, generator=gen, dtype=torch.float64)  # padding: noise
    valid = torch.tensor([[11.0, 13.0], [7.0, 9.0]], dtype=torch.float64)
    with torch.no_grad():
        out = block(batch, valid)
        alone = block(batch[1:, :, :7, :9])
    h, w = alone.shape[-2:]
    assert (h, w) == ((7, 9) if stride == 1 else (4, 5))
    torch.testing.assert_close(out[1:, :, :h, :w], alone, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[:1], block(batch[:1]), rtol=1e-9, atol=1e-9)
    assert torch.isfinite(out).all()


def test_bot_blocks_refuse_other_strides():
    with pytest.raises(ValueError, match="stride 1 or 2"):
        BoTBlock(16, 32, bottleneck_channels=8, stride=4)


def test_freeze_turns_every_norm_frozen():
    block = SSBBoTBlock(16, 32, bottleneck_channels=8, norm="BN")
    block.freeze()
    assert all(not p.requires_grad for p in block.parameters())
    assert "FrozenBatchNorm2d" in type(block.attn_norm).__name__


def test_ssb_bot_block_trains():
    block = _peaked_saliency(SSBBoTBlock(16, 32, bottleneck_channels=8, norm="BN",
                                         sampling_ratio=0.5))
    x = torch.randn(2, 16, 9, 10, requires_grad=True)
    block(x, torch.tensor([[9.0, 10.0], [6.0, 7.0]])).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert block.sampler.saliency_conv.weight.grad.abs().sum() > 0


def test_strided_ssb_bot_with_zero_saliency_pools_before_attending():
    # Uniform sampling to exactly half of an even size is the 2x2 average: at initialisation
    # the strided SSB-BoT block is the strided BoT block with the pooling moved before the
    # attention.
    block = _block(SSBBoTBlock, stride=2)
    x = torch.randn(2, 16, 8, 12, dtype=torch.float64)
    with torch.no_grad():
        b = block.attn(F.avg_pool2d(F.relu(block.conv1(x)), 2))
        want = F.relu(block.conv3(F.relu(block.attn_norm(b))) + block.shortcut(x))
        torch.testing.assert_close(block(x), want, rtol=1e-10, atol=1e-10)
