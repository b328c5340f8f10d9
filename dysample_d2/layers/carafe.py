"""CARAFE: content-aware reassembly of features (Wang et al., ICCV 2019), in PyTorch.

A kernel prediction network (1x1 channel compressor, then a ``k_enc`` x ``k_enc`` content
encoder) predicts, for every output pixel, a ``k_up`` x ``k_up`` kernel, softmax-normalized;
the output pixel is that kernel's weighted sum of the input's ``k_up`` x ``k_up``
neighbourhood around the input pixel it lies in. mmcv's ``CARAFEPack`` with its parameter
names and initialization, so the weights of mmdet's FPN_CARAFE checkpoints load name for name;
the reassembly follows mmcv's CUDA kernels (``carafe_cuda_kernel.cuh``,
``carafe_naive_cuda_kernel.cuh``): kernel channel ``(group * k_up + dy) * k_up + dx``,
channels in contiguous groups, zeros outside the input (out-of-range taps are skipped, the
kernel is not renormalized).

The reassembly never materializes the upsampled neighbourhoods ([B, C, k_up^2, s*H, s*W],
25 times the output at k_up = 5): it accumulates one kernel tap at a time into the output, in
place, with plain autograd ops, so it runs and differentiates on every device and dtype
without a compiled op.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CARAFE", "carafe_reassemble", "reassemble_phases"]


def carafe_reassemble(x: torch.Tensor, kernels: torch.Tensor, up_kernel: int, up_group: int,
                      scale: int) -> torch.Tensor:
    """
    mmcv's ``carafe(x, kernels, up_kernel, up_group, scale)``: output pixel (y, x) of group g
    is ``sum_{dy, dx} kernels[g * k^2 + dy * k + dx, y, x] * x[y // s + dy - r, x // s + dx - r]``
    (r = (k - 1) // 2), zero outside the input.

    Args:
        x (Tensor[B, C, H, W]): features, C divisible by up_group.
        kernels (Tensor[B, up_group * up_kernel^2, s*H, s*W]): reassembly kernels, used as
            given (CARAFE normalizes them first).

    Returns:
        Tensor[B, C, s*H, s*W]
    """
    b, _, h, w = x.shape
    k2, s = up_kernel**2, scale
    # [B, G, k^2, s*H, s*W] -> [B, G, k^2, s, s, H, W]: one map per sub-pixel phase
    phases = kernels.reshape(b, up_group, k2, h, s, w, s).permute(0, 1, 2, 4, 6, 3, 5)
    return reassemble_phases(x, phases.reshape(b, up_group, k2, s * s, h, w), up_kernel, s)


def reassemble_phases(x: torch.Tensor, kernels: torch.Tensor, up_kernel: int,
                      scale: int) -> torch.Tensor:
    """
    `carafe_reassemble` with the kernels by sub-pixel phase: output pixel (s*i + a, s*j + e)
    reads the neighbourhood of input pixel (i, j) with ``kernels[:, g, :, a * s + e, i, j]``.
    The content encoder predicts this layout before its pixel shuffle.

    One kernel tap at a time, every output phase of every input pixel is accumulated in
    place (``addcmul_``): no tensor larger than the output, and autograd keeps only views
    of the input and the kernels for the backward.

    Args:
        x (Tensor[B, C, H, W])
        kernels (Tensor[B, G, k^2, s^2, H, W])

    Returns:
        Tensor[B, C, s*H, s*W]
    """
    b, c, h, w = x.shape
    g, k, s = kernels.shape[1], up_kernel, scale
    r = (k - 1) // 2
    padded = F.pad(x, (r, r, r, r)).reshape(b, g, c // g, 1, h + 2 * r, w + 2 * r)
    taps = [tap.unsqueeze(2) for tap in kernels.unbind(2)]  # [B, G, 1, s^2, H, W] each
    out = x.new_zeros(b, g, c // g, s * s, h, w)
    for dy in range(k):
        for dx in range(k):  # x[i + dy - r, j + dx - r], zero outside the input
            out.addcmul_(padded[..., dy:dy + h, dx:dx + w], taps[dy * k + dx])
    # [B, G, C/G, a, e, H, W] -> [B, C, H, a, W, e] = [B, C, s*H, s*W]
    out = out.reshape(b, c, s, s, h, w).permute(0, 1, 4, 2, 5, 3)
    return out.reshape(b, c, s * h, s * w)


class CARAFE(nn.Module):
    """
    mmcv's ``CARAFEPack``: channel compressor, content encoder, kernel normalizer (pixel
    shuffle, softmax over each kernel) and reassembly.

    Args:
        channels (int): input (and output) channels C.
        scale (int): upsampling factor s.
        up_kernel (int): k_up, the reassembly kernel size (odd).
        up_group (int): channel groups, each with its own kernels; must divide C.
        encoder_kernel (int): k_enc, the content encoder's kernel size (odd).
        encoder_dilation (int): the content encoder's dilation.
        compressed_channels (int): output channels of the 1x1 channel compressor.

    The defaults are mmcv's ``CARAFEPack``'s, which mmdet's FPN_CARAFE configs also set.

    Shapes: [B, C, H, W] -> [B, C, s*H, s*W].
    """

    def __init__(self, channels: int, scale: int = 2, up_kernel: int = 5, up_group: int = 1,
                 encoder_kernel: int = 3, encoder_dilation: int = 1,
                 compressed_channels: int = 64):
        super().__init__()
        self.channels, self.scale = channels, scale
        self.up_kernel, self.up_group = up_kernel, up_group
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels, up_kernel**2 * up_group * scale**2, encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2, dilation=encoder_dilation,
        )
        self.init_weights()

    def init_weights(self):
        """mmcv's ``CARAFEPack.init_weights``: xavier-uniform convs (zero biases), then the
        content encoder N(0, 0.001); FPN_CARAFE calls it again after its own xavier init."""
        for conv in (self.channel_compressor, self.content_encoder):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, scale={self.scale}, up_kernel={self.up_kernel}, "
                f"up_group={self.up_group}")

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """
        Reassembly kernels by sub-pixel phase, softmax-normalized over each kernel's taps:
        mmcv's kernel normalizer (pixel shuffle, then softmax) without the pixel shuffle, which
        `reassemble_phases` does not need.

        Returns:
            Tensor[B, up_group, up_kernel^2, s^2, H, W]
        """
        encoded = self.content_encoder(self.channel_compressor(x))
        b, _, h, w = encoded.shape
        return encoded.view(b, self.up_group, self.up_kernel**2, self.scale**2, h, w).softmax(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reassemble_phases(x, self.kernels(x), self.up_kernel, self.scale)
