// The forward kernel's row loop, compiled twice by isa_builds.h: portable and under GCC's
// target("avx2"), where the channel loops compile to 8-wide vectors. Same arithmetic, same
// results, in both.
namespace dysample {
namespace DYSAMPLE_ISA {

// out[k] = bilinear blend of four channel vectors, for k < c.
template <typename scalar_t>
inline void blend(const scalar_t* __restrict p00, const scalar_t* __restrict p01,
                  const scalar_t* __restrict p10, const scalar_t* __restrict p11,
                  const Corners<scalar_t>& p, scalar_t* __restrict out, int64_t c) {
  const scalar_t w00 = p.w00, w01 = p.w01, w10 = p.w10, w11 = p.w11;
  for (int64_t k = 0; k < c; ++k) out[k] = p00[k] * w00 + p01[k] * w01 + p10[k] * w10 + p11[k] * w11;
}

// Output rows [y0, y1) of image-group n: x [C, H, W], out [C, oH, oW] (added to, with
// `accumulate`).
template <typename scalar_t>
void sample_rows(const scalar_t* x, const GridSource<scalar_t>& source, int64_t n, scalar_t* out,
                 const Shape& s, int64_t y0, int64_t y1, RowsWorkspace<scalar_t>& ws,
                 bool accumulate) {
  const int64_t plane = s.h * s.w, out_plane = s.oh * s.ow, row_size = s.w * s.c;
  std::fill(ws.tag.begin(), ws.tag.end(), -1);  // another image-group: no row held
  for (int64_t y = y0; y < y1; ++y) {
    const scalar_t* gx = source.row(n, y, s, ws.grid_row.data());
    int64_t r_min = s.h, r_max = -1;
    for (int64_t o = 0; o < s.ow; ++o) {
      ws.pixels[o] = locate(gx[o], gx[s.ow + o], s.h, s.w);
      r_min = std::min(r_min, ws.pixels[o].r0);
      r_max = std::max(r_max, ws.pixels[o].r1);
    }
    if (r_max - r_min >= ws.slots) ws.hold(r_max - r_min + 1, s);
    for (int64_t r = r_min; r <= r_max; ++r) {
      const int64_t slot = r % ws.slots;
      if (ws.tag[slot] != r) {
        transpose(x + r * s.w, plane, ws.rows.get() + slot * row_size, s.c, s.c, s.w, true);
        ws.tag[slot] = r;
      }
    }
    const scalar_t* rows = ws.rows.get();
    scalar_t* blended = ws.blended.get();
    for (int64_t o = 0; o < s.ow; ++o) {
      const Corners<scalar_t>& p = ws.pixels[o];
      const scalar_t* top = rows + (p.r0 % ws.slots) * row_size;
      const scalar_t* bottom = rows + (p.r1 % ws.slots) * row_size;
      blend(top + p.c0 * s.c, top + p.c1 * s.c, bottom + p.c0 * s.c, bottom + p.c1 * s.c, p,
            blended + o * s.c, s.c);
    }
    // channel by channel, each written along its output row
    transpose(blended, s.c, out + y * s.ow, out_plane, s.ow, s.c, false, accumulate);
  }
}

}  // namespace DYSAMPLE_ISA
}  // namespace dysample
