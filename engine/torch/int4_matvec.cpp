// One activation row times int4 group-quantized weight rows, with AVX-512 VNNI.
//
// Decode reads every weight once per token, so the product is bound by how fast the
// nibbles stream in. The kernel follows llama.cpp's CPU recipe for Q4_0 x Q8_0: the
// activation row is rounded to int8 in blocks of 64 (one float scale per block, llama.cpp
// uses 32; 64, the weight group, lets the two scales fold into one multiplier), and the
// weights are multiplied as integers (vpdpbusd: 64 unsigned 4-bit codes x 64 signed
// 8-bit activations -> 16 int32 sums per instruction), scaled in float32 once per 128 weights (two groups
// at once: the low nibbles' and the high nibbles' products land in the same int32 lanes).
// The Itamae layout (converters/formats/torch_quant.py): codes q in 0..15, nibble-packed low
// nibble first along `in`, w = (q - 8) * scale[group] + zero[group], scale and zero float16.
// So for one output row
//   y = sum_g scale_g * sum_{i in g} q_i xq_i  +  sum_g (zero_g X_g - 8 scale_g Xq_g),
// xq the int8-rounded x, Xq_g its sum over group g (so the -8 cancels exactly against the
// codes' offset), X_g the exact float sum of x over the group.
//
// Shapes: x [A, C] float32 (A = 1: one row for all; else one row per chosen matrix);
// q [N, R, C/2] uint8, scale / zero [N, R, C/group] float16 (inner two dims contiguous, any
// stride between the N matrices: stacked expert rows of the torch format); idx [K] int64,
// which of the N matrices to use -> [K, R] float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <optional>
#include <string>

