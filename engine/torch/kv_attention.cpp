// Decode attention's two products over a bf16 KV cache, read in its own dtype.
//
// One query token against S cached positions is two matrix-vector products per KV head
// (the G query heads that share it as rows): scores = q K^T and out = p V. Both are bound by
// how fast K and V stream in, so the cache is read once, as bf16, and each row is widened
// to float32 in registers (bf16 is the high half of a float32: a 16-bit shift), with
// float32 products and sums. torch's library paths either copy the whole cache to float32
// first (twice the bytes written, then read again) or round the scores to bf16 (oneDNN's
// bf16 matmul), which costs accuracy where the logits are large.
//
// scores: q [H, G, D] float32 (contiguous), k [H, S, D] bf16 (rows contiguous, any stride
//         between rows and heads: a view of the cache's buffer) -> [H, G, S] float32.
// mix:    p [H, G, S] float32 (last dim contiguous), v [H, S, D] bf16 (as k) -> [H, G, D].
// D must be a multiple of 16 (one AVX-512 register of floats).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

namespace {

constexpr int64_t kChunk = 256;  // positions per task: a few KiB of K or V per head

inline __m512 widen(const at::BFloat16* x) {  // 16 bf16 -> 16 float32
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

void check_cache(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3 && t.scalar_type() == at::kBFloat16, name, ": [H, S, D] bf16");
  TORCH_CHECK(t.stride(2) == 1 && t.size(2) % 16 == 0, name, ": contiguous rows, D % 16 == 0");
}

// Four 16-lane partial sums -> their four totals (one horizontal reduction for four dot
// products instead of one each: the reductions, not the loads, bounded the first version).
inline __m128 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  auto halves = [](__m512 a) {
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    return _mm256_add_ps(_mm512_castps512_ps256(a), hi);
  };
  const __m256 d = _mm256_hadd_ps(_mm256_hadd_ps(halves(a0), halves(a1)),
                                  _mm256_hadd_ps(halves(a2), halves(a3)));
  return _mm_add_ps(_mm256_castps256_ps128(d), _mm256_extractf128_ps(d, 1));
}

constexpr int64_t kMaxD = 512;  // head dims up to this: four widened rows on the stack

// The positions to read: all S, or the first `valid` (a 0-d int64 tensor: the compiled
// step passes the cache's whole buffers, whose capacity grows 256 positions at a time, with
// the count of positions that hold keys; the caller masks the rest).
int64_t positions(const c10::optional<at::Tensor>& valid, int64_t S) {
  if (!valid.has_value()) return S;
  TORCH_CHECK(valid->numel() == 1 && valid->scalar_type() == at::kLong, "valid: one int64");
  return std::max<int64_t>(0, std::min<int64_t>(S, valid->item<int64_t>()));
}

at::Tensor scores(const at::Tensor& q_in, const at::Tensor& k,
                  const c10::optional<at::Tensor>& valid) {
  check_cache(k, "k");
  TORCH_CHECK(q_in.dim() == 3 && q_in.scalar_type() == at::kFloat, "q: [H, G, D] float32");
  const int64_t H = k.size(0), S = k.size(1), D = k.size(2), G = q_in.size(1);
  TORCH_CHECK(q_in.size(0) == H && q_in.size(2) == D, "q and k: heads and head dim differ");
  TORCH_CHECK(D <= kMaxD, "head dim over ", kMaxD);
  const auto q = q_in.contiguous();
  const int64_t n_valid = positions(valid, S);
  auto out = at::empty({H, G, S}, q.options());
  if (n_valid < S) out.narrow(2, n_valid, S - n_valid).zero_();  // not read: the caller masks them
  const float* q0 = q.data_ptr<float>();
  const at::BFloat16* k0 = k.data_ptr<at::BFloat16>();
  float* o0 = out.data_ptr<float>();
  const int64_t chunks = (n_valid + kChunk - 1) / kChunk, blocks = D / 16;
  at::parallel_for(0, H * chunks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float rows[4 * kMaxD];  // four positions' keys, widened once for the G queries
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t / chunks, s0 = (t % chunks) * kChunk, s1 = std::min(n_valid, s0 + kChunk);
      const float* qh = q0 + h * G * D;
      for (int64_t s = s0; s < s1; s += 4) {
        const int64_t n = std::min<int64_t>(4, s1 - s);
        for (int64_t j = 0; j < 4; ++j) {
          const at::BFloat16* row = k0 + h * k.stride(0) + (s + std::min(j, n - 1)) * k.stride(1);
          for (int64_t b = 0; b < blocks; ++b) _mm512_store_ps(rows + j * D + 16 * b, widen(row + 16 * b));
        }
        for (int64_t g = 0; g < G; ++g) {
          __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                           _mm512_setzero_ps()};
          for (int64_t b = 0; b < blocks; ++b) {
            const __m512 qb = _mm512_loadu_ps(qh + g * D + 16 * b);
            for (int j = 0; j < 4; ++j)
              acc[j] = _mm512_fmadd_ps(qb, _mm512_load_ps(rows + j * D + 16 * b), acc[j]);
          }
          const __m128 total = reduce4(acc[0], acc[1], acc[2], acc[3]);
          float* dst = o0 + (h * G + g) * S + s;
          if (n == 4) {
            _mm_storeu_ps(dst, total);
          } else {
            alignas(16) float tail[4];
            _mm_store_ps(tail, total);
            for (int64_t j = 0; j < n; ++j) dst[j] = tail[j];
          }
        }
      }
    }
  });
  return out;
}

