"""
DySample's CPU fast path: offsets -> sampling grid -> bilinear sampling as one autograd Function.

Where the time went on CPU (torch.profiler, B=2, C=256, 100x168 -> 200x336): the 1x1 offset
conv through mkldnn (a quarter of a training step for 32 output channels; the same product as
one matmul is several times faster), a chain of small ops building the grid (scale,
pixel_shuffle, permute, addcmul, reshape copy), and grid_sample itself: its CPU kernels gather
with vector gather instructions (on an AMD Zen 3 its forward took 1.3-1.5x bilinear's time)
and its backward scatters the input gradient one scalar per channel.

* offsets: one ``bmm`` of ``x`` viewed ``[B, H*W, C]`` (a transposed view) with the effective
  weight ``[C, M]``: this orientation ran about a third faster than ``W @ x`` on the AMD EPYC.
  Style "pl" (pixel_shuffle, then conv): ``W @ x`` with x viewed ``[B, C / s^2, s^2 * H*W]``,
  which is the pixel-shuffled input up to the order of its columns, then reordered into the lp
  column order (the pl convs' own FLOPs, a quarter of lp's at scale 2); DySample+'s scope
  columns are turned into their sigmoid gates in place;
* grid: the normalized planar grid ``[B*G, 2, sH, sW]`` straight from the matmul output
  (pixel_shuffle, bias, gate, scope factor and normalization folded in): computed row by row
  inside the kernel's forward (``sample_forward_offsets``, written out only for a backward),
  or one ``addcmul`` (`_make_grid`);
* sampling, forward and backward: the compiled kernel ``csrc/`` (native.py; grid_sample's
  arithmetic). The forward blends each pixel's four corners for all channels at once from
  channels-last copies of the input rows it reads (SIMD over channels, AVX2 where the CPU has
  it) and writes each output channel along its row; the backward holds the same rows and
  their gradient rows channels-last, adds each pixel's gradient to its four corners and sums
  its grid gradient over channels in the same SIMD pass, without atomics. Where it cannot be
  built (``NATIVE`` False, or no compiler): ``grid_sampler_2d`` forward and, backward, its grid
  gradient with the input gradient as a sparse matmul over DySample's fixed neighbourhoods
  (input_grad.py; grid_sample's scatter where MKL's sparse BLAS is missing or offsets are
  large). Both paths give the same results;
* the offset branch's input gradient is accumulated in place (``baddbmm_``).

Exact: the same bilinear sampling (padding "border", align_corners=False) on the same grid
formula ``base + offset * (2/W, 2/H)``; scale factors 0.25 / 0.5 are powers of two, so folding
them changes no bit; the gradients are the same sums in another order. CUDA, tracing,
scripting and export keep the plain ops (see `use_fused`).
"""
import torch

from . import input_grad, native

__all__ = ["FusedDySample", "use_fused", "NATIVE", "SPARSE_INPUT_GRAD"]

# The compiled CPU kernel (native.py) where it builds; False: the pure-PyTorch path, same
# results (grid_sample forward, sparse or grid_sample backward).
NATIVE = True

# Input gradient as a sparse matmul (input_grad.py) where MKL's sparse BLAS is available; False:
# grid_sample's own backward everywhere (the pure-PyTorch fallback, same results).
SPARSE_INPUT_GRAD = True


def use_fused(x: torch.Tensor) -> bool:
    """
    Whether DySample runs the fused Function: on CPU, in eager mode. On CUDA the plain
    conv2d + grid_sample path stays (cuDNN's 1x1 conv and the CUDA grid_sample kernels are
    already fused; this path's choices were measured on CPU only). Tracing, scripting and
    export use the plain ops, which trace dynamically and export to ONNX GridSample.
    """
    if x.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    onnx_exporting = getattr(torch.onnx, "is_in_onnx_export", None)
    if onnx_exporting is not None and onnx_exporting():
        return False
    compiler = getattr(torch, "compiler", None)
    return not (compiler is not None and compiler.is_compiling())


