// Row-wise CPU kernels of exact_kernels: RMSNorm, SiLU-and-mul, rotary, log-softmax /
// token logprobs, row mean. Python wrappers (and the math) live in rms_norm.py,
// activation.py, rotary.py and logprobs.py; the wrappers validate every input, so
// these functions assume contiguous tensors of the right shapes and dtypes.
//
// Why the bits of a row do not depend on the batch:
// * one row is computed by one thread, start to end; rows are split over threads by
//   OpenMP (parallel_for below), which changes who computes a row, never how;
// * every reduction over a row uses kLanes (16) accumulator lanes: element j goes to
//   lane j % 16, lanes run in element order, and the lanes are combined by a fixed
//   pairwise tree (lane_sum). The order depends only on the row length. The lanes are
//   independent, so the compiler vectorises them without reassociating anything
//   (-ffp-contract=off, no fast-math);
// * exp is exp_fixed below: plain IEEE +, *, and bit operations, so the vectorised
//   loop body and a scalar tail give the same bits, and the result does not depend on
//   the libm version of the machine.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kLanes = 16;

template <typename T>
inline float ld(const T* p, int64_t i) { return static_cast<float>(p[i]); }

// Round an fp32 value to T (round-to-nearest-even, as torch's .to(dtype)) and back.
template <typename T>
inline float round_to(float v) { return static_cast<float>(static_cast<T>(v)); }

// sum_{j<n} term(j): lane j % kLanes, lanes in element order, then a pairwise tree.
template <typename F>
inline float lane_sum(int64_t n, F&& term) {
  float acc[kLanes] = {0.f};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += term(i + j);
  for (int j = 0; i + j < n; ++j) acc[j] += term(i + j);
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

// exp(x) for fp32, about 1 ulp (Cephes expf polynomial), no fma, no libm.
// Inputs are clamped to [-87.33, 88]: exp(-inf) gives 2^-126 instead of 0, which adds
// nothing visible to a sum of exponentials whose largest term is 1.
inline float exp_fixed(float x) {
  x = std::min(88.0f, std::max(-87.33654f, x));
  const float shift = 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
  float k = (x * 1.44269504088896341f + shift) - shift;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * (r * r) + r) + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

template <typename F>
void dispatch_float(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "exact_kernels rows: unsupported dtype ", t);
  }
}

// Splits [0, n) into chunks of `grain` rows spread over OpenMP threads (torch's thread
// count). Which thread computes a row never changes how the row is computed.
template <typename F>
void parallel_for(int64_t n, int64_t grain, F&& f) {
  if (n <= grain) {
    if (n > 0) f(0, n);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < n; b += grain) f(b, std::min(n, b + grain));
}

inline int64_t grain_rows(int64_t row_len) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row_len, 1)); }

// ---------------------------------------------------------------- RMSNorm
// y = TO(w * float(TX(x * rstd))), rstd = 1 / sqrt(sum(x^2) / H + eps).
void rms_norm_fwd(const at::Tensor& x, const at::Tensor& w, double eps, at::Tensor& out, at::Tensor& rstd) {
  const int64_t R = x.size(0), H = x.size(1);
  const float epsf = static_cast<float>(eps);
  float* rs = rstd.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tx) {
    using TX = decltype(tx);
    dispatch_float(w.scalar_type(), [&](auto tw) {
      using TW = decltype(tw);
      dispatch_float(out.scalar_type(), [&](auto to) {
        using TO = decltype(to);
        const TX* xp = x.data_ptr<TX>();
        const TW* wp = w.data_ptr<TW>();
        TO* op = out.data_ptr<TO>();
        parallel_for(R, grain_rows(H), [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r) {
            const TX* xr = xp + r * H;
            float ss = lane_sum(H, [&](int64_t j) { float v = ld(xr, j); return v * v; });
            float inv = 1.0f / std::sqrt(ss / static_cast<float>(H) + epsf);
            rs[r] = inv;
            TO* yr = op + r * H;
            for (int64_t j = 0; j < H; ++j) yr[j] = static_cast<TO>(ld(wp, j) * round_to<TX>(ld(xr, j) * inv));
          }
        });
      });
    });
  });
}

