// The backward kernel's row loop, compiled twice by isa_builds.h like the forward's rows_cl.h:
// portable and under GCC's target("avx2"). Same arithmetic, same results, in both.
namespace dysample {
namespace DYSAMPLE_ISA {

// One output pixel's backward over c channels, from channels-last rows: returns the grid
// gradient's sums over channels (before d(coordinate)/d(grid)) and, with g00 (the input
// gradient's corner rows), adds the pixel's gradient there. The sums run in kLanes partial
// sums, so that they vectorize and every build adds in the same order.
constexpr int64_t kLanes = 8;

// Channels [full, c) of backward_pixel, then the lanes' sums in order.
template <typename scalar_t>
inline void sums_tail(const scalar_t* go, const scalar_t* v00, const scalar_t* v01,
                      const scalar_t* v10, const scalar_t* v11, const Corners<scalar_t>& k,
                      scalar_t* g00, scalar_t* g01, scalar_t* g10, scalar_t* g11, int64_t full,
                      int64_t c, scalar_t* ax, scalar_t* ay, scalar_t sums[2]) {
  for (int64_t q = full; q < c; ++q) {
    ax[q - full] += go[q] * (k.ey * (v01[q] - v00[q]) + k.fy * (v11[q] - v10[q]));
    ay[q - full] += go[q] * (k.ex * (v10[q] - v00[q]) + k.fx * (v11[q] - v01[q]));
    if (g00) {
      g00[q] += k.w00 * go[q];
      g01[q] += k.w01 * go[q];
      g10[q] += k.w10 * go[q];
      g11[q] += k.w11 * go[q];
    }
  }
  sums[0] = sums[1] = 0;
  for (int64_t j = 0; j < kLanes; ++j) {
    sums[0] += ax[j];
    sums[1] += ay[j];
  }
}

#ifdef DYSAMPLE_ISA_AVX2
// backward_pixel's channels [0, full) in AVX2 registers (full a multiple of 8).
inline void backward_pixel_avx2(const float* go, const float* v00, const float* v01,
                                const float* v10, const float* v11, const Corners<float>& k,
                                float* g00, float* g01, float* g10, float* g11, int64_t full,
                                float* ax, float* ay) {
  const __m256 ex = _mm256_set1_ps(k.ex), fx = _mm256_set1_ps(k.fx);
  const __m256 ey = _mm256_set1_ps(k.ey), fy = _mm256_set1_ps(k.fy);
  __m256 sx = _mm256_setzero_ps(), sy = _mm256_setzero_ps();
  for (int64_t q = 0; q < full; q += 8) {
    const __m256 g = _mm256_loadu_ps(go + q);
    const __m256 a = _mm256_loadu_ps(v00 + q), b = _mm256_loadu_ps(v01 + q);
    const __m256 d = _mm256_loadu_ps(v10 + q), e = _mm256_loadu_ps(v11 + q);
    const __m256 tx = _mm256_add_ps(_mm256_mul_ps(ey, _mm256_sub_ps(b, a)),
                                    _mm256_mul_ps(fy, _mm256_sub_ps(e, d)));
    const __m256 ty = _mm256_add_ps(_mm256_mul_ps(ex, _mm256_sub_ps(d, a)),
                                    _mm256_mul_ps(fx, _mm256_sub_ps(e, b)));
    sx = _mm256_add_ps(sx, _mm256_mul_ps(g, tx));
    sy = _mm256_add_ps(sy, _mm256_mul_ps(g, ty));
  }
  _mm256_storeu_ps(ax, sx);
  _mm256_storeu_ps(ay, sy);
  if (!g00) return;
  float* const corners[4] = {g00, g01, g10, g11};
  const float weights[4] = {k.w00, k.w01, k.w10, k.w11};
  for (int corner = 0; corner < 4; ++corner) {  // one corner after the other, as above
    float* dst = corners[corner];
    const __m256 wv = _mm256_set1_ps(weights[corner]);
    for (int64_t q = 0; q < full; q += 8) {
      _mm256_storeu_ps(dst + q, _mm256_add_ps(_mm256_loadu_ps(dst + q),
                                              _mm256_mul_ps(wv, _mm256_loadu_ps(go + q))));
    }
  }
}
#endif

template <typename scalar_t>
inline void backward_pixel(const scalar_t* __restrict go, const scalar_t* v00,
                           const scalar_t* v01, const scalar_t* v10, const scalar_t* v11,
                           const Corners<scalar_t>& k, scalar_t* g00, scalar_t* g01,
                           scalar_t* g10, scalar_t* g11, int64_t c, scalar_t sums[2]) {
  scalar_t ax[kLanes] = {}, ay[kLanes] = {};
  const int64_t full = c - c % kLanes;
#ifdef DYSAMPLE_ISA_AVX2
  if constexpr (std::is_same<scalar_t, float>::value) {  // the same sums, lane j <- q % 8
    backward_pixel_avx2(go, v00, v01, v10, v11, k, g00, g01, g10, g11, full, ax, ay);
    sums_tail(go, v00, v01, v10, v11, k, g00, g01, g10, g11, full, c, ax, ay, sums);
    return;
  }
#endif
  for (int64_t ch = 0; ch < full; ch += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) {
      const int64_t q = ch + j;
      ax[j] += go[q] * (k.ey * (v01[q] - v00[q]) + k.fy * (v11[q] - v10[q]));
      ay[j] += go[q] * (k.ex * (v10[q] - v00[q]) + k.fx * (v11[q] - v01[q]));
    }
  }
  if (g00) {  // corners may coincide on the last row or column: one corner after the other
    for (int64_t q = 0; q < full; ++q) g00[q] += k.w00 * go[q];
    for (int64_t q = 0; q < full; ++q) g01[q] += k.w01 * go[q];
    for (int64_t q = 0; q < full; ++q) g10[q] += k.w10 * go[q];
    for (int64_t q = 0; q < full; ++q) g11[q] += k.w11 * go[q];
  }
  sums_tail(go, v00, v01, v10, v11, k, g00, g01, g10, g11, full, c, ax, ay, sums);
}

// Backward of all output rows of one image-group for s.c channels: x, grad_x [s.c, H, W]
// planes (grad_x null: no input gradient), grad_out [s.c, oH, oW], grid [2, oH, oW]; writes
// the grid gradient summed over these channels, part [2, oH, oW]. Input rows are held
// channels-last in ws (x and its gradient, same slots); a gradient row goes back to grad_x
// when its slot is reused, and is read again from there if needed later.
template <typename scalar_t>
void backward_rows(const scalar_t* x, const scalar_t* grad_out, const scalar_t* grid,
                   scalar_t* grad_x, scalar_t* part, const Shape& s,
                   BackwardWorkspace<scalar_t>& ws) {
  const int64_t plane = s.h * s.w, out_plane = s.oh * s.ow, row_size = s.w * s.c;
  std::fill(ws.tag.begin(), ws.tag.end(), -1);
  auto store = [&](int64_t slot) {
    if (grad_x && ws.tag[slot] >= 0) {
      transpose(ws.grad_rows.get() + slot * row_size, s.c, grad_x + ws.tag[slot] * s.w, plane,
                s.w, s.c, false);
    }
  };
  for (int64_t y = 0; y < s.oh; ++y) {
    const scalar_t* gx = grid + y * s.ow;
    int64_t r_min = s.h, r_max = -1;
    for (int64_t o = 0; o < s.ow; ++o) {
      ws.corners[o] = locate(gx[o], gx[out_plane + o], s.h, s.w);
      r_min = std::min(r_min, ws.corners[o].r0);
      r_max = std::max(r_max, ws.corners[o].r1);
    }
    if (r_max - r_min >= ws.slots) {
      for (int64_t slot = 0; slot < ws.slots; ++slot) store(slot);
      ws.hold(r_max - r_min + 1, s);
    }
    for (int64_t r = r_min; r <= r_max; ++r) {
      const int64_t slot = r % ws.slots;
      if (ws.tag[slot] == r) continue;
      store(slot);
      transpose(x + r * s.w, plane, ws.x_rows.get() + slot * row_size, s.c, s.c, s.w, true);
      if (grad_x) {
        transpose(grad_x + r * s.w, plane, ws.grad_rows.get() + slot * row_size, s.c, s.c, s.w,
                  true);
      }
      ws.tag[slot] = r;
    }
    transpose(grad_out + y * s.ow, out_plane, ws.grad_out_row.get(), s.c, s.c, s.ow, true);
    const scalar_t* xr = ws.x_rows.get();
    scalar_t* gr = ws.grad_rows.get();  // null without an input gradient
    for (int64_t o = 0; o < s.ow; ++o) {
      const Corners<scalar_t>& k = ws.corners[o];
      const int64_t top = (k.r0 % ws.slots) * row_size, bottom = (k.r1 % ws.slots) * row_size;
      const int64_t left = k.c0 * s.c, right = k.c1 * s.c;
      scalar_t sums[2];
      backward_pixel(ws.grad_out_row.get() + o * s.c, xr + top + left, xr + top + right,
                     xr + bottom + left, xr + bottom + right, k, gr ? gr + top + left : gr,
                     gr ? gr + top + right : gr, gr ? gr + bottom + left : gr,
                     gr ? gr + bottom + right : gr, s.c, sums);
      part[y * s.ow + o] = sums[0] * k.mx;
      part[out_plane + y * s.ow + o] = sums[1] * k.my;
    }
  }
  for (int64_t slot = 0; slot < ws.slots; ++slot) store(slot);
}

}  // namespace DYSAMPLE_ISA
}  // namespace dysample
