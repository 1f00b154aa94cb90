// CPU attention for exact_kernels (see kernels/attention.py for the contract).
//
// Causal GQA attention, fp32 softmax and accumulation, output in the input dtype.
// One templated routine (`attend_row`) serves the packed-varlen prefill and the
// paged path; the two differ only in the key accessor that maps key j of a
// sequence to its address (packed buffer vs block table). So a query row gets the
// same arithmetic, in the same order, whichever path computes it:
//
//   s_j   = dot(q, k_j) * scale          j = 0..pos, dot in the fixed 8-lane order below
//   m     = max_j s_j                    (max is exact, order-free)
//   p_j   = exp(s_j - m);  l = sum_j p_j  in key order 0..pos
//   acc_d = sum_j p_j * v_j[d]           in key order 0..pos, per d
//   out_d = acc_d / l;  lse = m + log(l)
//
// dot(a, b): lane l (0..7) sums a[d]*b[d] over d = l, l+8, l+16, ... in increasing
// d; the 8 lanes then combine as ((0+1)+(2+3))+((4+5)+(6+7)). Fixed by D alone, and
// written so the compiler can vectorise it without changing it (no fast-math, no
// fp-contraction: see _cpu_build.py).
//
// Work is split by OpenMP over (token, head) rows; a row is computed by one thread
// start to finish, so the thread count never enters a reduction.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kLanes = 8;

inline float dot_fixed(const float* a, const float* b, int64_t D) {
  float acc[kLanes] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  for (int64_t d = 0; d < D; d += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = acc[l] + a[d + l] * b[d + l];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <typename T>
inline void to_float(const T* src, float* dst, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<float>(src[d]);
}

// Key j of a sequence stored contiguously in the packed [T, Hkv, D] buffers.
struct PackedKeys {
  int64_t start, k_stride_t, v_stride_t;
  int64_t k_off(int64_t j) const { return (start + j) * k_stride_t; }
  int64_t v_off(int64_t j) const { return (start + j) * v_stride_t; }
};

// Key j of a sequence read through its block-table row (vLLM flash layout
// [num_blocks, block_size, Hkv, D]).
struct PagedKeys {
  const int32_t* table;
  int64_t block_size, k_stride_b, k_stride_s, v_stride_b, v_stride_s;
  int64_t k_off(int64_t j) const {
    return static_cast<int64_t>(table[j / block_size]) * k_stride_b + (j % block_size) * k_stride_s;
  }
  int64_t v_off(int64_t j) const {
    return static_cast<int64_t>(table[j / block_size]) * v_stride_b + (j % block_size) * v_stride_s;
  }
};

// One query row against keys 0..pos. `kh`/`vh` point at the row's kv head in key 0's
// frame (accessor offsets are added). Scratch: kf[D], acc[D], p[pos + 1].
template <typename T, typename Keys>
inline void attend_row(const T* q_row, const T* kh, const T* vh, const Keys& keys, int64_t pos, int64_t D,
                       float scale, float* qf, float* kf, float* acc, float* p, T* out_row, float* lse) {
  to_float(q_row, qf, D);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j <= pos; ++j) {
    to_float(kh + keys.k_off(j), kf, D);
    const float s = dot_fixed(qf, kf, D) * scale;
    p[j] = s;
    m = std::max(m, s);
  }
  float l = 0.f;
  for (int64_t j = 0; j <= pos; ++j) {
    p[j] = std::exp(p[j] - m);
    l = l + p[j];
  }
  std::fill(acc, acc + D, 0.f);
  for (int64_t j = 0; j <= pos; ++j) {
    to_float(vh + keys.v_off(j), kf, D);
    const float pj = p[j];
    for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] + pj * kf[d];
  }
  for (int64_t d = 0; d < D; ++d) out_row[d] = static_cast<T>(acc[d] / l);
  if (lse) *lse = m + std::log(l);
}

// token -> sequence index for a cu_seqlens vector.
std::vector<int64_t> token_to_seq(const int32_t* cu, int64_t B) {
  std::vector<int64_t> seq(cu[B]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = cu[b]; t < cu[b + 1]; ++t) seq[t] = b;
  return seq;
}

template <typename T>
void varlen_fwd_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens,
                     double scale, at::Tensor& out, at::Tensor& lse) {
  const int64_t T_ = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1), G = Hq / Hkv;
  const int64_t B = cu_seqlens.size(0) - 1;
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  const auto seq = token_to_seq(cu, B);
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) max_len = std::max<int64_t>(max_len, cu[b + 1] - cu[b]);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  const int64_t sqt = q.stride(0), sqh = q.stride(1), skt = k.stride(0), skh = k.stride(1);
  const int64_t svt = v.stride(0), svh = v.stride(1), sot = out.stride(0), soh = out.stride(1);
  const float sc = static_cast<float>(scale);