// dx = rstd * gn - x * (rstd^3 * sum(gn * x) / H), gn = g * w;  dw = sum_rows g * TX(x * rstd)
// (rows in order 0..R-1 for every column; columns split over threads).
void rms_norm_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& rstd,
                  at::Tensor& dx, at::Tensor& dw) {
  const int64_t R = x.size(0), H = x.size(1);
  const float* rs = rstd.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tx) {
    using TX = decltype(tx);
    dispatch_float(w.scalar_type(), [&](auto tw) {
      using TW = decltype(tw);
      dispatch_float(g.scalar_type(), [&](auto tg) {
        using TG = decltype(tg);
        const TX* xp = x.data_ptr<TX>();
        const TW* wp = w.data_ptr<TW>();
        const TG* gp = g.data_ptr<TG>();
        TX* dxp = dx.data_ptr<TX>();
        TW* dwp = dw.data_ptr<TW>();
        const float Hf = static_cast<float>(H);
        parallel_for(R, grain_rows(H), [&](int64_t b, int64_t e) {
          for (int64_t r = b; r < e; ++r) {
            const TX* xr = xp + r * H;
            const TG* gr = gp + r * H;
            const float inv = rs[r];
            float dot = lane_sum(H, [&](int64_t j) { return (ld(gr, j) * ld(wp, j)) * ld(xr, j); });
            float c = ((inv * inv) * inv) * dot / Hf;
            TX* dr = dxp + r * H;
            for (int64_t j = 0; j < H; ++j) dr[j] = static_cast<TX>(inv * (ld(gr, j) * ld(wp, j)) - ld(xr, j) * c);
          }
        });
        parallel_for(H, 256, [&](int64_t b, int64_t e) {
          std::vector<float> acc(e - b, 0.f);
          for (int64_t r = 0; r < R; ++r) {
            const TX* xr = xp + r * H;
            const TG* gr = gp + r * H;
            const float inv = rs[r];
            for (int64_t j = b; j < e; ++j) acc[j - b] += ld(gr, j) * round_to<TX>(ld(xr, j) * inv);
          }
          for (int64_t j = b; j < e; ++j) dwp[j] = static_cast<TW>(acc[j - b]);
        });
      });
    });
  });
}

// ---------------------------------------------------------------- SiLU and mul
// out = T(float(T(silu(gate))) * up), silu(g) = g / (1 + exp(-g)).
void silu_and_mul_fwd(const at::Tensor& x, at::Tensor& out) {
  const int64_t R = x.size(0), I = x.size(1) / 2;
  dispatch_float(x.scalar_type(), [&](auto tx) {
    using T = decltype(tx);
    const T* xp = x.data_ptr<T>();
    T* op = out.data_ptr<T>();
    parallel_for(R, grain_rows(I), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* gr = xp + r * 2 * I;
        const T* ur = gr + I;
        T* yr = op + r * I;
        for (int64_t j = 0; j < I; ++j) {
          float gv = ld(gr, j);
          float act = round_to<T>(gv / (1.0f + exp_fixed(-gv)));
          yr[j] = static_cast<T>(act * ld(ur, j));
        }
      }
    });
  });
}

// d gate = go * up * s * (1 + g * (1 - s)), s = 1 / (1 + exp(-g));  d up = go * T(silu(g)).
void silu_and_mul_bwd(const at::Tensor& go, const at::Tensor& x, at::Tensor& dx) {
  const int64_t R = x.size(0), I = x.size(1) / 2;
  dispatch_float(x.scalar_type(), [&](auto tx) {
    using T = decltype(tx);
    const T* xp = x.data_ptr<T>();
    const T* gop = go.data_ptr<T>();
    T* dxp = dx.data_ptr<T>();
    parallel_for(R, grain_rows(I), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* gr = xp + r * 2 * I;
        const T* ur = gr + I;
        const T* gor = gop + r * I;
        T* dgr = dxp + r * 2 * I;
        T* dur = dgr + I;
        for (int64_t j = 0; j < I; ++j) {
          float gv = ld(gr, j), uv = ld(ur, j), o = ld(gor, j);
          float den = 1.0f + exp_fixed(-gv);
          float s = 1.0f / den;
          float act = round_to<T>(gv / den);
          dgr[j] = static_cast<T>(((o * uv) * s) * (1.0f + gv * (1.0f - s)));
          dur[j] = static_cast<T>(o * act);
        }
      }
    });
  });
}

// ---------------------------------------------------------------- rotary
// Table: cos/sin of float(p) * inv_freq[i], computed element by element with the scalar
// libm cosf/sinf (torch's own CPU cos/sin mixes a vector and a scalar path whose bits
// differ, and where the split falls depends on the tensor length and thread count).
void rotary_table(const at::Tensor& inv_freq, at::Tensor& cos, at::Tensor& sin) {
  const int64_t P = cos.size(0), half = cos.size(1);
  const float* f = inv_freq.data_ptr<float>();
  float* cp = cos.data_ptr<float>();
  float* sp = sin.data_ptr<float>();
  parallel_for(P, grain_rows(half), [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p)
      for (int64_t i = 0; i < half; ++i) {
        float a = static_cast<float>(p) * f[i];
        cp[p * half + i] = std::cos(a);
        sp[p * half + i] = std::sin(a);
      }
  });
}

