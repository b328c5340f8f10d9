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

// One output pixel: its four corners (absolute offsets in the [H, W] plane) and weights.
template <typename scalar_t>
struct Tap {
  int64_t i00, i01, i10, i11;
  scalar_t w00, w01, w10, w11;
};

// What the grid gradient needs besides the corner values: 1 - frac and frac in x and y, and
// d(pixel coordinate)/d(normalized grid), 0 where the coordinate was clipped.
template <typename scalar_t>
struct Slope {
  scalar_t ex, fx, ey, fy, mx, my;
};

// grid_sampler_unnormalize (align_corners=False) + clip_coordinates_set_grad, as ATen.
template <typename scalar_t>
inline scalar_t source_index(scalar_t coord, int64_t size, scalar_t* mult) {
  const scalar_t pos = ((coord + 1) * size - 1) / 2;
  if (!(pos > static_cast<scalar_t>(0))) {  // also NaN (diverged offsets): never an index from NaN
    *mult = 0;
    return 0;
  }
  const scalar_t last = static_cast<scalar_t>(size - 1);
  if (pos >= last) {
    *mult = 0;
    return last;
  }
  *mult = static_cast<scalar_t>(size) / 2;
  return pos;
}

// Taps (and, when `slopes` is given, slopes) of one output row from its grid x and y rows.
template <typename scalar_t>
inline void prepare_row(const scalar_t* gx, const scalar_t* gy, int64_t ow, int64_t h, int64_t w,
                        Tap<scalar_t>* taps, Slope<scalar_t>* slopes) {
  for (int64_t o = 0; o < ow; ++o) {
    scalar_t mx, my;
    const scalar_t ix = source_index(gx[o], w, &mx);
    const scalar_t iy = source_index(gy[o], h, &my);
    const scalar_t x0 = std::floor(ix), y0 = std::floor(iy);
    const scalar_t ex = x0 + 1 - ix, fx = ix - x0, ey = y0 + 1 - iy, fy = iy - y0;
    const int64_t c0 = static_cast<int64_t>(x0), r0 = static_cast<int64_t>(y0);
    Tap<scalar_t>& t = taps[o];
    t.i00 = r0 * w + c0;
    t.i01 = t.i00 + (c0 + 1 < w ? 1 : 0);
    t.i10 = t.i00 + (r0 + 1 < h ? w : 0);
    t.i11 = t.i10 + (t.i01 - t.i00);
    t.w00 = ex * ey;
    t.w01 = fx * ey;
    t.w10 = ex * fy;
    t.w11 = fx * fy;
    if (slopes) slopes[o] = {ex, fx, ey, fy, mx, my};
  }
}

template <typename scalar_t>
inline scalar_t interpolate(const scalar_t* p, const Tap<scalar_t>& t) {
  return p[t.i00] * t.w00 + p[t.i01] * t.w01 + p[t.i10] * t.w10 + p[t.i11] * t.w11;
}

