"""
DySample on CPU in eager mode: offsets -> sampling grid -> bilinear sampling, one autograd
Function around the compiled kernel (``csrc/``, built by native.py).

What it computes is DySample's reference formulation (``DySample.forward``'s 1x1 conv and
``grid_sample``, bilinear, padding "border", align_corners=False); what it saves is the work
between the ops:

* offsets: the offset (and scope) 1x1 convs as one matmul of ``x`` viewed ``[B, C, H*W]``
  (`_offset_columns`), in the column order of style "lp"'s conv; style "pl"
  (pixel_shuffle, then conv) multiplies each sub-pixel's channels by the pl conv's own
  weight, without shuffling the input; DySample+'s scope columns become their sigmoid gates
  in place;
* grid: the kernel builds the normalized grid row by row from the matmul output (bias, gate,
  scope factor and normalization folded in) and writes it out only for a backward;
* sampling: the kernel blends each output pixel's four corners for all channels at once from
  channels-last copies of the input rows it reads (SIMD over channels where the CPU has AVX2),
  and its backward adds each pixel's gradient to its four corners and sums the grid gradient
  in the same pass, without atomics; with ``add_to`` it adds the samples as it writes;
* the offset branch's input gradient is accumulated in place (``baddbmm_``).

The same sums as the reference formulation, in another order: scale factors 0.25 / 0.5 are
powers of two, so folding them changes no bit; results equal the reference to rounding.
"""
import torch

from . import native
from .backend import grid_dtype

__all__ = ["DySampleFunction", "kernel_forward"]


def kernel_forward(module, x, base, step, add_to, out_size):
    """
    ``module(x, add_to, size)`` (a DySample) through `DySampleFunction`, where
    ``sampler_for(x)`` is "kernel" (backend.py). base: the module's base grid [s*H, s*W, 2]
    for the output size ``out_size``; step: (2/W, 2/H) in the grid dtype.
    """
    factor = 0.5 if module.dyscope else 0.25  # the scope factor, folded into the normalizer
    norm = step * factor  # a power of two: the same bits as factor * 2 / W
    weight, bias = _offset_matrix(module)
    # the sampling grid is kept for a backward only
    keep_grid = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias))
    return DySampleFunction.apply(
        x, weight, bias, base, norm, module.scale, module.groups, module.dyscope, keep_grid,
        add_to, module.style == "pl", out_size,
    )


def _offset_matrix(module):
    """
    The offset (and scope) 1x1 convs as one [R, C'] matrix and the bias of its offset
    columns in the lp order (x|y, group, i, j). lp: C' = C, R = 2 * groups * s^2 (x2
    with dyscope). pl: the convs read pixel_shuffle(x), whose channel c' at sub-pixel
    k = i * s + j is input channel c' * s^2 + k: R = 2 * groups (x2), C' = C / s^2, applied
    to each sub-pixel's channels by the Function (``pixel_shuffled``).
    """
    weight = module.offset.weight.flatten(1)
    bias = module.offset.bias
    if module.dyscope:
        weight = torch.cat([weight, module.scope.weight.flatten(1)])
        if module.scope_bias:
            bias = torch.cat([bias, module.scope.bias])
    if module.style == "pl":
        bias = bias.repeat_interleave(module.scale**2)
    return weight, bias