#pragma omp parallel
  {
    std::vector<float> qf(D), kf(D), acc(D), p(std::max<int64_t>(max_len, 1));
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < T_ * Hq; ++r) {
      const int64_t t = r / Hq, h = r % Hq, b = seq[t], kvh = h / G;
      const PackedKeys keys{cu[b], skt, svt};
      attend_row<T>(qp + t * sqt + h * sqh, kp + kvh * skh, vp + kvh * svh, keys, t - cu[b], D, sc, qf.data(),
                    kf.data(), acc.data(), p.data(), op + t * sot + h * soh, lp + t * Hq + h);
    }
  }
}

template <typename T>
void paged_fwd_impl(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                    const at::Tensor& block_table, const at::Tensor& cu_seqlens_q, const at::Tensor& seq_lens,
                    double scale, at::Tensor& out) {
  const int64_t Tq = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k_cache.size(2), G = Hq / Hkv;
  const int64_t B = cu_seqlens_q.size(0) - 1, bs = k_cache.size(1);
  const int32_t* cu = cu_seqlens_q.data_ptr<int32_t>();
  const int32_t* sl = seq_lens.data_ptr<int32_t>();
  const int32_t* bt = block_table.data_ptr<int32_t>();
  const int64_t sbt = block_table.stride(0);
  const auto seq = token_to_seq(cu, B);
  int64_t max_len = 0;
  for (int64_t b = 0; b < B; ++b) max_len = std::max<int64_t>(max_len, sl[b]);
  const T* qp = q.data_ptr<T>();
  const T* kp = k_cache.data_ptr<T>();
  const T* vp = v_cache.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t sqt = q.stride(0), sqh = q.stride(1), sot = out.stride(0), soh = out.stride(1);
  const int64_t skb = k_cache.stride(0), sks = k_cache.stride(1), skh = k_cache.stride(2);
  const int64_t svb = v_cache.stride(0), svs = v_cache.stride(1), svh = v_cache.stride(2);
  const float sc = static_cast<float>(scale);
#pragma omp parallel
  {
    std::vector<float> qf(D), kf(D), acc(D), p(std::max<int64_t>(max_len, 1));
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < Tq * Hq; ++r) {
      const int64_t t = r / Hq, h = r % Hq, b = seq[t], kvh = h / G;
      const int64_t q_len = cu[b + 1] - cu[b];
      const int64_t pos = sl[b] - q_len + (t - cu[b]);
      const PagedKeys keys{bt + b * sbt, bs, skb, sks, svb, svs};
      attend_row<T>(qp + t * sqt + h * sqh, kp + kvh * skh, vp + kvh * svh, keys, pos, D, sc, qf.data(),
                    kf.data(), acc.data(), p.data(), op + t * sot + h * soh, nullptr);
    }
  }
}

// Backward of the varlen forward (FA2 math, recomputing P from the saved lse):
//   p_ij = exp(s_ij - lse_i), dp_ij = dot(do_i, v_j), ds_ij = p_ij * (dp_ij - delta_i),
//   delta_i = dot(o_i, do_i)
//   dq_i = scale * sum_{j<=i} ds_ij k_j          (key order 0..i)
//   dk_j = scale * sum_{h in group} sum_{i>=j} ds_ij q_i   (heads in order, then rows i = j..n-1)
//   dv_j = sum_{h in group} sum_{i>=j} p_ij do_i           (same order)
// Each output row is owned by one thread: no atomics, fixed order, so two runs give
// the same bits.
template <typename T>
void varlen_bwd_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens, double scale,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t T_ = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k.size(1), G = Hq / Hkv;
  const int64_t B = cu_seqlens.size(0) - 1;
  const int32_t* cu = cu_seqlens.data_ptr<int32_t>();
  const auto seq = token_to_seq(cu, B);
  // q, k, v, out, dout are contiguous [*, H, D] here (the Python side makes them so).
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const T* op = out.data_ptr<T>();
  const T* dop = dout.data_ptr<T>();
  const float* lp = lse.data_ptr<float>();
  T* dqp = dq.data_ptr<T>();
  T* dkp = dk.data_ptr<T>();
  T* dvp = dv.data_ptr<T>();
  const float sc = static_cast<float>(scale);
  std::vector<float> delta(T_ * Hq);
#pragma omp parallel
  {
    std::vector<float> a(D), b_(D);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < T_ * Hq; ++r) {
      to_float(op + r * D, a.data(), D);
      to_float(dop + r * D, b_.data(), D);
      delta[r] = dot_fixed(a.data(), b_.data(), D);
    }
  }
  // s_ij and p_ij for a (query row, key row) pair; both passes use this one function.
  auto prob = [&](const float* qf, const float* kf, float lse_i) {
    return std::exp(dot_fixed(qf, kf, D) * sc - lse_i);
  };
