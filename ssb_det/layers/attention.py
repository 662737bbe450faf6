"""Multi-head self-attention over every position of a feature map, with 2-D relative position
logits: the MHSA layer of BoTNet (Srinivas et al., "Bottleneck Transformers for Visual
Recognition", CVPR 2021), whose relative logits come from Bello et al. 2019 ("Attention
Augmented Convolutional Networks").

For query ``(y, x)`` and key ``(ky, kx)`` of head ``n`` the logit is
``q . k + q . r_h[ky - y] + q . r_w[kx - x]`` with ``q`` scaled by ``d^-1/2`` (``d``: channels
per head). The tables ``r_h``, ``r_w`` hold one embedding per offset up to ``max_span - 1``
either way and are sliced for the map at hand, so any map of at most ``max_span`` rows and
columns works. Every product is a ``matmul``: MAC counters (fvcore) see all of them.
"""
from typing import Optional

import torch
from torch import nn

__all__ = ["RelPosSelfAttention2d", "relative_embeddings", "relative_logits", "key_mask"]


def relative_embeddings(table: torch.Tensor, n: int) -> torch.Tensor:
    """``(n, n, d)`` embeddings ``E[i, j] = table[j - i + span - 1]`` of an axis of ``n``
    positions (query ``i``, key ``j``), sliced from a ``(2 span - 1, d)`` table."""
    span = (table.shape[0] + 1) // 2
    pos = torch.arange(n, device=table.device)
    return table[pos[None, :] - pos[:, None] + (span - 1)]


def relative_logits(q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor):
    """Row and column logits of queries ``q`` ``(N, heads, H, W, d)``: ``(N, heads, H, W, H)``
    (``q . r_h[ky - y]``) and ``(N, heads, H, W, W)`` (``q . r_w[kx - x]``)."""
    H, W = q.shape[2], q.shape[3]
    # (N, n, H, W, d) @ (H, d, H): the table of row y multiplies the queries of row y.
    rows = q @ relative_embeddings(table_h, H).transpose(1, 2)
    cols = (q.transpose(2, 3) @ relative_embeddings(table_w, W).transpose(1, 2)).transpose(2, 3)
    return rows, cols


def key_mask(valid_size: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``(N, H * W)`` bool: the positions inside each image's top-left ``valid_size`` region."""
    rows = torch.arange(H, device=valid_size.device) < valid_size[:, :1]
    cols = torch.arange(W, device=valid_size.device) < valid_size[:, 1:]
    return (rows[:, :, None] & cols[:, None, :]).flatten(1)


class RelPosSelfAttention2d(nn.Module):
    """BoTNet's MHSA: 1x1 query/key/value projections (no bias), global attention with
    relative position logits, heads concatenated. ``(N, C, H, W) -> (N, C, H, W)``.

    Args:
        channels (int): input and output channels ``C`` (a multiple of ``num_heads``).
        num_heads (int): attention heads (BoTNet: 4).
        max_span (int): largest number of rows or columns a map may have.
        span_name (str): what a caller changes to raise ``max_span`` (named in the error).
    """

    def __init__(self, channels: int, num_heads: int = 4, max_span: int = 128,
                 span_name: str = "max_span"):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        if max_span < 1:
            raise ValueError(f"max_span must be >= 1, got {max_span}")
        self.num_heads, self.max_span, self.span_name = num_heads, int(max_span), span_name
        # Python numbers, not sizes read from the input: a trace would compute the scale in
        # float32 from a traced size.
        self.head_dim = d = channels // num_heads
        self.scale = d ** -0.5
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1, bias=False)
        self.rel_h = nn.Parameter(torch.empty(2 * max_span - 1, d))
        self.rel_w = nn.Parameter(torch.empty(2 * max_span - 1, d))
        nn.init.normal_(self.qkv.weight, std=channels ** -0.5)  # fan-in
        nn.init.normal_(self.rel_h, std=d ** -0.5)
        nn.init.normal_(self.rel_w, std=d ** -0.5)

    def extra_repr(self):
        return f"num_heads={self.num_heads}, max_span={self.max_span}"

    def forward(self, x: torch.Tensor, valid_size: Optional[torch.Tensor] = None):
        """
        Args:
            x (Tensor): ``(N, C, H, W)``.
            valid_size (Tensor or None): ``(N, 2)`` rows and columns of each image's region
                of a padded batch: keys outside it get no weight, so an image's region is
                computed as if it were alone. None: every image fills the map.
        """
        N, C, H, W = x.shape
        if H > self.max_span or W > self.max_span:
            raise ValueError(
                f"attention over a {int(H)}x{int(W)} map: the relative position tables span "
                f"at most {self.max_span} rows and columns; raise {self.span_name}")
        heads, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(N, 3, heads, d, H * W).unbind(1)  # (N, heads, d, HW)
        q = q.transpose(2, 3) * self.scale  # (N, heads, HW, d)
        rows, cols = relative_logits(q.reshape(N, heads, H, W, d), self.rel_h, self.rel_w)
        # In place: the logits are the largest tensor of the layer (matmul's backward needs
        # its inputs only).
        logits = (q @ k).view(N, heads, H, W, H, W)
        logits.add_(rows[..., :, None]).add_(cols[..., None, :])
        logits = logits.view(N, heads, H * W, H * W)
        if valid_size is not None:
            outside = ~key_mask(valid_size, H, W)[:, None, None, :]
            logits.masked_fill_(outside, torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=-1)
        # (N, heads, d, HW) @ (N, heads, HW_keys, HW_queries): channels stay first.
        return (v @ weights.transpose(2, 3)).reshape(N, heads * d, H, W)
