// The forward kernel's row loop. sample_forward_cpu.cpp includes this file twice: as it is
// (namespace dysample::portable) and under GCC's target("avx2") (dysample::avx2), where the
// channel loops compile to 8-wide vectors. Same arithmetic, same results, in both.
namespace dysample {
namespace DYSAMPLE_ISA {

#ifdef DYSAMPLE_ISA_AVX2
// dst[j * ld_dst + i] = src[i * ld_src + j] for an 8 x 8 block of floats.
inline void transpose8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m256 r[8], t[8];
  for (int k = 0; k < 8; ++k) r[k] = _mm256_loadu_ps(src + k * ld_src);
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
  }
  // r: columns (j, j + 4) of rows 0-3 (r[0..3]) and of rows 4-7 (r[4..7])
  for (int half = 0; half < 8; half += 4) {
    r[half + 0] = _mm256_shuffle_ps(t[half], t[half + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[half + 1] = _mm256_shuffle_ps(t[half], t[half + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[half + 2] = _mm256_shuffle_ps(t[half + 1], t[half + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[half + 3] = _mm256_shuffle_ps(t[half + 1], t[half + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int k = 0; k < 4; ++k) {
    _mm256_storeu_ps(dst + k * ld_dst, _mm256_permute2f128_ps(r[k], r[k + 4], 0x20));
    _mm256_storeu_ps(dst + (k + 4) * ld_dst, _mm256_permute2f128_ps(r[k], r[k + 4], 0x31));
  }
}
#endif

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols, in 8 x 8 blocks; the blocks
// in the order that walks along the rows of src (`along_src`) or of dst, whichever is in memory.
template <typename scalar_t>
void transpose(const scalar_t* src, int64_t ld_src, scalar_t* dst, int64_t ld_dst, int64_t rows,
               int64_t cols, bool along_src) {
  const int64_t row_blocks = (rows + 7) / 8, col_blocks = (cols + 7) / 8;
  for (int64_t outer = 0; outer < (along_src ? row_blocks : col_blocks); ++outer) {
    for (int64_t inner = 0; inner < (along_src ? col_blocks : row_blocks); ++inner) {
      const int64_t i0 = 8 * (along_src ? outer : inner), j0 = 8 * (along_src ? inner : outer);
      const int64_t i1 = std::min(rows, i0 + 8), j1 = std::min(cols, j0 + 8);
#ifdef DYSAMPLE_ISA_AVX2
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (i1 - i0 == 8 && j1 - j0 == 8) {
          transpose8x8(src + i0 * ld_src + j0, ld_src, dst + j0 * ld_dst + i0, ld_dst);
          continue;
        }
      }
#endif
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
      }
    }
  }
}

// out[k] = bilinear blend of four channel vectors, for k < c.
template <typename scalar_t>
inline void blend(const scalar_t* __restrict p00, const scalar_t* __restrict p01,
                  const scalar_t* __restrict p10, const scalar_t* __restrict p11,
                  const Pixel<scalar_t>& p, scalar_t* __restrict out, int64_t c) {
  const scalar_t w00 = p.w00, w01 = p.w01, w10 = p.w10, w11 = p.w11;
  for (int64_t k = 0; k < c; ++k) out[k] = p00[k] * w00 + p01[k] * w01 + p10[k] * w10 + p11[k] * w11;
}

// Output rows [y0, y1) of image-group n: x [C, H, W], out [C, oH, oW].
template <typename scalar_t>
void sample_rows(const scalar_t* x, const GridSource<scalar_t>& source, int64_t n, scalar_t* out,
                 const Shape& s, int64_t y0, int64_t y1, RowsWorkspace<scalar_t>& ws) {
  const int64_t plane = s.h * s.w, out_plane = s.oh * s.ow, row_size = s.w * s.c;
  std::fill(ws.tag.begin(), ws.tag.end(), -1);  // another image-group: no row held
  for (int64_t y = y0; y < y1; ++y) {
    const scalar_t* gx = source.row(n, y, s, ws.grid_row.data());
    int64_t r_min = s.h, r_max = -1;
    for (int64_t o = 0; o < s.ow; ++o) {
      ws.pixels[o] = pixel(locate(gx[o], gx[s.ow + o], s.h, s.w));
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
      const Pixel<scalar_t>& p = ws.pixels[o];
      const scalar_t* top = rows + (p.r0 % ws.slots) * row_size;
      const scalar_t* bottom = rows + (p.r1 % ws.slots) * row_size;
      blend(top + p.c0 * s.c, top + p.c1 * s.c, bottom + p.c0 * s.c, bottom + p.c1 * s.c, p,
            blended + o * s.c, s.c);
    }
    // channel by channel, each written along its output row
    transpose(blended, s.c, out + y * s.ow, out_plane, s.ow, s.c, false);
  }
}

}  // namespace DYSAMPLE_ISA
}  // namespace dysample