// NB register blocks of 16 output columns of one query row g over positions [s0, s1): the
// accumulators stay in registers (a template), the chunk of V rows in L1 across the rows.
template <int NB>
void mix_columns(const float* p, const at::BFloat16* v, int64_t row_stride, int64_t s0,
                 int64_t s1, float* out) {
  __m512 acc[NB];
  for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_ps();
  for (int64_t s = s0; s < s1; ++s) {
    const __m512 w = _mm512_set1_ps(p[s]);
    const at::BFloat16* row = v + s * row_stride;
    for (int b = 0; b < NB; ++b) acc[b] = _mm512_fmadd_ps(w, widen(row + 16 * b), acc[b]);
  }
  for (int b = 0; b < NB; ++b) _mm512_storeu_ps(out + 16 * b, acc[b]);
}

// Positions from `valid` on are skipped: their probabilities are 0 (masked), so the sums
// are those over all S.
at::Tensor mix(const at::Tensor& p_in, const at::Tensor& v, const c10::optional<at::Tensor>& valid) {
  check_cache(v, "v");
  TORCH_CHECK(p_in.dim() == 3 && p_in.scalar_type() == at::kFloat, "p: [H, G, S] float32");
  const int64_t H = v.size(0), S = v.size(1), D = v.size(2), G = p_in.size(1);
  TORCH_CHECK(p_in.size(0) == H && p_in.size(2) == S, "p and v: heads or positions differ");
  const auto p = p_in.stride(2) == 1 ? p_in : p_in.contiguous();
  const int64_t n_valid = positions(valid, S);
  if (n_valid == 0) return at::zeros({H, G, D}, p.options());
  const int64_t chunks = (n_valid + kChunk - 1) / kChunk;
  // each task sums its chunk of positions into a partial [G, D] of its own; the partials
  // are added in chunk order afterwards, so the result does not depend on the threads
  auto partial = at::empty({H, chunks, G, D}, p.options());
  const float* p0 = p.data_ptr<float>();
  const at::BFloat16* v0 = v.data_ptr<at::BFloat16>();
  float* part0 = partial.data_ptr<float>();
  at::parallel_for(0, H * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t / chunks, s0 = (t % chunks) * kChunk, s1 = std::min(n_valid, s0 + kChunk);
      const at::BFloat16* vh = v0 + h * v.stride(0);
      for (int64_t g = 0; g < G; ++g) {
        const float* pg = p0 + h * p.stride(0) + g * p.stride(1);
        float* dst = part0 + (t * G + g) * D;
        int64_t d = 0;
        for (; d + 64 <= D; d += 64) mix_columns<4>(pg, vh + d, v.stride(1), s0, s1, dst + d);
        for (; d < D; d += 16) mix_columns<1>(pg, vh + d, v.stride(1), s0, s1, dst + d);
      }
    }
  });
  return partial.sum(1);
}

}  // namespace

TORCH_LIBRARY(itamae_attn, m) {
  m.def("scores(Tensor q, Tensor k, Tensor? valid=None) -> Tensor");
  m.def("mix(Tensor p, Tensor v, Tensor? valid=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(itamae_attn, CPU, m) {
  m.impl("scores", scores);
  m.impl("mix", mix);
}