// out1 = x1 * c - x2 * s, out2 = x2 * c + x1 * s (s negated when inverse: rotation by -angle).
void apply_rotary(const at::Tensor& x, const at::Tensor& pos, const at::Tensor& cos, const at::Tensor& sin,
                  bool inverse, at::Tensor& out) {
  const int64_t T = x.size(0), NH = x.size(1), D = x.size(2), half = D / 2;
  const int64_t* pp = pos.data_ptr<int64_t>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tx) {
    using TX = decltype(tx);
    dispatch_float(out.scalar_type(), [&](auto to) {
      using TO = decltype(to);
      const TX* xp = x.data_ptr<TX>();
      TO* op = out.data_ptr<TO>();
      parallel_for(T, grain_rows(NH * D), [&](int64_t b, int64_t e) {
        for (int64_t t = b; t < e; ++t) {
          const float* c = cp + pp[t] * half;
          const float* s = sp + pp[t] * half;
          for (int64_t h = 0; h < NH; ++h) {
            const TX* xr = xp + (t * NH + h) * D;
            TO* yr = op + (t * NH + h) * D;
            for (int64_t i = 0; i < half; ++i) {
              float x1 = ld(xr, i), x2 = ld(xr, i + half);
              float si = inverse ? -s[i] : s[i];
              yr[i] = static_cast<TO>(x1 * c[i] - x2 * si);
              yr[i + half] = static_cast<TO>(x2 * c[i] + x1 * si);
            }
          }
        }
      });
    });
  });
}

// ---------------------------------------------------------------- log-softmax
// z = float(l) / temperature; m = max z; s = lane_sum(exp(z - m)); stats = (m, log s).
template <typename T>
inline void row_stats(const T* lr, int64_t V, float temp, float* st) {
  float mx[kLanes];
  for (int j = 0; j < kLanes; ++j) mx[j] = -INFINITY;
  int64_t i = 0;
  for (; i + kLanes <= V; i += kLanes)
    for (int j = 0; j < kLanes; ++j) mx[j] = std::max(mx[j], ld(lr, i + j) / temp);
  for (int j = 0; i + j < V; ++j) mx[j] = std::max(mx[j], ld(lr, i + j) / temp);
  float m = mx[0];
  for (int j = 1; j < kLanes; ++j) m = std::max(m, mx[j]);
  float s = lane_sum(V, [&](int64_t j) { return exp_fixed(ld(lr, j) / temp - m); });
  st[0] = m;
  st[1] = std::log(s);
}

void log_softmax_fwd(const at::Tensor& logits, double temperature, at::Tensor& out, at::Tensor& stats) {
  const int64_t R = logits.size(0), V = logits.size(1);
  const float temp = static_cast<float>(temperature);
  float* op = out.data_ptr<float>();
  float* sp = stats.data_ptr<float>();
  dispatch_float(logits.scalar_type(), [&](auto tl_) {
    using T = decltype(tl_);
    const T* lp = logits.data_ptr<T>();
    parallel_for(R, grain_rows(V), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* lr = lp + r * V;
        float* st = sp + 2 * r;
        row_stats(lr, V, temp, st);
        float m = st[0], ls = st[1];
        float* yr = op + r * V;
        for (int64_t j = 0; j < V; ++j) yr[j] = (ld(lr, j) / temp - m) - ls;
      }
    });
  });
}

void token_logprobs_fwd(const at::Tensor& logits, const at::Tensor& ids, double temperature, at::Tensor& out,
                        at::Tensor& stats) {
  const int64_t R = logits.size(0), V = logits.size(1);
  const float temp = static_cast<float>(temperature);
  const int64_t* ip = ids.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  float* sp = stats.data_ptr<float>();
  dispatch_float(logits.scalar_type(), [&](auto tl_) {
    using T = decltype(tl_);
    const T* lp = logits.data_ptr<T>();
    parallel_for(R, grain_rows(V), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* lr = lp + r * V;
        float* st = sp + 2 * r;
        row_stats(lr, V, temp, st);
        op[r] = (ld(lr, ip[r]) / temp - st[0]) - st[1];
      }
    });
  });
}

