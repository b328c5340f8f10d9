// Blocked transposes between planar rows and channels-last rows, for both kernels; compiled
// twice by isa_builds.h (dysample::portable, and dysample::avx2 with 8 x 8 float blocks in
// AVX2 registers).
namespace dysample {
namespace DYSAMPLE_ISA {

#ifdef DYSAMPLE_ISA_AVX2
// dst[j * ld_dst + i] = src[i * ld_src + j] (+= with `accumulate`) for an 8 x 8 block of floats.
inline void transpose8x8(const float* src, int64_t ld_src, float* dst, int64_t ld_dst,
                         bool accumulate) {
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
    __m256 lo = _mm256_permute2f128_ps(r[k], r[k + 4], 0x20);
    __m256 hi = _mm256_permute2f128_ps(r[k], r[k + 4], 0x31);
    if (accumulate) {
      lo = _mm256_add_ps(_mm256_loadu_ps(dst + k * ld_dst), lo);
      hi = _mm256_add_ps(_mm256_loadu_ps(dst + (k + 4) * ld_dst), hi);
    }
    _mm256_storeu_ps(dst + k * ld_dst, lo);
    _mm256_storeu_ps(dst + (k + 4) * ld_dst, hi);
  }
}
#endif

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols, in 8 x 8 blocks; the blocks
// in the order that walks along the rows of src (`along_src`) or of dst, whichever is in memory.
// `accumulate`: dst[...] = dst[...] + src[...] instead.
template <typename scalar_t>
void transpose(const scalar_t* src, int64_t ld_src, scalar_t* dst, int64_t ld_dst, int64_t rows,
               int64_t cols, bool along_src, bool accumulate = false) {
  const int64_t row_blocks = (rows + 7) / 8, col_blocks = (cols + 7) / 8;
  for (int64_t outer = 0; outer < (along_src ? row_blocks : col_blocks); ++outer) {
    for (int64_t inner = 0; inner < (along_src ? col_blocks : row_blocks); ++inner) {
      const int64_t i0 = 8 * (along_src ? outer : inner), j0 = 8 * (along_src ? inner : outer);
      const int64_t i1 = std::min(rows, i0 + 8), j1 = std::min(cols, j0 + 8);
#ifdef DYSAMPLE_ISA_AVX2
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (i1 - i0 == 8 && j1 - j0 == 8) {
          transpose8x8(src + i0 * ld_src + j0, ld_src, dst + j0 * ld_dst + i0, ld_dst, accumulate);
          continue;
        }
      }
#endif
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) {
          const scalar_t v = src[i * ld_src + j];
          dst[j * ld_dst + i] = accumulate ? dst[j * ld_dst + i] + v : v;
        }
      }
    }
  }
}

}  // namespace DYSAMPLE_ISA
}  // namespace dysample
