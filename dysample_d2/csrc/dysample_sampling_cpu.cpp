// DySample's bilinear sampling on CPU: grid_sample(x, grid, bilinear, padding "border",
// align_corners=False) forward and backward, for a planar grid [N, 2, oH, oW].
//
// Same arithmetic as ATen's grid_sampler_2d (unnormalize, clip, floor, the four corner
// weights), without its gather instructions (slow on several CPUs) and with a backward that
// writes the input gradient of one channel plane at a time (no atomics: every (n, c) plane
// belongs to one task) while it accumulates the grid gradient over channels.
//
// With border padding the coordinates are clipped to [0, size - 1] first, so a right/bottom
// corner can only fall off the image when the coordinate sits exactly on the last pixel: its
// weight is then 0 and so is the coordinate's gradient; the corner index is clamped onto the
// last pixel instead of being tested for every channel.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

template <typename scalar_t>
struct Corner {
  int64_t index;   // offset of the top-left corner in the [H, W] plane
  int64_t dx, dy;  // offsets of the right and bottom corners (0 when clamped)
  scalar_t ex, fx, ey, fy;  // 1 - frac and frac in x and y: weights ex*ey, fx*ey, ex*fy, fx*fy
  scalar_t mx, my;  // d(pixel coordinate)/d(normalized grid), 0 where clipped
};

// grid_sampler_unnormalize (align_corners=False) + clip_coordinates_set_grad, as ATen.
template <typename scalar_t>
inline scalar_t source_index(scalar_t coord, int64_t size, scalar_t* mult) {
  scalar_t pos = ((coord + 1) * size - 1) / 2;
  scalar_t m = static_cast<scalar_t>(size) / 2;
  if (pos <= static_cast<scalar_t>(0)) {
    *mult = 0;
    return 0;
  }
  const scalar_t last = static_cast<scalar_t>(size - 1);
  if (pos >= last) {
    *mult = 0;
    return last;
  }
  *mult = m;
  return pos;
}

template <typename scalar_t>
inline void corners_of_row(const scalar_t* gx, const scalar_t* gy, int64_t ow, int64_t h,
                           int64_t w, Corner<scalar_t>* out) {
  for (int64_t o = 0; o < ow; ++o) {
    Corner<scalar_t>& k = out[o];
    const scalar_t ix = source_index(gx[o], w, &k.mx);
    const scalar_t iy = source_index(gy[o], h, &k.my);
    const scalar_t x0 = std::floor(ix);
    const scalar_t y0 = std::floor(iy);
    k.ex = x0 + 1 - ix;
    k.fx = ix - x0;
    k.ey = y0 + 1 - iy;
    k.fy = iy - y0;
    const int64_t c0 = static_cast<int64_t>(x0);
    const int64_t r0 = static_cast<int64_t>(y0);
    k.index = r0 * w + c0;
    k.dx = c0 + 1 < w ? 1 : 0;
    k.dy = r0 + 1 < h ? w : 0;
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& grid) {
  TORCH_CHECK(x.device().is_cpu() && grid.device().is_cpu(), "dysample sampling: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && grid.dim() == 4 && grid.size(1) == 2 && grid.size(0) == x.size(0),
              "dysample sampling: expected x [N, C, H, W] and grid [N, 2, oH, oW], got ",
              x.sizes(), " and ", grid.sizes());
  TORCH_CHECK(x.scalar_type() == grid.scalar_type(), "dysample sampling: x and grid dtypes differ");
  TORCH_CHECK(x.is_contiguous() && grid.is_contiguous(), "dysample sampling: contiguous inputs only");
}

}  // namespace

// x [N, C, H, W], grid [N, 2, oH, oW] (normalized x, y planes) -> [N, C, oH, oW]
at::Tensor sample_forward(const at::Tensor& x, const at::Tensor& grid) {
  check_inputs(x, grid);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = grid.size(2), ow = grid.size(3);
  at::Tensor out = at::empty({n, c, oh, ow}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dysample_sample_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grid.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // one task = one output row of one image-group, all its channels
    at::parallel_for(0, n * oh, 1, [&](int64_t begin, int64_t end) {
      std::vector<Corner<scalar_t>> row(ow);
      std::vector<scalar_t> weights(4 * ow);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / oh, y = t % oh;
        const scalar_t* gx = gp + (b * 2 * oh + y) * ow;
        corners_of_row(gx, gx + oh * ow, ow, h, w, row.data());
        for (int64_t o = 0; o < ow; ++o) {
          const Corner<scalar_t>& k = row[o];
          weights[4 * o] = k.ex * k.ey;
          weights[4 * o + 1] = k.fx * k.ey;
          weights[4 * o + 2] = k.ex * k.fy;
          weights[4 * o + 3] = k.fx * k.fy;
        }
        const int64_t plane = h * w, out_plane = oh * ow;
        const scalar_t* src = xp + b * c * plane;
        scalar_t* dst = op + b * c * out_plane + y * ow;
        int64_t ch = 0;
        // four channels per pass: the corners and weights of a pixel are read once for all four
        for (; ch + 4 <= c; ch += 4) {
          const scalar_t* s0 = src + ch * plane;
          scalar_t* d0 = dst + ch * out_plane;
          for (int64_t o = 0; o < ow; ++o) {
            const Corner<scalar_t>& k = row[o];
            const scalar_t* wt = weights.data() + 4 * o;
            const int64_t i00 = k.index, i01 = i00 + k.dx, i10 = i00 + k.dy, i11 = i10 + k.dx;
            for (int64_t j = 0; j < 4; ++j) {
              const scalar_t* p = s0 + j * plane;
              d0[j * out_plane + o] = p[i00] * wt[0] + p[i01] * wt[1] + p[i10] * wt[2] + p[i11] * wt[3];
            }
          }
        }
        for (; ch < c; ++ch) {
          const scalar_t* p = src + ch * plane;
          scalar_t* d = dst + ch * out_plane;
          for (int64_t o = 0; o < ow; ++o) {
            const Corner<scalar_t>& k = row[o];
            const scalar_t* wt = weights.data() + 4 * o;
            const int64_t i00 = k.index, i01 = i00 + k.dx, i10 = i00 + k.dy, i11 = i10 + k.dx;
            d[o] = p[i00] * wt[0] + p[i01] * wt[1] + p[i10] * wt[2] + p[i11] * wt[3];
          }
        }
      }
    });
  });
  return out;
}