def _grid_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class FusedDySample(torch.autograd.Function):
    """
    ``out = grid_sample(x, base + offsets * norm)`` with the offsets a 1x1 conv of ``x``.

    Args:
        x (Tensor[B, C, H, W]): input, any floating dtype (sampled in float32, float64 for
            float64 inputs, like DySample's grid).
        weight (Tensor[M, C]): offset rows (channel order of DySample's lp offset conv:
            x|y, group, then sub-pixel (i, j)); with ``dyscope`` followed by as many scope rows.
            With ``pixel_shuffled``: the pl convs' [M / s^2, C / s^2] (rows x|y, group), applied
            to each sub-pixel's channels (pixel_shuffle without the shuffle).
        bias (Tensor[K] or None): bias of the first K rows: the offset rows
            (K = 2 * groups * scale**2), or with a biased scope conv all of them.
        base (Tensor[sH, sW, 2]): bilinear base grid, normalized, in the grid dtype.
        norm (Tensor[2]): (2/W, 2/H) times the scope factor (0.25 static, 0.5 dynamic).
        scale, groups (int), dyscope (bool): as DySample's.
        keep_grid (bool): keep the sampling grid for a backward (False: inference, the
            compiled kernel then never writes it out).
        add_to (Tensor[B, C, sH, sW] or None): the samples are added to it in place, and it is
            returned (the compiled kernel adds them as it writes, without a separate output).
        pixel_shuffled (bool): style "pl"'s weight, see ``weight``.

    Returns:
        Tensor[B, C, sH, sW] in x's dtype, or add_to.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, base, norm, scale, groups, dyscope, keep_grid=True,
                add_to=None, pixel_shuffled=False):
        b, c, h, w = x.shape
        s, g = scale, groups
        m = 2 * g * s * s
        gdt = _grid_dtype(x.dtype)
        x = x.contiguous()
        xs = x.view(b * g, c // g, h, w).to(gdt)
        xv = xs.view(b, c, h * w)
        sub_pixels = s * s if pixel_shuffled else 1
        off = _offset_columns(xv, weight.to(gdt), sub_pixels, gdt)
        raw_bias = None if bias is None else bias[:m].to(gdt)
        if dyscope:  # the scope columns become the gates, in place: off = [raw | gate]
            if bias is not None and bias.numel() > m:
                off[..., m:].add_(bias[m:].to(gdt))
            off[..., m:].sigmoid_()
        kernel = native.load() if NATIVE else None
        ctx.has_add_to = add_to is not None
        if add_to is not None:
            ctx.mark_dirty(add_to)
        # the kernel adds into add_to as it writes where add_to is laid out as its output
        add_in_kernel = (kernel is not None and add_to is not None
                         and add_to.dtype == x.dtype == gdt and add_to.is_contiguous())
        if kernel is not None:  # the grid computed row by row, kept only for a backward
            empty = torch.empty(0, dtype=gdt)
            out, grid = kernel.sample_forward_offsets(
                xs, off, empty if raw_bias is None else raw_bias, base, norm, s, g, dyscope,
                keep_grid, add_to.view(b * g, c // g, s * h, s * w) if add_in_kernel else empty)
        else:
            grid = _make_grid(off, raw_bias, base, norm, h, w, s, g, dyscope)
            # bilinear, border, align_corners=False
            out = torch.grid_sampler_2d(xs, grid.permute(0, 2, 3, 1), 0, 1, False)
        ctx.kernel = kernel
        ctx.save_for_backward(xs, grid, weight, off if dyscope else None, raw_bias)
        bias_rows = (0, None) if bias is None else (bias.numel(), bias.dtype)
        ctx.config = (b, c, h, w, s, g, m, x.dtype, norm, bias_rows, sub_pixels)
        if add_to is None:
            return out.view(b, c, s * h, s * w).to(x.dtype)
        if not add_in_kernel:
            add_to.add_(out.view(b, c, s * h, s * w).to(x.dtype))
        return add_to

    @staticmethod
    def backward(ctx, grad_out):
        grad_out_in = grad_out  # add_to's gradient
        xs, grid, weight, off, raw_bias = ctx.saved_tensors
        b, c, h, w, s, g, m, in_dtype, norm, (bias_numel, bias_dtype), sub_pixels = ctx.config
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gdt = xs.dtype
        grad_out = grad_out.to(gdt).contiguous().view(b * g, c // g, s * h, s * w)
        if ctx.kernel is not None:
            grad_xs, grad_grid = ctx.kernel.sample_backward(grad_out, xs, grid, need_x)
        else:
            grad_xs, grad_grid = _grid_sample_backward(grad_out, xs, grid, need_x, h, w, s)
        # d(grid)/d(offset columns) = norm, laid out as the matmul output: [B, H*W, M]
        grad_raw = torch.empty((b, h, w, 2, g, s, s), dtype=gdt, device=xs.device)
        torch.mul(
            grad_grid.view(b, g, 2, h, s, w, s).permute(0, 3, 5, 2, 1, 4, 6),
            norm.view(1, 1, 1, 2, 1, 1, 1),
            out=grad_raw,
        )
        grad_raw = grad_raw.view(b, h * w, m)
        grad_off = grad_raw
        if off is not None:  # offsets = raw * gate, off = [raw | gate]
            raw = off[..., :m] if raw_bias is None else off[..., :m] + raw_bias
            gate = off[..., m:]
            grad_off = torch.empty((b, h * w, 2 * m), dtype=gdt, device=xs.device)
            torch.mul(grad_raw, gate, out=grad_off[..., :m])
            grad_scope = grad_off[..., m:]
            torch.mul(grad_raw, raw, out=grad_scope)
            torch.ops.aten.sigmoid_backward.grad_input(grad_scope, gate, grad_input=grad_scope)
        grad_b = grad_off[..., :bias_numel].sum((0, 1)).to(bias_dtype) if need_b else None
        grad_rows = _gradient_by_row(grad_off, sub_pixels) if need_w or need_x else None
        grad_x = grad_w = None
        if need_w:  # [R, C / s^2] summed over the batch
            x_cols = xs.view(b, c // sub_pixels, sub_pixels * h * w)
            grad_w = torch.matmul(grad_rows, x_cols.transpose(1, 2)).sum(0).to(weight.dtype)
        if need_x:  # the offset branch's input gradient added to the sampling's, in place
            grad_x_cols = grad_xs.view(b, c // sub_pixels, sub_pixels * h * w)
            grad_x_cols.baddbmm_(weight.to(gdt).t().expand(b, -1, -1), grad_rows)
            grad_x = grad_xs.view(b, c, h, w).to(in_dtype)
        grad_add_to = grad_out_in if ctx.has_add_to and ctx.needs_input_grad[9] else None
        grads = (grad_x, grad_w, grad_b, None, None, None, None, None, None, grad_add_to, None)
        return grads[: len(ctx.needs_input_grad)]  # as many as the arguments given


def _offset_columns(xv, weight, sub_pixels, dtype):
    """
    The offset (and scope) convs as matmuls: [B, H*W, M'] in the lp column order (row, then
    sub-pixel k) from x [B, C, H*W] and weight [R, C / sub_pixels], M' = R * sub_pixels.
    lp (sub_pixels 1): x^T W^T, the faster orientation of this product on CPU. pl: input
    channel c' * s^2 + k feeds sub-pixel k, so x viewed [B, C / s^2, s^2 * H*W] is the
    pixel-shuffled input, up to the order of its columns: W @ that, then reordered.
    """
    b, c, hw = xv.shape
    if sub_pixels == 1:
        off = torch.bmm(xv.transpose(1, 2), weight.t().expand(b, -1, -1))
        return off.to(dtype)  # autocast may have run the matmul in half precision
    rows = weight.shape[0]
    # bmm, not matmul: matmul folds a weight that requires grad into a transposed copy of x
    x_cols = xv.view(b, c // sub_pixels, sub_pixels * hw)
    by_row = torch.bmm(weight.expand(b, -1, -1), x_cols)  # [B, R, s^2*HW]
    off = torch.empty((b, hw, rows, sub_pixels), dtype=dtype, device=xv.device)
    off.copy_(by_row.view(b, rows, sub_pixels, hw).permute(0, 3, 1, 2))
    return off.view(b, hw, rows * sub_pixels)


def _gradient_by_row(grad_off, sub_pixels):
    """
    The offset columns' gradient laid out as the product W @ x would give it: [B, R, s^2*H*W]
    from [B, H*W, R * s^2] (lp order); for lp (sub_pixels 1) a transposed view, for pl a copy.
    Then d(weight) = G @ x^T and d(x) = W^T @ G, with x viewed [B, C / s^2, s^2*H*W].
    """
    if sub_pixels == 1:
        return grad_off.transpose(1, 2)
    b, hw, cols = grad_off.shape
    rows = cols // sub_pixels
    grad = grad_off.view(b, hw, rows, sub_pixels).permute(0, 2, 3, 1).contiguous()
    return grad.view(b, rows, sub_pixels * hw)


def _make_grid(off, raw_bias, base, norm, h, w, s, g, gated):
    """
    The kernel's row-by-row grid in PyTorch ops: planar grid [B*G, 2, sH, sW] from the offset
    matmul off [B, H*W, M'].
    """
    b, m = off.shape[0], 2 * g * s * s
    offsets = off[..., :m]
    if raw_bias is not None:
        offsets = offsets + raw_bias
    if gated:
        offsets = offsets * off[..., m:]
    grid = torch.empty((b, g, 2, h, s, w, s), dtype=off.dtype, device=off.device)
    torch.addcmul(  # planar [B, G, 2, H, s, W, s] <- columns (x|y, g, i, j) of offsets
        base.permute(2, 0, 1).view(1, 1, 2, h, s, w, s),
        offsets.view(b, h, w, 2, g, s, s).permute(0, 4, 3, 1, 5, 2, 6),
        norm.view(1, 1, 2, 1, 1, 1, 1),
        out=grid,
    )
    return grid.view(b * g, 2, s * h, s * w)


def _grid_sample_backward(grad_out, xs, grid, need_x, h, w, s):
    """The pure-PyTorch backward: (grad_xs or None, grad_grid planar [N, 2, sH, sW])."""
    grad_xs = None
    sparse = SPARSE_INPUT_GRAD and grad_out.numel() >= input_grad.MIN_NUMEL
    if need_x and sparse and input_grad.available(xs.device):
        # None when too many pixels left their regular cell: grid_sample's backward then
        grad_xs = input_grad.sparse_input_grad(grad_out, grid, h, w, s)
    scatter = need_x and grad_xs is None
    grad_scatter, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
        grad_out, xs, grid.permute(0, 2, 3, 1), 0, 1, False, [scatter, True]
    )
    if scatter:
        grad_xs = grad_scatter
    return grad_xs, grad_grid.permute(0, 3, 1, 2)
