// Shared by the forward and backward kernels: grid_sample's coordinate arithmetic (bilinear,
// padding "border", align_corners=False) for one output pixel, and the input checks.
//
// With border padding the coordinates are clipped to [0, size - 1] first, so a right/bottom
// corner can only fall off the image when the coordinate sits exactly on the last pixel: its
// weight is then 0 and so is the coordinate's gradient; the corner index is clamped onto the
// last pixel instead of being tested for every channel.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

// x86-64 with GCC: both kernels also compile an AVX2 build (GCC's target("avx2")), chosen at
// run time where the CPU has it (use_avx2).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DYSAMPLE_AVX2_DISPATCH 1
#include <immintrin.h>
#endif

namespace dysample {

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

struct Shape {
  int64_t c, h, w, oh, ow;  // channels, input and output height and width
};

// Slots of a kernel's ring of channels-last input rows [W, C]: about `budget` bytes, 4 to 16
// rows; grown_slots: at least `needed` rows (at least doubling), at most the image's.
inline int64_t initial_slots(const Shape& s, int64_t element_size, int64_t budget) {
  return std::max<int64_t>(4, std::min<int64_t>(16, budget / (s.w * s.c * element_size)));
}

inline int64_t grown_slots(const Shape& s, int64_t slots, int64_t needed) {
  return std::min(s.h, std::max(needed, 2 * slots));
}

// One output pixel: corner rows r0 <= r1 and columns c0 <= c1 (r1 = r0 + 1 or, on the last
// row, r0), 1 - frac and frac in x and y, d(pixel coordinate)/d(normalized grid) (0 where the
// coordinate was clipped) and the corners' bilinear weights.
template <typename scalar_t>
struct Corners {
  int64_t r0, r1, c0, c1;
  scalar_t ex, fx, ey, fy, mx, my;
  scalar_t w00, w01, w10, w11;
};

template <typename scalar_t>
inline Corners<scalar_t> locate(scalar_t gx, scalar_t gy, int64_t h, int64_t w) {
  Corners<scalar_t> k;
  const scalar_t ix = source_index(gx, w, &k.mx);
  const scalar_t iy = source_index(gy, h, &k.my);
  const scalar_t x0 = std::floor(ix), y0 = std::floor(iy);
  k.ex = x0 + 1 - ix;
  k.fx = ix - x0;
  k.ey = y0 + 1 - iy;
  k.fy = iy - y0;
  k.c0 = static_cast<int64_t>(x0);
  k.r0 = static_cast<int64_t>(y0);
  k.c1 = k.c0 + 1 < w ? k.c0 + 1 : k.c0;
  k.r1 = k.r0 + 1 < h ? k.r0 + 1 : k.r0;
  k.w00 = k.ex * k.ey;
  k.w01 = k.fx * k.ey;
  k.w10 = k.ex * k.fy;
  k.w11 = k.fx * k.fy;
  return k;
}

inline void check_inputs(const at::Tensor& x, const at::Tensor& grid) {
  TORCH_CHECK(x.device().is_cpu() && grid.device().is_cpu(), "dysample sampling: CPU tensors only");
  TORCH_CHECK(x.dim() == 4 && grid.dim() == 4 && grid.size(1) == 2 && grid.size(0) == x.size(0),
              "dysample sampling: expected x [N, C, H, W] and grid [N, 2, oH, oW], got ",
              x.sizes(), " and ", grid.sizes());
  TORCH_CHECK(x.scalar_type() == grid.scalar_type(), "dysample sampling: x and grid dtypes differ");
  TORCH_CHECK(x.is_contiguous() && grid.is_contiguous(), "dysample sampling: contiguous inputs only");
}

// Forward pass, sample_forward_cpu.cpp; backward, sample_backward_cpu.cpp.
at::Tensor sample_forward(const at::Tensor& x, const at::Tensor& grid);
std::vector<at::Tensor> sample_forward_offsets(const at::Tensor& x, const at::Tensor& off,
                                               const at::Tensor& bias, const at::Tensor& base,
                                               const at::Tensor& norm, int64_t s, int64_t g,
                                               bool gated, bool save_grid,
                                               const at::Tensor& add_to);
// The kernels' code path: "avx2" or "portable"; choice "portable" or "auto" sets it, "" asks.
std::string kernel_isa(const std::string& choice);
bool use_avx2();  // whether the kernels run their AVX2 build
std::vector<at::Tensor> sample_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                        const at::Tensor& grid, bool need_input_grad);

}  // namespace dysample
