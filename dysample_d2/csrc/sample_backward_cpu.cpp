// DySample's bilinear sampling on CPU, backward: grid_sample(x, grid, bilinear, padding
// "border", align_corners=False) for a planar grid [N, 2, oH, oW].
//
// Same arithmetic as ATen's grid_sampler_2d backward, with the input gradient written one
// channel plane at a time (no atomics: every (n, c) plane belongs to one task) while the grid
// gradient is accumulated over channels in the same pass. Also the Python bindings.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "sampling_common.h"

namespace dysample {
namespace {

// One output pixel: its four corners (absolute offsets in the [H, W] plane) and weights.
template <typename scalar_t>
struct Tap {
  int64_t i00, i01, i10, i11;
  scalar_t w00, w01, w10, w11;
};

// What the grid gradient needs besides the corner values.
template <typename scalar_t>
struct Slope {
  scalar_t ex, fx, ey, fy, mx, my;
};

// Taps and slopes of one output row from its grid x and y rows.
template <typename scalar_t>
inline void prepare_row(const scalar_t* gx, const scalar_t* gy, int64_t ow, int64_t h, int64_t w,
                        Tap<scalar_t>* taps, Slope<scalar_t>* slopes) {
  for (int64_t o = 0; o < ow; ++o) {
    const Corners<scalar_t> k = locate(gx[o], gy[o], h, w);
    Tap<scalar_t>& t = taps[o];
    t.i00 = k.r0 * w + k.c0;
    t.i01 = k.r0 * w + k.c1;
    t.i10 = k.r1 * w + k.c0;
    t.i11 = k.r1 * w + k.c1;
    t.w00 = k.ex * k.ey;
    t.w01 = k.fx * k.ey;
    t.w10 = k.ex * k.fy;
    t.w11 = k.fx * k.fy;
    slopes[o] = {k.ex, k.fx, k.ey, k.fy, k.mx, k.my};
  }
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

constexpr int64_t kBlock = 4;  // channels per pass: a pixel's taps are read once for all four

}  // namespace

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

}  // namespace dysample

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample_forward_offsets", &dysample::sample_forward_offsets,
        "DySample forward from its offset matmul, the grid computed row by row (CPU)");
  m.def("forward_isa", &dysample::forward_isa, pybind11::arg("choice") = "",
        "The forward's code path, avx2 or portable; 'portable' or 'auto' sets it");
  m.def("sample_forward", &dysample::sample_forward, "DySample bilinear sampling, forward (CPU)");
  m.def("sample_backward", &dysample::sample_backward, "DySample bilinear sampling, backward (CPU)");
}