namespace {

constexpr int kGroup = 64;   // the torch format's int4 group (converters' INT4_GROUP)
constexpr int kBlock = 128;  // weights per step: 64 bytes of nibbles, two groups
constexpr int kWindow = 16;  // groups whose scales sit in one register

// One row of x, quantized to int8 per group of 64 (one float scale each), laid out as the
// nibbles are: per block of 128, the 64 even elements (the low nibbles' partners), then
// the 64 odd ones. int32 lane l of a vpdpbusd over 64 such bytes sums elements 8l..8l+7 of
// the block (four even, or four odd), so lanes 0-7 belong to the block's first group and
// lanes 8-15 to its second, for the low and the high nibbles alike.
struct QuantizedRow {
  std::vector<int8_t> codes;
  std::vector<float> scale;  // per group
  std::vector<float> sum_q;  // per group: sum of the int8-rounded x, dequantized
  std::vector<float> sum_x;  // per group: sum of x
};

void quantize_row(const float* x, int64_t C, QuantizedRow& out) {
  const int64_t n_groups = C / kGroup;
  out.codes.resize(C);
  out.scale.resize(n_groups);
  out.sum_q.resize(n_groups);
  out.sum_x.resize(n_groups);
  for (int64_t g = 0; g < n_groups; ++g) {
    const float* xg = x + g * kGroup;
    float amax = 0.f, sum_x = 0.f;
    for (int i = 0; i < kGroup; ++i) amax = std::max(amax, std::abs(xg[i]));
    const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
    int sum_q = 0;
    int8_t* block = out.codes.data() + (g / 2) * kBlock;
    for (int i = 0; i < kGroup; ++i) {
      const int code = static_cast<int>(std::nearbyint(xg[i] * inv));
      const int e = (g % 2) * kGroup + i;  // element within the block of 128
      block[(e & 1) * 64 + e / 2] = static_cast<int8_t>(code);
      sum_q += code;
      sum_x += xg[i];
    }
    out.scale[g] = d;
    out.sum_q[g] = d * sum_q;
    out.sum_x[g] = sum_x;
  }
}

// How far ahead of the loads the codes are prefetched: four rows of the 1024-wide bench
// layers, and the scales and zeros kPrefetch / 8 ahead (the same rows). Read row by row, the
// nibbles are one sequential stream; the hardware prefetcher alone kept about 9 GB/s a core
// of it on Zen 4 (a plain read: 22), and the four rows a pass this kernel read before (each
// activation block loaded once for four, their loads interleaved 512 bytes apart) ran at 9
// even with prefetching. One row a pass with this prefetch reads at the plain read's speed;
// the activation blocks it reloads per row come from L1. On Zen 5 the head read in 1.86 ms
// without the prefetch, 1.66 at 1024 bytes, 1.60 at 2048 (best of 10, 2 threads).
constexpr int kPrefetch = 2048;  // bytes

// A window's 16 floats or float16 scales: the masked load only for a last, partial window.
// On Zen 5 (EPYC family 26) a masked load per window, as every window once took, kept the
// head at 2.2 ms against 1.6 unmasked (2 threads, tests/benchmarks/bench_int4_kernel.py).
inline __m512 load_ps(__mmask16 m, const float* p) {
  return m == 0xFFFF ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}
inline __m512 load_ph(__mmask16 m, const at::Half* p) {
  return _mm512_cvtph_ps(m == 0xFFFF ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                     : _mm256_maskz_loadu_epi16(m, p));
}

// One row r of one matrix: its product with x, into y[r].
void row_dot(const QuantizedRow& xr, const uint8_t* q, const at::Half* scale,
             const at::Half* zero, int64_t C, int64_t r, float* y) {
  const int64_t n_groups = C / kGroup;
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  // lane -> group within a window of 16 groups, for block b of the window: 2b x8, 2b+1 x8
  const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const uint8_t* codes = q + r * (C / 2);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t w0 = 0; w0 < n_groups; w0 += kWindow) {
    const int64_t nw = std::min<int64_t>(kWindow, n_groups - w0);
    const __mmask16 m = nw == kWindow ? 0xFFFF : (__mmask16)((1u << nw) - 1);
    const __m512 xd = load_ps(m, xr.scale.data() + w0);
    const __m512 sum_q8 = _mm512_mul_ps(load_ps(m, xr.sum_q.data() + w0), _mm512_set1_ps(8.f));
    const __m512 sum_x = load_ps(m, xr.sum_x.data() + w0);
    // the row's scales x x's, and its constant term
    const at::Half *sr = scale + r * n_groups + w0, *zr = zero + r * n_groups + w0;
    _mm_prefetch(reinterpret_cast<const char*>(sr) + kPrefetch / 8, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(zr) + kPrefetch / 8, _MM_HINT_T0);
    const __m512 s = load_ph(m, sr), z = load_ph(m, zr);
    acc = _mm512_fnmadd_ps(s, sum_q8, _mm512_fmadd_ps(z, sum_x, acc));
    const __m512 lane_scale = _mm512_mul_ps(s, xd);
#pragma GCC unroll 8
    for (int64_t b = 0; b < nw / 2; ++b) {
      const int64_t e0 = (w0 / 2 + b) * kBlock;  // first element of the block
      // past the matrix's end this touches the next rows or nothing: a prefetch never faults
      _mm_prefetch(reinterpret_cast<const char*>(codes + e0 / 2) + kPrefetch, _MM_HINT_T0);
      const __m512i packed = _mm512_loadu_si512(codes + e0 / 2);
      const __m512i lo = _mm512_and_si512(packed, low4);
      const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low4);
      __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xr.codes.data() + e0));
      dot = _mm512_dpbusd_epi32(dot, hi, _mm512_loadu_si512(xr.codes.data() + e0 + 64));
      const __m512i sel = _mm512_add_epi32(pick, _mm512_set1_epi32(2 * b));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(sel, lane_scale), acc);
    }
  }
  y[r] = _mm512_reduce_add_ps(acc);
}

