"""BoTNet's relative-position multi-head self-attention against a reference written with
explicit loops over queries and keys, on tiny maps, in float64."""
import math

import pytest
import torch

from ssb_det.layers import RelPosSelfAttention2d


def loop_reference(x, layer, valid=None):
    """For every image, head and query position: the logits over the keys of the image's
    region, one by one (``q . k + q . r_h[ky - y] + q . r_w[kx - x]``, q scaled by
    ``d^-1/2``), their softmax, and the weighted sum of the values."""
    N, C, H, W = x.shape
    heads = layer.num_heads
    d = C // heads
    span = layer.max_span
    w = layer.qkv.weight[:, :, 0, 0]
    out = torch.zeros_like(x)
    for n in range(N):
        vh, vw = (H, W) if valid is None else (int(valid[n][0]), int(valid[n][1]))
        feats = {(y, x_): w @ x[n, :, y, x_] for y in range(H) for x_ in range(W)}
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            for (y, x_), f in feats.items():
                q = f[sl] / math.sqrt(d)
                logits, values = [], []
                for ky in range(vh):
                    for kx in range(vw):
                        g = feats[(ky, kx)]
                        k, v = g[C:][sl], g[2 * C:][sl]
                        rel = layer.rel_h[ky - y + span - 1] + layer.rel_w[kx - x_ + span - 1]
                        logits.append(torch.dot(q, k) + torch.dot(q, rel))
                        values.append(v)
                weights = torch.softmax(torch.stack(logits), 0)
                out[n, sl, y, x_] = sum(wi * vi for wi, vi in zip(weights, values))
    return out


def _layer(channels=8, heads=4, span=5, seed=0):
    torch.manual_seed(seed)
    return RelPosSelfAttention2d(channels, heads, span).double()


@pytest.mark.parametrize("size", [(1, 1), (3, 4), (5, 2)])
def test_attention_equals_the_position_loop_reference(size):
    layer = _layer()  # span 5: the 5-row map uses the whole table, smaller ones a slice
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), loop_reference(x, layer), rtol=1e-10, atol=1e-12)


def test_keys_outside_each_images_region_get_no_weight():
    layer = _layer()
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    valid = torch.tensor([[4.0, 5.0], [2.0, 3.0]], dtype=torch.float64)
    with torch.no_grad():
        out = layer(x, valid)
        torch.testing.assert_close(out, loop_reference(x, layer, valid), rtol=1e-10,
                                   atol=1e-12)
        # The second image alone (its region cropped) gives the same features in its region,
        # whatever the padding holds.
        alone = layer(x[1:, :, :2, :3])
    torch.testing.assert_close(out[1:, :, :2, :3], alone, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(out).all()


def test_heads_attend_independently():
    # One head's query/key weights changed: the other heads' output channels are unchanged.
    layer = _layer()
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        layer.qkv.weight[0:2] += 1.0  # queries of head 0 (d = 2)
        after = layer(x)
    torch.testing.assert_close(after[:, 2:], before[:, 2:])
    assert not torch.allclose(after[:, :2], before[:, :2])


def test_a_map_beyond_the_span_is_refused_naming_what_to_change():
    layer = RelPosSelfAttention2d(8, 4, max_span=3, span_name="THE.KEY")
    layer(torch.randn(1, 8, 3, 3))
    with pytest.raises(ValueError, match=r"4x3 map.*at most 3 rows and columns; raise THE.KEY"):
        layer(torch.randn(1, 8, 4, 3))


def test_channels_must_split_into_heads():
    with pytest.raises(ValueError, match="do not split into 4 heads"):
        RelPosSelfAttention2d(6, 4)