class DySampleFunction(torch.autograd.Function):
    """
    ``out = grid_sample(x, base + offsets * norm)`` with the offsets a 1x1 conv of ``x``.

    Args:
        x (Tensor[B, C, H, W]): input, any floating dtype (sampled in `grid_dtype`).
        weight (Tensor[M, C]): offset rows (channel order of DySample's lp offset conv:
            x|y, group, then sub-pixel (i, j)); with ``dyscope`` followed by as many scope rows.
            With ``pixel_shuffled``: the pl convs' [M / s^2, C / s^2] (rows x|y, group), applied
            to each sub-pixel's channels (pixel_shuffle without the shuffle).
        bias (Tensor[K] or None): bias of the first K rows: the offset rows
            (K = 2 * groups * scale**2), or with a biased scope conv all of them.
        base (Tensor[sH, sW, 2]): base grid, normalized, in the grid dtype.
        norm (Tensor[2]): (2/W, 2/H) times the scope factor (0.25 static, 0.5 dynamic).
        scale, groups (int), dyscope (bool): as DySample's.
        keep_grid (bool): keep the sampling grid for a backward (False: inference, the
            kernel then never writes it out).
        add_to (Tensor[B, C, Ho, Wo] or None): the samples are added to it in place, and it is
            returned.
        pixel_shuffled (bool): style "pl"'s weight, see ``weight``.
        out_size ((Ho, Wo) or None): crop the sH x sW samples to this size (``base`` then holds
            the positions of an Ho x Wo output, continued to sH x sW).

    Returns:
        Tensor[B, C, Ho, Wo] in x's dtype, or add_to.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, base, norm, scale, groups, dyscope, keep_grid=True,
                add_to=None, pixel_shuffled=False, out_size=None):
        b, c, h, w = x.shape
        s, g = scale, groups
        m = 2 * g * s * s
        gdt = grid_dtype(x.dtype)
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
        kernel = native.load()
        crop = None if out_size is None or tuple(out_size) == (s * h, s * w) else tuple(out_size)
        ctx.has_add_to = add_to is not None
        if add_to is not None:
            ctx.mark_dirty(add_to)
        # the kernel adds into add_to as it writes where add_to is laid out as its output
        add_in_kernel = (add_to is not None and crop is None
                         and add_to.dtype == x.dtype == gdt and add_to.is_contiguous())
        empty = torch.empty(0, dtype=gdt)
        out, grid = kernel.sample_forward_offsets(  # the grid kept only for a backward
            xs, off, empty if raw_bias is None else raw_bias, base, norm, s, g, dyscope,
            keep_grid, add_to.view(b * g, c // g, s * h, s * w) if add_in_kernel else empty)
        ctx.kernel = kernel
        ctx.save_for_backward(xs, grid, weight, off if dyscope else None, raw_bias)
        ctx.input_shape, ctx.input_dtype = (b, c, h, w), x.dtype
        ctx.scale, ctx.groups, ctx.norm, ctx.sub_pixels, ctx.crop = s, g, norm, sub_pixels, crop
        ctx.bias_numel = 0 if bias is None else bias.numel()
        ctx.bias_dtype = None if bias is None else bias.dtype
        out = out.view(b, c, s * h, s * w)
        if crop is not None:
            out = out[..., : crop[0], : crop[1]].contiguous()
        if add_to is None:
            return out.to(x.dtype)
        if not add_in_kernel:
            add_to.add_(out.to(x.dtype))
        return add_to

    @staticmethod
    def backward(ctx, grad_out):
        grad_out_in = grad_out  # add_to's gradient
        xs, grid, weight, off, raw_bias = ctx.saved_tensors
        b, c, h, w = ctx.input_shape
        s, g, norm, sub_pixels, crop = ctx.scale, ctx.groups, ctx.norm, ctx.sub_pixels, ctx.crop
        m = 2 * g * s * s
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_add_to = grad_out_in if ctx.has_add_to and ctx.needs_input_grad[9] else None
        if not (need_x or need_w or need_b):  # add_to's gradient only
            return ((None,) * 9 + (grad_add_to, None, None))[: len(ctx.needs_input_grad)]
        gdt = xs.dtype
        if crop is not None:  # the cropped-off samples get no gradient
            full = grad_out.new_zeros(b, c, s * h, s * w)
            full[..., : crop[0], : crop[1]] = grad_out
            grad_out = full
        grad_out = grad_out.to(gdt).contiguous().view(b * g, c // g, s * h, s * w)
        grad_xs, grad_grid = ctx.kernel.sample_backward(grad_out, xs, grid, need_x)
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
        grad_b = (grad_off[..., :ctx.bias_numel].sum((0, 1)).to(ctx.bias_dtype) if need_b
                  else None)
        grad_rows = _gradient_by_row(grad_off, sub_pixels) if need_w or need_x else None
        grad_x = grad_w = None
        if need_w:  # [R, C / s^2] summed over the batch
            x_cols = xs.view(b, c // sub_pixels, sub_pixels * h * w)
            grad_w = torch.matmul(grad_rows, x_cols.transpose(1, 2)).sum(0).to(weight.dtype)
        if need_x:  # the offset branch's input gradient added to the sampling's, in place
            grad_x_cols = grad_xs.view(b, c // sub_pixels, sub_pixels * h * w)
            grad_x_cols.baddbmm_(weight.to(gdt).t().expand(b, -1, -1), grad_rows)
            grad_x = grad_xs.view(b, c, h, w).to(ctx.input_dtype)
        grads = (grad_x, grad_w, grad_b) + (None,) * 6 + (grad_add_to, None, None)
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