// Returns (grad_x [N, C, H, W] or an empty tensor, grad_grid [N, 2, oH, oW]).
std::vector<at::Tensor> sample_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                        const at::Tensor& grid, bool need_input_grad) {
  check_inputs(x, grid);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.scalar_type() == x.scalar_type(),
              "dysample sampling: grad_out must be contiguous and of x's dtype");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = grid.size(2), ow = grid.size(3);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({n, c, oh, ow}),
              "dysample sampling: grad_out has shape ", grad_out.sizes());
  // Channel chunks only when there are fewer image-groups than threads; each chunk then
  // keeps its own partial grid gradient, summed at the end.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(c, std::max<int64_t>(1, (threads + n - 1) / n));
  const int64_t per_chunk = (c + chunks - 1) / chunks;
  at::Tensor grad_x = need_input_grad ? at::zeros_like(x) : at::Tensor();
  at::Tensor partial = at::empty({chunks, n, 2, oh, ow}, grid.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dysample_sample_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grid.data_ptr<scalar_t>();
    const scalar_t* gop = grad_out.data_ptr<scalar_t>();
    scalar_t* gxp = need_input_grad ? grad_x.data_ptr<scalar_t>() : nullptr;
    scalar_t* pp = partial.data_ptr<scalar_t>();
    at::parallel_for(0, n * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<Corner<scalar_t>> row(ow);
      std::vector<scalar_t> acc_x(ow), acc_y(ow);
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / chunks, chunk = t % chunks;
        const int64_t c_begin = chunk * per_chunk, c_end = std::min(c, c_begin + per_chunk);
        scalar_t* part = pp + (chunk * n + b) * 2 * oh * ow;
        for (int64_t y = 0; y < oh; ++y) {
          const scalar_t* gx = gp + (b * 2 * oh + y) * ow;
          corners_of_row(gx, gx + oh * ow, ow, h, w, row.data());
          std::fill(acc_x.begin(), acc_x.end(), scalar_t(0));
          std::fill(acc_y.begin(), acc_y.end(), scalar_t(0));
          for (int64_t ch = c_begin; ch < c_end; ++ch) {
            const int64_t plane = (b * c + ch) * h * w;
            const scalar_t* src = xp + plane;
            const scalar_t* go = gop + ((b * c + ch) * oh + y) * ow;
            scalar_t* dst = gxp ? gxp + plane : nullptr;
            for (int64_t o = 0; o < ow; ++o) {
              const Corner<scalar_t>& k = row[o];
              const scalar_t g = go[o];
              const scalar_t* p = src + k.index;
              const scalar_t v00 = p[0], v01 = p[k.dx], v10 = p[k.dy], v11 = p[k.dx + k.dy];
              acc_x[o] += g * (k.ey * (v01 - v00) + k.fy * (v11 - v10));
              acc_y[o] += g * (k.ex * (v10 - v00) + k.fx * (v11 - v01));
              if (dst) {
                scalar_t* q = dst + k.index;
                q[0] += k.ex * k.ey * g;
                q[k.dx] += k.fx * k.ey * g;
                q[k.dy] += k.ex * k.fy * g;
                q[k.dx + k.dy] += k.fx * k.fy * g;
              }
            }
          }
          scalar_t* out_x = part + y * ow;
          scalar_t* out_y = part + (oh + y) * ow;
          for (int64_t o = 0; o < ow; ++o) {
            out_x[o] = acc_x[o] * row[o].mx;
            out_y[o] = acc_y[o] * row[o].my;
          }
        }
      }
    });
  });
  at::Tensor grad_grid = chunks == 1 ? partial.squeeze(0) : partial.sum(0);
  return {grad_x.defined() ? grad_x : at::empty({0}, x.options()), grad_grid};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample_forward", &sample_forward, "DySample bilinear sampling, forward (CPU)");
  m.def("sample_backward", &sample_backward, "DySample bilinear sampling, backward (CPU)");
}
