// DySample's bilinear sampling on CPU, forward: grid_sample(x, grid, bilinear, padding
// "border", align_corners=False) for a planar grid [N, 2, oH, oW], same arithmetic as ATen's.
//
// A pixel's four corners are read for all channels at once from channels-last copies of the
// input rows it needs (rows_cl.h), so the interpolation runs in SIMD over channels instead of
// gathering one scalar per channel; each input row is copied about once, since DySample's
// output rows read neighbouring input rows in order. Offsets of many pixels make an output row
// read more input rows; the copies then grow to hold them (up to the whole image).
//
// DySample calls sample_forward_offsets: the grid rows are computed from its offset matmul as
// they are needed (GridSource) and written out only for a backward.
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

namespace dysample {

// Per-thread buffers: channels-last copies of input rows (slot r % slots holds row r, [W, C]),
// the pixels of one output row, its grid, and the row blended, channels-last ([oW, C]). The
// copies start at about 64 KB; an output row that reads more rows makes them hold that many.
template <typename scalar_t>
struct RowsWorkspace {
  explicit RowsWorkspace(const Shape& s)
      : slots(initial_slots(s, sizeof(scalar_t), 64 << 10)),
        rows(new scalar_t[slots * s.w * s.c]),
        tag(slots, -1),
        pixels(s.ow),
        grid_row(2 * s.ow),
        blended(new scalar_t[s.ow * s.c]) {}
  int64_t slots;
  std::unique_ptr<scalar_t[]> rows;
  std::vector<int64_t> tag;  // input row held by each slot, -1: none
  std::vector<Corners<scalar_t>> pixels;
  std::vector<scalar_t> grid_row;  // x, y of one output row when computed from the offsets
  std::unique_ptr<scalar_t[]> blended;

  // Holds at least `rows` input rows (at most the image's); the rows held are dropped.
  void hold(int64_t rows_needed, const Shape& s) {
    slots = grown_slots(s, slots, rows_needed);
    rows.reset(new scalar_t[slots * s.w * s.c]);
    tag.assign(slots, -1);
  }
};

// Where the grid rows come from: a planar grid [N, 2, oH, oW], or DySample's offset matmul
// off [B, H * W, M (2M with gates)], M = 2 * G * s^2 columns in the lp channel order (x|y,
// group, i, j), N = B * G:  grid = base + (column + bias) (* gate) * norm, optionally saved.
template <typename scalar_t>
struct GridSource {
  const scalar_t* grid = nullptr;
  const scalar_t* off = nullptr;   // used when grid is null
  const scalar_t* bias = nullptr;  // [M] or null
  const scalar_t* base = nullptr;  // [oH, oW, 2]: the bilinear positions
  scalar_t norm[2] = {0, 0};       // (2 / W, 2 / H) times the scope factor
  int64_t scale = 0, groups = 0, cols = 0;
  bool gated = false;
  scalar_t* save = nullptr;  // [N, 2, oH, oW] or null

  // x and y of output row y of image-group n: two rows of ow values (buf: 2 * ow scratch).
  const scalar_t* row(int64_t n, int64_t y, const Shape& sh, scalar_t* buf) const {
    const int64_t plane = sh.oh * sh.ow;
    if (grid) {
      std::copy(grid + (n * 2 * sh.oh + y) * sh.ow, grid + (n * 2 * sh.oh + y + 1) * sh.ow, buf);
      std::copy(grid + (n * 2 + 1) * plane + y * sh.ow, grid + (n * 2 + 1) * plane + (y + 1) * sh.ow,
                buf + sh.ow);
      return buf;
    }
    const int64_t s = scale, g = groups, m = 2 * g * s * s, b = n / g, gi = n % g;
    const int64_t r = y / s, i = y % s;
    for (int64_t axis = 0; axis < 2; ++axis) {
      scalar_t* dst = buf + axis * sh.ow;
      const int64_t first = ((axis * g + gi) * s + i) * s;
      for (int64_t col = 0; col < sh.w; ++col) {
        const scalar_t* px = off + ((b * sh.h + r) * sh.w + col) * cols;
        for (int64_t j = 0; j < s; ++j) {
          const int64_t k = first + j, o = col * s + j;
          scalar_t v = px[k];
          if (bias) v = v + bias[k];
          if (gated) v = v * px[m + k];
          dst[o] = base[(y * sh.ow + o) * 2 + axis] + v * norm[axis];
        }
      }
      if (save) std::copy(dst, dst + sh.ow, save + (n * 2 + axis) * plane + y * sh.ow);
    }
    return buf;
  }
};

}  // namespace dysample

#define DYSAMPLE_ROWS "rows_cl.h"
#include "isa_builds.h"
#undef DYSAMPLE_ROWS