// Adds one channel's contribution at pixel o to the grid gradient sums and, if `dst`, scatters
// g into the input gradient.
template <typename scalar_t>
inline void backward_tap(const scalar_t* p, scalar_t* dst, const Tap<scalar_t>& t,
                         const Slope<scalar_t>& d, scalar_t g, scalar_t& sx, scalar_t& sy) {
  const scalar_t v00 = p[t.i00], v01 = p[t.i01], v10 = p[t.i10], v11 = p[t.i11];
  sx += g * (d.ey * (v01 - v00) + d.fy * (v11 - v10));
  sy += g * (d.ex * (v10 - v00) + d.fx * (v11 - v01));
  if (dst) {
    dst[t.i00] += t.w00 * g;
    dst[t.i01] += t.w01 * g;
    dst[t.i10] += t.w10 * g;
    dst[t.i11] += t.w11 * g;
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

constexpr int64_t kBlock = 4;  // channels per pass: a pixel's taps are read once for all four

}  // namespace

// x [N, C, H, W], grid [N, 2, oH, oW] (normalized x, y planes) -> [N, C, oH, oW]
at::Tensor sample_forward(const at::Tensor& x, const at::Tensor& grid) {
  check_inputs(x, grid);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = grid.size(2), ow = grid.size(3);
  const int64_t plane = h * w, out_plane = oh * ow;
  at::Tensor out = at::empty({n, c, oh, ow}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dysample_sample_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grid.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // one task = one output row of one image-group, all its channels
    at::parallel_for(0, n * oh, 1, [&](int64_t begin, int64_t end) {
      std::vector<Tap<scalar_t>> taps(ow);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / oh, y = task % oh;
        const scalar_t* gx = gp + (b * 2 * oh + y) * ow;
        prepare_row(gx, gx + out_plane, ow, h, w, taps.data(), (Slope<scalar_t>*)nullptr);
        const scalar_t* src = xp + b * c * plane;
        scalar_t* dst = op + b * c * out_plane + y * ow;
        int64_t ch = 0;
        for (; ch + kBlock <= c; ch += kBlock) {
          for (int64_t o = 0; o < ow; ++o) {
            const Tap<scalar_t>& t = taps[o];
            for (int64_t j = 0; j < kBlock; ++j) {
              dst[(ch + j) * out_plane + o] = interpolate(src + (ch + j) * plane, t);
            }
          }
        }
        for (; ch < c; ++ch) {
          for (int64_t o = 0; o < ow; ++o) {
            dst[ch * out_plane + o] = interpolate(src + ch * plane, taps[o]);
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
  const int64_t plane = h * w, out_plane = oh * ow;
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({n, c, oh, ow}),
              "dysample sampling: grad_out has shape ", grad_out.sizes());
  at::Tensor grad_x = need_input_grad ? at::zeros_like(x) : at::Tensor();
  // Channel chunks only when there are fewer image-groups than threads; each chunk then
  // keeps its own partial grid gradient, summed at the end.
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = std::min<int64_t>(c, std::max<int64_t>(1, (threads + n - 1) / n));
  const int64_t per_chunk = (c + chunks - 1) / chunks;
  at::Tensor partial = at::empty({chunks, n, 2, oh, ow}, grid.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dysample_sample_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grid.data_ptr<scalar_t>();
    const scalar_t* gop = grad_out.data_ptr<scalar_t>();
    scalar_t* gxp = need_input_grad ? grad_x.data_ptr<scalar_t>() : nullptr;
    scalar_t* pp = partial.data_ptr<scalar_t>();
    // one task = one image-group (or a chunk of its channels), all rows: every input-gradient
    // plane is written by one task only
    at::parallel_for(0, n * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<Tap<scalar_t>> taps(ow);
      std::vector<Slope<scalar_t>> slopes(ow);
      std::vector<scalar_t> sum_x(ow), sum_y(ow);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks, chunk = task % chunks;
        const int64_t c_begin = chunk * per_chunk, c_end = std::min(c, c_begin + per_chunk);
        scalar_t* part = pp + (chunk * n + b) * 2 * out_plane;
        for (int64_t y = 0; y < oh; ++y) {
          const scalar_t* gx = gp + (b * 2 * oh + y) * ow;
          prepare_row(gx, gx + out_plane, ow, h, w, taps.data(), slopes.data());
          std::fill(sum_x.begin(), sum_x.end(), scalar_t(0));
          std::fill(sum_y.begin(), sum_y.end(), scalar_t(0));
          const scalar_t* src = xp + b * c * plane;
          const scalar_t* go = gop + b * c * out_plane + y * ow;
          scalar_t* dst = gxp ? gxp + b * c * plane : nullptr;
          int64_t ch = c_begin;
          for (; ch + kBlock <= c_end; ch += kBlock) {
            for (int64_t o = 0; o < ow; ++o) {
              scalar_t sx = 0, sy = 0;
              for (int64_t j = 0; j < kBlock; ++j) {
                const int64_t k = ch + j;
                backward_tap(src + k * plane, dst ? dst + k * plane : dst, taps[o], slopes[o],
                             go[k * out_plane + o], sx, sy);
              }
              sum_x[o] += sx;
              sum_y[o] += sy;
            }
          }
          for (; ch < c_end; ++ch) {
            for (int64_t o = 0; o < ow; ++o) {
              backward_tap(src + ch * plane, dst ? dst + ch * plane : dst, taps[o], slopes[o],
                           go[ch * out_plane + o], sum_x[o], sum_y[o]);
            }
          }
          for (int64_t o = 0; o < ow; ++o) {
            part[y * ow + o] = sum_x[o] * slopes[o].mx;
            part[out_plane + y * ow + o] = sum_y[o] * slopes[o].my;
          }
        }
      }
    });
  });
  at::Tensor grad_grid = chunks == 1 ? partial.squeeze(0) : partial.sum(0);
  return {need_input_grad ? grad_x : at::empty({0}, x.options()), grad_grid};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample_forward", &sample_forward, "DySample bilinear sampling, forward (CPU)");
  m.def("sample_backward", &sample_backward, "DySample bilinear sampling, backward (CPU)");
}
