// One activation row times int8 per-row-scaled weight rows, with AVX-512 VNNI.
//
// Decode reads every weight once per token, so the product is bound by how fast the weight
// bytes stream in. The kernel follows llama.cpp's CPU recipe for Q8_0 x Q8_0: the activation
// row is rounded to int8 in blocks of 64 (one float scale per block; llama.cpp uses 32, 64 is
// one 512-bit register of codes), the products are summed as integers, and each block's sum
// is scaled in float32 once. The torch format's int8_row layout (converters/formats/
// torch_quant.py): w[r, i] = q[r, i] * scale[r], q int8 in -127..127, scale float32. So
//   y_r = scale_r * sum_b d_b * sum_{i in b} q_ri xq_i,   xq the rounded x, d_b its scales.
//
// vpdpbusd multiplies unsigned by signed bytes. The signed x signed product is made exact
// by moving the weight's sign onto the activation: |q| is a valid unsigned byte (also for
// -128, whose absolute value 128 fits in u8), and -xq is a valid signed byte (xq is rounded
// to -127..127), so |q| * (sign(q) xq) = q xq for every byte, with no correction term (the
// +128 offset trick would need the weight rows' sums, per block: a second pass or a copy).
//
// Shapes: x [A, C] float32 (A = 1: one row for all; else one row per chosen matrix);
// q [N, R, C] int8, scale [N, R] float32 (rows contiguous, any stride between the N
// matrices: stacked expert rows of the torch format); idx [K] int64, which of the N matrices
// to use -> [K, R] float32. C need not be a multiple of 64 (the last block is masked).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

namespace {

constexpr int kBlock = 64;  // activation codes per scale: one register

// One row of x rounded to int8 per block of 64, zero-padded to whole blocks.
struct QuantizedRow {
  std::vector<int8_t> codes;
  std::vector<float> scale;  // per block
};

void quantize_row(const float* x, int64_t C, QuantizedRow& out) {
  const int64_t n_blocks = (C + kBlock - 1) / kBlock;
  out.codes.assign(n_blocks * kBlock, 0);
  out.scale.resize(n_blocks);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const float* xb = x + b * kBlock;
    const int64_t n = std::min<int64_t>(kBlock, C - b * kBlock);
    float amax = 0.f;
    for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::abs(xb[i]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int64_t i = 0; i < n; ++i)
      out.codes[b * kBlock + i] = static_cast<int8_t>(std::nearbyint(xb[i] * inv));
    out.scale[b] = amax / 127.f;
  }
}

// One output row. Rows go one at a time, each read front to back: the weights then stream
// through memory in order, which the hardware prefetchers follow. Four rows interleaved (as
// int4_matvec.cpp does, to load each activation block once for four) ran at 0.4x here, 10 GB/s
// a core against 25 (the 151,936 x 1024 head, one thread); the activation codes are read from
// L1 instead. A row's sum runs through the same instructions whichever tile or thread it falls
// in: an output's bits depend on its own row and x only.
//
// The weights are prefetched in software, kPrefetch bytes ahead, and loaded unmasked where a
// block is whole: on Zen 5 (EPYC family 26) the masked byte load every block once took kept
// the hardware prefetcher idle, and the head read at 16 GB/s against 48 with either change
// (bench_int8_kernel.py, 2 threads; Zen 4 streamed the masked loads at full speed).
constexpr int kPrefetch = 2048;  // bytes: two rows of the 1024-wide bench layers

float row_dot(const QuantizedRow& xr, const int8_t* q, int64_t C) {
  const int64_t n_blocks = static_cast<int64_t>(xr.scale.size());
  const __m512i zero = _mm512_setzero_si512();
  __m512 acc = _mm512_setzero_ps();
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t rest = C - b * kBlock;
    const __m512i xq = _mm512_loadu_si512(xr.codes.data() + b * kBlock);
    // past the matrix's end this touches the next rows or nothing: a prefetch never faults
    _mm_prefetch(reinterpret_cast<const char*>(q + b * kBlock) + kPrefetch, _MM_HINT_T0);
    const __m512i w = rest >= kBlock ? _mm512_loadu_si512(q + b * kBlock)
                                     : _mm512_maskz_loadu_epi8((1ULL << rest) - 1, q + b * kBlock);
    const __mmask64 negative = _mm512_movepi8_mask(w);
    const __m512i xs = _mm512_mask_sub_epi8(xq, negative, zero, xq);  // sign(q) * xq
    const __m512i dot = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(w), xs);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(xr.scale[b]), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

at::Tensor int8_matvec(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const at::Tensor& idx) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: [A, C] float32");
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kChar, "q: [N, R, C] int8");
  TORCH_CHECK(q.stride(2) == 1 && (q.size(1) <= 1 || q.stride(1) == q.size(2)), "q: rows must be contiguous");
  TORCH_CHECK(scale.dim() == 2 && scale.scalar_type() == at::kFloat, "scale: [N, R] float32");
  TORCH_CHECK(scale.size(0) == q.size(0) && scale.size(1) == q.size(1), "scale: one per row");
  TORCH_CHECK(scale.size(1) <= 1 || scale.stride(1) == 1, "scale: contiguous rows");
  TORCH_CHECK(idx.dim() == 1 && idx.scalar_type() == at::kLong, "idx: [K] int64");
  const int64_t C = x.size(1), R = q.size(1), K = idx.size(0), A = x.size(0);
  TORCH_CHECK(q.size(2) == C, "q: C columns, as x");
  TORCH_CHECK(A == 1 || A == K, "x: one row, or one per chosen matrix");
  const auto idx_c = idx.contiguous();
  const int64_t* ids = idx_c.data_ptr<int64_t>();
  for (int64_t k = 0; k < K; ++k) TORCH_CHECK(ids[k] >= 0 && ids[k] < q.size(0), "idx out of range");
  std::vector<QuantizedRow> xr(A);
  for (int64_t a = 0; a < A; ++a) quantize_row(x.data_ptr<float>() + a * C, C, xr[a]);
  auto y = at::empty({K, R}, x.options());
  if (K == 0 || R == 0) return y;
  float* out = y.data_ptr<float>();
  const int8_t* q0 = q.data_ptr<int8_t>();
  const float* s0 = scale.data_ptr<float>();
  // one parallel loop over all K x R output rows, in tiles of 16 rows (16 KiB at C = 1024)
  constexpr int64_t kTile = 16;
  const int64_t tiles_per_matrix = (R + kTile - 1) / kTile;
  at::parallel_for(0, K * tiles_per_matrix, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k = t / tiles_per_matrix, r0 = (t % tiles_per_matrix) * kTile;
      const int64_t e = ids[k];
      const QuantizedRow& row = xr[A == 1 ? 0 : k];
      const int8_t* qe = q0 + e * q.stride(0);
      const float* se = s0 + e * scale.stride(0);
      for (int64_t r = r0; r < std::min(R, r0 + kTile); ++r) out[k * R + r] = row_dot(row, qe + r * C, C) * se[r];
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(itamae_int8, m) {
  m.def("matvec(Tensor x, Tensor q, Tensor scale, Tensor idx) -> Tensor");
}

TORCH_LIBRARY_IMPL(itamae_int8, CPU, m) { m.impl("matvec", int8_matvec); }
