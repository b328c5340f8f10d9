// DySample's bilinear sampling on CPU, forward: grid_sample(x, grid, bilinear, padding
// "border", align_corners=False) for a planar grid [N, 2, oH, oW], same arithmetic as ATen's.
//
// A pixel's four corners are read for all channels at once from channels-last copies of the
// input rows it needs (rows_cl.h), so the interpolation runs in SIMD over channels instead of
// gathering one scalar per channel; each input row is copied about once, since DySample's
// output rows read neighbouring input rows in order. Rows whose pixels spread over more input
// rows than the copies hold (offsets of many pixels) are sampled straight from x.
//
// x86-64 with GCC: an AVX2 build of the same code is chosen at run time where the CPU has it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <cmath>
#include <type_traits>
#include <memory>
#include <vector>

#include "sampling_common.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DYSAMPLE_AVX2_DISPATCH 1
#include <immintrin.h>
#endif

namespace dysample {

struct Shape {
  int64_t c, h, w, oh, ow;  // channels, input and output height and width
};

// One output pixel's corners (input rows and columns) and weights.
template <typename scalar_t>
struct Pixel {
  int64_t r0, r1, c0, c1;
  scalar_t w00, w01, w10, w11;
};

template <typename scalar_t>
inline Pixel<scalar_t> pixel(const Corners<scalar_t>& k) {
  return {k.r0, k.r1, k.c0, k.c1, k.ex * k.ey, k.fx * k.ey, k.ex * k.fy, k.fx * k.fy};
}

// Per-thread buffers: channels-last copies of input rows (slot r % slots holds row r, [W, C]),
// the pixels of one output row, and that row blended, channels-last ([oW, C]).
template <typename scalar_t>
struct RowsWorkspace {
  explicit RowsWorkspace(const Shape& s)
      : slots(std::max<int64_t>(4, std::min<int64_t>(16, (384 << 10) / (s.w * s.c * sizeof(scalar_t))))),
        rows(new scalar_t[slots * s.w * s.c]),
        tag(slots, -1),
        pixels(s.ow),
        blended(new scalar_t[s.ow * s.c]) {}
  int64_t slots;
  std::unique_ptr<scalar_t[]> rows;
  std::vector<int64_t> tag;  // input row held by each slot, -1: none
  std::vector<Pixel<scalar_t>> pixels;
  std::unique_ptr<scalar_t[]> blended;
};

// One output row sampled straight from x [C, H, W] (rows whose pixels are spread too far),
// four channels per pass over the pixels.
template <typename scalar_t>
void sample_row_direct(const scalar_t* x, const Pixel<scalar_t>* pixels, scalar_t* dst, const Shape& s) {
  const int64_t plane = s.h * s.w, out_plane = s.oh * s.ow;
  for (int64_t ch0 = 0; ch0 < s.c; ch0 += 4) {
    const int64_t ch1 = std::min(s.c, ch0 + 4);
    for (int64_t o = 0; o < s.ow; ++o) {
      const Pixel<scalar_t>& p = pixels[o];
      for (int64_t ch = ch0; ch < ch1; ++ch) {
        const scalar_t* top = x + ch * plane + p.r0 * s.w;
        const scalar_t* bottom = x + ch * plane + p.r1 * s.w;
        dst[ch * out_plane + o] =
            top[p.c0] * p.w00 + top[p.c1] * p.w01 + bottom[p.c0] * p.w10 + bottom[p.c1] * p.w11;
      }
    }
  }
}

}  // namespace dysample

#define DYSAMPLE_ISA portable
#include "rows_cl.h"
#undef DYSAMPLE_ISA

#ifdef DYSAMPLE_AVX2_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2")
#define DYSAMPLE_ISA avx2
#define DYSAMPLE_ISA_AVX2 1
#include "rows_cl.h"
#undef DYSAMPLE_ISA_AVX2
#undef DYSAMPLE_ISA
#pragma GCC pop_options
#endif