namespace dysample {

namespace {
std::atomic<bool> portable_only{false};
}  // namespace

bool use_avx2() {
#ifdef DYSAMPLE_AVX2_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2");
  return has && !portable_only.load();
#else
  return false;
#endif
}

std::string kernel_isa(const std::string& choice) {
  TORCH_CHECK(choice == "" || choice == "auto" || choice == "portable",
              "dysample kernel_isa: choice must be 'auto' or 'portable', got '", choice, "'");
  if (!choice.empty()) portable_only = choice == "portable";
  return use_avx2() ? "avx2" : "portable";
}

namespace {

// out = sampled, or with `accumulate` out = out + sampled
template <typename scalar_t>
void run_forward(const at::Tensor& x, const GridSource<scalar_t>& source, at::Tensor& out,
                 bool accumulate = false) {
  const int64_t n = x.size(0), oh = out.size(2);
  const Shape shape{x.size(1), x.size(2), x.size(3), oh, out.size(3)};
  // one task = a band of output rows of one image-group, all channels; bands only to give
  // every thread work when there are few image-groups
  const int64_t threads = at::get_num_threads();
  const int64_t bands = std::min<int64_t>(std::max<int64_t>(1, (2 * threads + n - 1) / n),
                                          std::max<int64_t>(1, oh / 8));
  const int64_t band_rows = (oh + bands - 1) / bands;
  const bool avx2 = use_avx2();
  const scalar_t* xp = x.data_ptr<scalar_t>();
  scalar_t* op = out.data_ptr<scalar_t>();
  const int64_t in_size = shape.c * shape.h * shape.w, out_size = shape.c * oh * shape.ow;
  at::parallel_for(0, n * bands, 1, [&](int64_t begin, int64_t end) {
    RowsWorkspace<scalar_t> workspace(shape);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / bands, y0 = (task % bands) * band_rows;
      const int64_t y1 = std::min(oh, y0 + band_rows);
#ifdef DYSAMPLE_AVX2_DISPATCH
      if (avx2) {
        avx2::sample_rows(xp + b * in_size, source, b, op + b * out_size, shape, y0, y1, workspace,
                          accumulate);
        continue;
      }
#endif
      portable::sample_rows(xp + b * in_size, source, b, op + b * out_size, shape, y0, y1,
                            workspace, accumulate);
    }
  });
}

}  // namespace

// x [N, C, H, W], grid [N, 2, oH, oW] (normalized x, y planes) -> [N, C, oH, oW]
at::Tensor sample_forward(const at::Tensor& x, const at::Tensor& grid) {
  check_inputs(x, grid);
  at::Tensor out = at::empty({x.size(0), x.size(1), grid.size(2), grid.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dysample_sample_forward", [&] {
    GridSource<scalar_t> source;
    source.grid = grid.data_ptr<scalar_t>();
    run_forward<scalar_t>(x, source, out);
  });
  return out;
}

// DySample's forward from its offset matmul, the grid computed row by row (GridSource):
// x [B * G, C / G, H, W], off [B, H * W, M (2M gated)], bias [M] or empty, base [sH, sW, 2],
// norm [2]. Returns (out [B * G, C / G, sH, sW], the grid [B * G, 2, sH, sW] or, without
// `save_grid`, an empty tensor). With a non-empty `add_to` (contiguous, out's shape and x's
// dtype) the samples are added to it in place and out is add_to.
std::vector<at::Tensor> sample_forward_offsets(const at::Tensor& x, const at::Tensor& off,
                                               const at::Tensor& bias, const at::Tensor& base,
                                               const at::Tensor& norm, int64_t s, int64_t g,
                                               bool gated, bool save_grid,
                                               const at::Tensor& add_to) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && x.is_contiguous() && g > 0 && s > 0 &&
                  x.size(0) % g == 0,
              "dysample sampling: expected a contiguous x [B * G, C / G, H, W] (G = ", g,
              "), got ", x.sizes());
  const int64_t h = x.size(2), w = x.size(3), m = 2 * g * s * s, oh = s * h, ow = s * w;
  const int64_t cols = gated ? 2 * m : m;
  const auto dtype = x.scalar_type();
  TORCH_CHECK(off.device().is_cpu() && off.is_contiguous() && off.scalar_type() == dtype &&
                  off.sizes() == at::IntArrayRef({x.size(0) / g, h * w, cols}),
              "dysample sampling: expected a contiguous off [", x.size(0) / g, ", ", h * w, ", ",
              cols, "] of x's dtype, got ", off.sizes());
  TORCH_CHECK(base.is_contiguous() && base.sizes() == at::IntArrayRef({oh, ow, 2}) &&
                  norm.numel() == 2 && base.scalar_type() == dtype && norm.scalar_type() == dtype,
              "dysample sampling: base must be [", oh, ", ", ow, ", 2] and norm [2], of x's dtype");
  TORCH_CHECK(bias.numel() == 0 ||
                  (bias.numel() == m && bias.is_contiguous() && bias.scalar_type() == dtype),
              "dysample sampling: bias must be empty or [", m, "] of x's dtype");
  const bool accumulate = add_to.numel() > 0;
  TORCH_CHECK(!accumulate || (add_to.device().is_cpu() && add_to.is_contiguous() &&
                              add_to.scalar_type() == dtype &&
                              add_to.sizes() == at::IntArrayRef({x.size(0), x.size(1), oh, ow})),
              "dysample sampling: add_to must be empty or a contiguous [", x.size(0), ", ",
              x.size(1), ", ", oh, ", ", ow, "] of x's dtype, got ", add_to.sizes());
  at::Tensor out = accumulate ? add_to : at::empty({x.size(0), x.size(1), oh, ow}, x.options());
  at::Tensor grid = save_grid ? at::empty({x.size(0), 2, oh, ow}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "dysample_sample_forward_offsets", [&] {
    GridSource<scalar_t> source;
    source.off = off.data_ptr<scalar_t>();
    source.bias = bias.numel() ? bias.data_ptr<scalar_t>() : nullptr;
    source.base = base.data_ptr<scalar_t>();
    source.norm[0] = norm[0].item<scalar_t>();
    source.norm[1] = norm[1].item<scalar_t>();
    source.scale = s;
    source.groups = g;
    source.cols = cols;
    source.gated = gated;
    source.save = save_grid ? grid.data_ptr<scalar_t>() : nullptr;
    run_forward<scalar_t>(x, source, out, accumulate);
  });
  return {out, grid};
}

}  // namespace dysample