#pragma omp parallel
  {
    std::vector<float> qf(D), dof(D), kf(D), vf(D), acc(D);
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < T_ * Hq; ++r) {
      const int64_t t = r / Hq, h = r % Hq, b = seq[t], kvh = h / G;
      to_float(qp + r * D, qf.data(), D);
      to_float(dop + r * D, dof.data(), D);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = cu[b]; j <= t; ++j) {
        to_float(kp + (j * Hkv + kvh) * D, kf.data(), D);
        to_float(vp + (j * Hkv + kvh) * D, vf.data(), D);
        const float p = prob(qf.data(), kf.data(), lp[r]);
        const float ds = p * (dot_fixed(dof.data(), vf.data(), D) - delta[r]);
        for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] + ds * kf[d];
      }
      for (int64_t d = 0; d < D; ++d) dqp[r * D + d] = static_cast<T>(acc[d] * sc);
    }
  }
#pragma omp parallel
  {
    std::vector<float> qf(D), dof(D), kf(D), vf(D), dka(D), dva(D);
#pragma omp for schedule(dynamic, 8)
    for (int64_t r = 0; r < T_ * Hkv; ++r) {
      const int64_t j = r / Hkv, kvh = r % Hkv, b = seq[j];
      to_float(kp + r * D, kf.data(), D);
      to_float(vp + r * D, vf.data(), D);
      std::fill(dka.begin(), dka.end(), 0.f);
      std::fill(dva.begin(), dva.end(), 0.f);
      for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
        for (int64_t i = j; i < cu[b + 1]; ++i) {
          const int64_t qi = i * Hq + h;
          to_float(qp + qi * D, qf.data(), D);
          to_float(dop + qi * D, dof.data(), D);
          const float p = prob(qf.data(), kf.data(), lp[qi]);
          const float ds = p * (dot_fixed(dof.data(), vf.data(), D) - delta[qi]);
          for (int64_t d = 0; d < D; ++d) {
            dva[d] = dva[d] + p * dof[d];
            dka[d] = dka[d] + ds * qf[d];
          }
        }
      }
      for (int64_t d = 0; d < D; ++d) {
        dkp[r * D + d] = static_cast<T>(dka[d] * sc);
        dvp[r * D + d] = static_cast<T>(dva[d]);
      }
    }
  }
}

void check_common(const at::Tensor& q, int64_t D) {
  TORCH_CHECK(q.device().is_cpu(), "attn: CPU op got a non-CPU tensor");
  TORCH_CHECK(D % kLanes == 0, "attn: head_dim must be a multiple of 8");
}

std::tuple<at::Tensor, at::Tensor> attn_varlen_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                   const at::Tensor& cu_seqlens, double scale) {
  check_common(q, q.size(2));
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({q.size(0), q.size(1)}, q.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attn_varlen_fwd", [&] {
    varlen_fwd_impl<scalar_t>(q, k, v, cu_seqlens, scale, out, lse);
  });
  return {out, lse};
}

at::Tensor attn_paged_fwd(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                          const at::Tensor& block_table, const at::Tensor& cu_seqlens_q, const at::Tensor& seq_lens,
                          double scale) {
  check_common(q, q.size(2));
  auto out = at::empty(q.sizes(), q.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attn_paged_fwd", [&] {
    paged_fwd_impl<scalar_t>(q, k_cache, v_cache, block_table, cu_seqlens_q, seq_lens, scale, out);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attn_varlen_bwd(const at::Tensor& dout, const at::Tensor& q,
                                                               const at::Tensor& k, const at::Tensor& v,
                                                               const at::Tensor& out, const at::Tensor& lse,
                                                               const at::Tensor& cu_seqlens, double scale) {
  check_common(q, q.size(2));
  auto dq = at::empty(q.sizes(), q.options());
  auto dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  auto dout_c = dout.contiguous(), q_c = q.contiguous(), k_c = k.contiguous(), v_c = v.contiguous();
  auto out_c = out.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "attn_varlen_bwd", [&] {
    varlen_bwd_impl<scalar_t>(dout_c, q_c, k_c, v_c, out_c, lse, cu_seqlens, scale, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(exact_kernels, m) {
  m.def("attn_varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, float scale) -> (Tensor, Tensor)");
  m.def(
      "attn_paged_fwd(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor cu_seqlens_q, "
      "Tensor seq_lens, float scale) -> Tensor");
  m.def(
      "attn_varlen_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_seqlens, "
      "float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(exact_kernels, CPU, m) {
  m.impl("attn_varlen_fwd", &attn_varlen_fwd);
  m.impl("attn_paged_fwd", &attn_paged_fwd);
  m.impl("attn_varlen_bwd", &attn_varlen_bwd);
}