at::Tensor int4_matvec(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scale,
                       const at::Tensor& zero, const at::Tensor& idx) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x: [A, C] float32");
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kByte, "q: [N, R, C/2] uint8");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == q.size(2), "q: rows must be contiguous");
  TORCH_CHECK(scale.scalar_type() == at::kHalf && zero.scalar_type() == at::kHalf, "float16 scales");
  TORCH_CHECK(scale.stride(2) == 1 && scale.stride(1) == scale.size(2), "scale: contiguous rows");
  TORCH_CHECK(zero.stride(2) == 1 && zero.stride(1) == zero.size(2), "zero: contiguous rows");
  TORCH_CHECK(idx.dim() == 1 && idx.scalar_type() == at::kLong, "idx: [K] int64");
  const int64_t C = x.size(1), R = q.size(1), K = idx.size(0), A = x.size(0);
  TORCH_CHECK(q.size(2) * 2 == C && C % kBlock == 0, "C must be a multiple of 128");
  TORCH_CHECK(scale.size(2) == C / kGroup && zero.size(2) == C / kGroup, "groups of 64");
  TORCH_CHECK(A == 1 || A == K, "x: one row, or one per chosen matrix");
  const auto idx_c = idx.contiguous();
  const int64_t* ids = idx_c.data_ptr<int64_t>();
  for (int64_t k = 0; k < K; ++k) TORCH_CHECK(ids[k] >= 0 && ids[k] < q.size(0), "idx out of range");
  std::vector<QuantizedRow> xr(A);
  for (int64_t a = 0; a < A; ++a) quantize_row(x.data_ptr<float>() + a * C, C, xr[a]);
  auto y = at::empty({K, R}, x.options());
  float* out = y.data_ptr<float>();
  const uint8_t* q0 = q.data_ptr<uint8_t>();
  const at::Half* s0 = scale.data_ptr<at::Half>();
  const at::Half* z0 = zero.data_ptr<at::Half>();
  // one parallel loop over all K x R output rows, in tiles of 16 rows (a few KiB of weights)
  constexpr int64_t kTile = 16;
  const int64_t tiles_per_matrix = (R + kTile - 1) / kTile;
  at::parallel_for(0, K * tiles_per_matrix, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t k = t / tiles_per_matrix, r0 = (t % tiles_per_matrix) * kTile;
      const int64_t e = ids[k];
      const uint8_t* qe = q0 + e * q.stride(0);
      const at::Half *se = s0 + e * scale.stride(0), *ze = z0 + e * zero.stride(0);
      for (int64_t r = r0; r < std::min(R, r0 + kTile); ++r)
        row_dot(xr[A == 1 ? 0 : k], qe, se, ze, C, r, out + k * R);
    }
  });
  return y;
}

// act(gate) * up with the very ATen operators layers.gated_activation runs for `act`, so an
// expert's output here is the bits of the eager path (and of the MoE block's, which calls
// this op too); an activation not listed is refused (int4_kernel.KERNEL_ACTS lists them).
at::Tensor gated(const at::Tensor& gate, const at::Tensor& up, c10::string_view act) {
  constexpr c10::string_view clamped = "clamped_silu:";  // + limit: DeepSeek-V4's experts
  if (act == "silu") return at::silu(gate) * up;
  if (act == "relu") return at::relu(gate) * up;
  if (act == "gelu") return at::gelu(gate) * up;
  if (act == "gelu_pytorch_tanh") return at::gelu(gate, "tanh") * up;
  if (act.substr(0, clamped.size()) == clamped) {
    const double limit = std::stod(std::string(act.substr(clamped.size())));
    return at::silu(at::clamp(gate, std::nullopt, limit)) * at::clamp(up, -limit, limit);
  }
  TORCH_CHECK(false, "int4 experts: no activation ", act, " in the kernel");
}

// Decode's K chosen experts for one row x [1, H]: gate/up for all K in one pass, the
// activation, then down for all K -> [K, H]. One operator, so the compiled decode step
// calls it inside its graph with no Python in between (compiled_step._moe).
at::Tensor int4_experts(const at::Tensor& x, const at::Tensor& gate_up_q,
                        const at::Tensor& gate_up_scale, const at::Tensor& gate_up_zero,
                        const at::Tensor& down_q, const at::Tensor& down_scale,
                        const at::Tensor& down_zero, const at::Tensor& idx,
                        c10::string_view act) {
  TORCH_CHECK(x.size(0) == 1, "int4 experts: one row");
  const auto gate_up = int4_matvec(x, gate_up_q, gate_up_scale, gate_up_zero, idx);  // [K, 2I]
  const int64_t inter = gate_up.size(1) / 2;
  const auto a = gated(gate_up.narrow(1, 0, inter), gate_up.narrow(1, inter, inter), act);
  return int4_matvec(a.contiguous(), down_q, down_scale, down_zero, idx);
}

}  // namespace

TORCH_LIBRARY(itamae_int4, m) {
  m.def("matvec(Tensor x, Tensor q, Tensor scale, Tensor zero, Tensor idx) -> Tensor");
  m.def("experts(Tensor x, Tensor gate_up_q, Tensor gate_up_scale, Tensor gate_up_zero, "
        "Tensor down_q, Tensor down_scale, Tensor down_zero, Tensor idx, str act) -> Tensor");
}

TORCH_LIBRARY_IMPL(itamae_int4, CPU, m) {
  m.impl("matvec", int4_matvec);
  m.impl("experts", int4_experts);
}