namespace dysample {

namespace {

std::atomic<bool> portable_only{false};

bool use_avx2() {
#ifdef DYSAMPLE_AVX2_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2");
  return has && !portable_only.load();
#else
  return false;
#endif
}

}  // namespace

std::string forward_isa(const std::string& choice) {
  TORCH_CHECK(choice == "" || choice == "auto" || choice == "portable",
              "dysample forward_isa: choice must be 'auto' or 'portable', got '", choice, "'");
  if (!choice.empty()) portable_only = choice == "portable";
  return use_avx2() ? "avx2" : "portable";
}

// The normalized planar grid [B * G, 2, sH, sW] from the offset matmul off [B, H * W, M]
// (with `gated`, [B, H * W, 2M]): M = 2 * G * s^2 columns in DySample's lp channel order
// (x|y, group, i, j), with `gated` followed by as many gates (DySample+'s sigmoid of its scope).
//   grid = base + (column + bias) (* gate) * norm
// bias [M] or empty; base [sH, sW, 2]: the bilinear positions; norm [2]: (2 / W, 2 / H) times
// the scope factor.
at::Tensor make_grid(const at::Tensor& off, const at::Tensor& bias, const at::Tensor& base,
                     const at::Tensor& norm, int64_t h, int64_t w, int64_t s, int64_t g,
                     bool gated) {
  const int64_t m = 2 * g * s * s, cols = gated ? 2 * m : m, oh = s * h, ow = s * w;
  TORCH_CHECK(off.device().is_cpu() && off.dim() == 3 && off.is_contiguous() &&
                  off.size(1) == h * w && off.size(2) == cols,
              "dysample make_grid: expected a contiguous off [B, ", h * w, ", ", cols, "], got ",
              off.sizes());
  const auto dtype = off.scalar_type();
  TORCH_CHECK(base.is_contiguous() && base.sizes() == at::IntArrayRef({oh, ow, 2}) &&
                  norm.numel() == 2 && base.scalar_type() == dtype && norm.scalar_type() == dtype,
              "dysample make_grid: base must be [", oh, ", ", ow, ", 2] and norm [2], of off's dtype");
  const bool has_bias = bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.numel() == m && bias.is_contiguous() && bias.scalar_type() == dtype),
              "dysample make_grid: bias must be empty or [", m, "] of off's dtype");
  const int64_t batch = off.size(0);
  at::Tensor grid = at::empty({batch * g, 2, oh, ow}, off.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "dysample_make_grid", [&] {
    const scalar_t* offp = off.data_ptr<scalar_t>();
    const scalar_t* basep = base.data_ptr<scalar_t>();
    const scalar_t* biasp = has_bias ? bias.data_ptr<scalar_t>() : nullptr;
    const scalar_t norms[2] = {norm[0].item<scalar_t>(), norm[1].item<scalar_t>()};
    scalar_t* gridp = grid.data_ptr<scalar_t>();
    // one task = one input row of one (image, group, axis) plane: s output rows
    at::parallel_for(0, batch * g * 2 * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t r = task % h, axis = (task / h) % 2, gi = (task / (2 * h)) % g;
        const int64_t b = task / (2 * h * g), first_pixel = (b * h + r) * w;
        scalar_t* dst = gridp + ((b * g + gi) * 2 + axis) * oh * ow;
        for (int64_t i = 0; i < s; ++i) {
          const int64_t y = r * s + i, first = ((axis * g + gi) * s + i) * s;
          for (int64_t col = 0; col < w; ++col) {
            const int64_t p = first_pixel + col;
            for (int64_t j = 0; j < s; ++j) {
              const int64_t k = first + j, o = y * ow + col * s + j;
              scalar_t v = offp[p * cols + k];
              if (biasp) v = v + biasp[k];
              if (gated) v = v * offp[p * cols + m + k];
              dst[o] = basep[o * 2 + axis] + v * norms[axis];
            }
          }
        }
      }
    });
  });
  return grid;
}

// x [N, C, H, W], grid [N, 2, oH, oW] (normalized x, y planes) -> [N, C, oH, oW]
at::Tensor sample_forward(const at::Tensor& x, const at::Tensor& grid) {
  check_inputs(x, grid);
  const int64_t n = x.size(0), oh = grid.size(2);
  at::Tensor out = at::empty({n, x.size(1), oh, grid.size(3)}, x.options());
  // one task = a band of output rows of one image-group, all channels; bands only to give
  // every thread work when there are few image-groups
  const int64_t threads = at::get_num_threads();
  const int64_t bands = std::min<int64_t>(std::max<int64_t>(1, (2 * threads + n - 1) / n),
                                          std::max<int64_t>(1, oh / 8));
  const int64_t band_rows = (oh + bands - 1) / bands;
  const bool avx2 = use_avx2();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dysample_sample_forward", [&] {
    const Shape shape{x.size(1), x.size(2), x.size(3), oh, grid.size(3)};
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* gp = grid.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n * bands, 1, [&](int64_t begin, int64_t end) {
      RowsWorkspace<scalar_t> workspace(shape);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / bands, band = task % bands;
        const int64_t y0 = band * band_rows, y1 = std::min(oh, y0 + band_rows);
        const int64_t in_size = shape.c * shape.h * shape.w, out_size = shape.c * oh * shape.ow;
        const scalar_t* g = gp + b * 2 * oh * shape.ow;
#ifdef DYSAMPLE_AVX2_DISPATCH
        if (avx2) {
          avx2::sample_rows(xp + b * in_size, g, op + b * out_size, shape, y0, y1, workspace);
          continue;
        }
#endif
        portable::sample_rows(xp + b * in_size, g, op + b * out_size, shape, y0, y1, workspace);
      }
    });
  });
  return out;
}

}  // namespace dysample