// d logits[j] = g * (onehot[j] - p[j]) / temperature, p[j] = exp((z[j] - m) - log s).
void token_logprobs_bwd(const at::Tensor& g, const at::Tensor& logits, const at::Tensor& ids,
                        const at::Tensor& stats, double temperature, at::Tensor& grad) {
  const int64_t R = logits.size(0), V = logits.size(1);
  const float temp = static_cast<float>(temperature);
  const int64_t* ip = ids.data_ptr<int64_t>();
  const float* gp = g.data_ptr<float>();
  const float* sp = stats.data_ptr<float>();
  dispatch_float(logits.scalar_type(), [&](auto tl_) {
    using T = decltype(tl_);
    const T* lp = logits.data_ptr<T>();
    T* dp = grad.data_ptr<T>();
    parallel_for(R, grain_rows(V), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* lr = lp + r * V;
        T* dr = dp + r * V;
        const float m = sp[2 * r], ls = sp[2 * r + 1], gr = gp[r];
        const int64_t id = ip[r];
        for (int64_t j = 0; j < V; ++j) {
          float p = exp_fixed((ld(lr, j) / temp - m) - ls);
          float onehot = j == id ? 1.0f : 0.0f;
          dr[j] = static_cast<T>(gr * (onehot - p) / temp);
        }
      }
    });
  });
}

// d logits[j] = (g[j] - exp(out[j]) * sum(g)) / temperature (sum: lane_sum).
void log_softmax_bwd(const at::Tensor& g, const at::Tensor& out, double temperature, at::Tensor& grad) {
  const int64_t R = out.size(0), V = out.size(1);
  const float temp = static_cast<float>(temperature);
  const float* gp = g.data_ptr<float>();
  const float* op = out.data_ptr<float>();
  dispatch_float(grad.scalar_type(), [&](auto tg) {
    using T = decltype(tg);
    T* dp = grad.data_ptr<T>();
    parallel_for(R, grain_rows(V), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const float* gr = gp + r * V;
        const float* yr = op + r * V;
        float gs = lane_sum(V, [&](int64_t j) { return gr[j]; });
        T* dr = dp + r * V;
        for (int64_t j = 0; j < V; ++j) dr[j] = static_cast<T>((gr[j] - exp_fixed(yr[j]) * gs) / temp);
      }
    });
  });
}

// ---------------------------------------------------------------- row mean
void row_mean(const at::Tensor& x, at::Tensor& out) {
  const int64_t R = x.size(0), N = x.size(1);
  float* op = out.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tx) {
    using T = decltype(tx);
    const T* xp = x.data_ptr<T>();
    parallel_for(R, grain_rows(N), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const T* xr = xp + r * N;
        op[r] = lane_sum(N, [&](int64_t j) { return ld(xr, j); }) / static_cast<float>(N);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(exact_kernels, m) {
  m.def("rows_rms_norm_fwd(Tensor x, Tensor w, float eps, Tensor(a!) out, Tensor(b!) rstd) -> ()");
  m.def("rows_rms_norm_bwd(Tensor g, Tensor x, Tensor w, Tensor rstd, Tensor(a!) dx, Tensor(b!) dw) -> ()");
  m.def("rows_silu_and_mul_fwd(Tensor x, Tensor(a!) out) -> ()");
  m.def("rows_silu_and_mul_bwd(Tensor go, Tensor x, Tensor(a!) dx) -> ()");
  m.def("rows_rotary_table(Tensor inv_freq, Tensor(a!) cos, Tensor(b!) sin) -> ()");
  m.def("rows_apply_rotary(Tensor x, Tensor pos, Tensor cos, Tensor sin, bool inverse, Tensor(a!) out) -> ()");
  m.def("rows_log_softmax_fwd(Tensor logits, float temperature, Tensor(a!) out, Tensor(b!) stats) -> ()");
  m.def("rows_log_softmax_bwd(Tensor g, Tensor out, float temperature, Tensor(a!) grad) -> ()");
  m.def("rows_token_logprobs_fwd(Tensor logits, Tensor ids, float temperature, Tensor(a!) out, Tensor(b!) stats) -> ()");
  m.def("rows_token_logprobs_bwd(Tensor g, Tensor logits, Tensor ids, Tensor stats, float temperature, Tensor(a!) grad) -> ()");
  m.def("rows_row_mean(Tensor x, Tensor(a!) out) -> ()");
}

TORCH_LIBRARY_IMPL(exact_kernels, CPU, m) {
  m.impl("rows_rms_norm_fwd", &rms_norm_fwd);
  m.impl("rows_rms_norm_bwd", &rms_norm_bwd);
  m.impl("rows_silu_and_mul_fwd", &silu_and_mul_fwd);
  m.impl("rows_silu_and_mul_bwd", &silu_and_mul_bwd);
  m.impl("rows_rotary_table", &rotary_table);
  m.impl("rows_apply_rotary", &apply_rotary);
  m.impl("rows_log_softmax_fwd", &log_softmax_fwd);
  m.impl("rows_log_softmax_bwd", &log_softmax_bwd);
  m.impl("rows_token_logprobs_fwd", &token_logprobs_fwd);
  m.impl("rows_token_logprobs_bwd", &token_logprobs_bwd);
  m.impl("rows_row_mean", &row_mean);
}
