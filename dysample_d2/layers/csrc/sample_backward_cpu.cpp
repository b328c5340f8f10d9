// DySample's bilinear sampling on CPU, backward: grid_sample(x, grid, bilinear, padding
// "border", align_corners=False) for a planar grid [N, 2, oH, oW].
//
// Same arithmetic as ATen's grid_sampler_2d backward, laid out like the forward: the input rows
// an output row reads, and their gradient rows, are held channels-last, the output row's
// gradient is copied channels-last, and every pixel then updates its four corners' gradients
// and sums its grid gradient over channels in SIMD (backward_rows_cl.h). No atomics: every
// (n, c) plane of the input gradient belongs to one task. Also the Python bindings.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "sampling_common.h"

namespace dysample {

// Per-thread buffers: channels-last copies of input rows and of their gradient rows (slot
// r % slots holds row r, [W, C]; the gradient rows only with an input gradient), one output
// row's corners and its gradient, channels-last ([oW, C]).
template <typename scalar_t>
struct BackwardWorkspace {
  BackwardWorkspace(const Shape& s, bool input_grad)
      : slots(initial_slots(s, sizeof(scalar_t), 32 << 10)),
        input_grad(input_grad),
        tag(slots, -1),
        corners(s.ow),
        grad_out_row(new scalar_t[s.ow * s.c]) {
    allocate(s);
  }
  int64_t slots;
  bool input_grad;
  std::unique_ptr<scalar_t[]> x_rows, grad_rows;
  std::vector<int64_t> tag;  // input row held by each slot, -1: none
  std::vector<Corners<scalar_t>> corners;
  std::unique_ptr<scalar_t[]> grad_out_row;

  // Holds at least `rows_needed` input rows (at most the image's); the rows held are dropped
  // (their gradient rows must have been stored).
  void hold(int64_t rows_needed, const Shape& s) {
    slots = grown_slots(s, slots, rows_needed);
    tag.assign(slots, -1);
    allocate(s);
  }

 private:
  void allocate(const Shape& s) {
    x_rows.reset(new scalar_t[slots * s.w * s.c]);
    grad_rows.reset(input_grad ? new scalar_t[slots * s.w * s.c] : nullptr);
  }
};

}  // namespace dysample

#define DYSAMPLE_ROWS "backward_rows_cl.h"
#include "isa_builds.h"
#undef DYSAMPLE_ROWS

namespace dysample {

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
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dysample_sample_backward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grid.data_ptr<scalar_t>();
    const scalar_t* gop = grad_out.data_ptr<scalar_t>();
    scalar_t* gxp = need_input_grad ? grad_x.data_ptr<scalar_t>() : nullptr;
    scalar_t* pp = partial.data_ptr<scalar_t>();
    // one task = one image-group (or a chunk of its channels), all rows
    at::parallel_for(0, n * chunks, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<BackwardWorkspace<scalar_t>> ws;
      int64_t ws_channels = 0;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / chunks, chunk = task % chunks;
        const int64_t c_begin = std::min(c, chunk * per_chunk);
        const int64_t c_end = std::min(c, c_begin + per_chunk);
        scalar_t* part = pp + (chunk * n + b) * 2 * out_plane;
        if (c_begin == c_end) {  // rounding left this chunk no channel
          std::fill(part, part + 2 * out_plane, scalar_t(0));
          continue;
        }
        const Shape shape{c_end - c_begin, h, w, oh, ow};
        if (ws_channels != shape.c) {  // the last chunk may hold fewer channels
          ws = std::make_unique<BackwardWorkspace<scalar_t>>(shape, need_input_grad);
          ws_channels = shape.c;
        }
        const int64_t first = b * c + c_begin;
        const scalar_t* src = xp + first * plane;
        const scalar_t* go = gop + first * out_plane;
        const scalar_t* gr = gp + b * 2 * out_plane;
        scalar_t* dst = gxp ? gxp + first * plane : nullptr;
#ifdef DYSAMPLE_AVX2_DISPATCH
        if (avx2) {
          avx2::backward_rows(src, go, gr, dst, part, shape, *ws);
          continue;
        }
#endif
        portable::backward_rows(src, go, gr, dst, part, shape, *ws);
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
  m.def("kernel_isa", &dysample::kernel_isa, pybind11::arg("choice") = "",
        "The kernels' code path, avx2 or portable; 'portable' or 'auto' sets it");
  m.def("sample_forward", &dysample::sample_forward, "DySample bilinear sampling, forward (CPU)");
  m.def("sample_backward", &dysample::sample_backward, "DySample bilinear sampling, backward (CPU)");
}
