// CPU kernels of 2-D neighborhood attention: fused (na2d) and unfused (na2d_qk / na2d_av),
// forward and backward, with relative positional bias, dilation and head groups.
//
// Layouts: q, k, v, out, grads [B, heads, H, W, D] contiguous; attn [B, heads, H, W, kh*kw];
// lse / delta [B, heads, H, W]; one bias table [group_heads, 2kh-1, 2kw-1] per head group.
//
// Work is split over (batch, head, row) with at::parallel_for. Every output element has exactly one
// owner: dQ is accumulated over the query's neighborhood, dK / dV over the key's inverse
// neighborhood (no atomics), and dRPB is reduced from per-row partial sums in a fixed order, so
// results are bitwise reproducible for a given thread count.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

#include "../na2d_index.h"

namespace natten_ops {
namespace cpu {
namespace {

using at::Tensor;

struct Problem {
  int64_t batch, heads, height, width, dim;
  int64_t rows() const { return batch * heads * height; }
  int64_t plane() const { return height * width; }
};

// Vector helpers over head_dim. kDim > 0 is the length at compile time (fully unrolled, kept in
// registers); kDim == 0 uses the runtime length n.
template <int kDim, typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  const int64_t len = kDim > 0 ? kDim : n;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t d = 0; d < len; ++d) sum += a[d] * b[d];
  return sum;
}

template <int kDim, typename T>
inline void axpy(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
  const int64_t len = kDim > 0 ? kDim : n;
#pragma omp simd
  for (int64_t d = 0; d < len; ++d) y[d] += alpha * x[d];
}

template <int kDim, typename T>
inline void scale_into(T alpha, const T* __restrict x, T* __restrict y, int64_t n) {
  const int64_t len = kDim > 0 ? kDim : n;
#pragma omp simd
  for (int64_t d = 0; d < len; ++d) y[d] = alpha * x[d];
}

// exp(x) for x <= 0 (softmax after the max shift), written so that loops over it vectorise:
// Cody-Waite range reduction and the Cephes degree-6 polynomial, relative error ~2e-7 (float32
// round-off). Arguments below -87.3 (where exp underflows float32) are clamped there.
inline float exp_nonpositive(float x) {
  x = x < -87.3f ? -87.3f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float poly = 1.9875691500e-4f;
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  poly = poly * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return poly * scale;
}
inline double exp_nonpositive(double x) { return std::exp(x); }

// Calls fn(std::integral_constant<int, D>) with D = head_dim for the float32 sizes the models use
// (8, 16, 32, 64, 128) and D = 0 (runtime length) otherwise.
template <typename T, typename Fn>
void dispatch_head_dim(int64_t dim, const Fn& fn) {
  if constexpr (std::is_same_v<T, float>) {
    switch (dim) {
      case 8: return fn(std::integral_constant<int, 8>{});
      case 16: return fn(std::integral_constant<int, 16>{});
      case 32: return fn(std::integral_constant<int, 32>{});
      case 64: return fn(std::integral_constant<int, 64>{});
      case 128: return fn(std::integral_constant<int, 128>{});
      default: break;
    }
  }
  fn(std::integral_constant<int, 0>{});
}

// Runs fn(bh, i) for every (batch * head, query row) in parallel.
template <typename Fn>
void parallel_rows(const Problem& p, const Fn& fn) {
  at::parallel_for(0, p.rows(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) fn(row / p.height, row % p.height);
  });
}

Problem problem_of(const Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 5, name, " must be [B, heads, H, W, D], got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(4)};
}

void check_same(const Tensor& x, const Tensor& ref, const char* name, bool same_last_dim = true) {
  TORCH_CHECK(x.dim() == 5 && x.is_contiguous() && x.device().is_cpu(), name,
              " must be a contiguous 5-D CPU tensor");
  TORCH_CHECK(x.scalar_type() == ref.scalar_type(), name, " has dtype ", x.scalar_type(),
              ", expected ", ref.scalar_type());
  for (int d = 0; d < (same_last_dim ? 5 : 4); ++d)
    TORCH_CHECK(x.size(d) == ref.size(d), name, " has shape ", x.sizes(), ", expected ", ref.sizes());
}

// Head groups from the table [G, 6] = (head_begin, head_end, kh, kw, dh, dw), checked once.
struct Groups {
  std::vector<int64_t> begin, end;
  std::vector<HeadShape> heads;  // one entry per head
  int64_t count() const { return static_cast<int64_t>(begin.size()); }
  const HeadShape& first_head(int64_t g) const { return heads[begin[g]]; }
  int64_t max_kernel_area() const {
    int64_t area = 0;
    for (const auto& s : heads) area = std::max(area, s.kernel_area());
    return area;
  }
  int64_t max_bias_area() const {
    int64_t area = 0;
    for (const auto& s : heads) area = std::max(area, s.bias_area());
    return area;
  }
};

Groups parse_groups(const Tensor& table, const Problem& p) {
  TORCH_CHECK(table.dim() == 2 && table.size(1) == 6 && table.scalar_type() == at::kLong && table.device().is_cpu(),
              "groups must be a CPU int64 tensor [G, 6]");
  const Tensor t = table.contiguous();
  const int64_t* row = t.data_ptr<int64_t>();
  Groups g;
  for (int64_t gi = 0; gi < t.size(0); ++gi, row += 6) {
    const int64_t begin = row[0], end = row[1], kh = row[2], kw = row[3], dh = row[4], dw = row[5];
    TORCH_CHECK(begin == static_cast<int64_t>(g.heads.size()) && end > begin,
                "head groups must tile the heads contiguously");
    TORCH_CHECK(kh > 1 && kw > 1 && kh % 2 == 1 && kw % 2 == 1, "kernel sizes must be odd and > 1");
    TORCH_CHECK(dh >= 1 && dw >= 1, "dilations must be >= 1");
    TORCH_CHECK(kh * dh <= p.height && kw * dw <= p.width, "kernel_size * dilation exceeds the input");
    g.begin.push_back(begin);
    g.end.push_back(end);
    for (int64_t h = begin; h < end; ++h) g.heads.push_back({kh, kw, dh, dw, gi, h - begin});
  }
  TORCH_CHECK(static_cast<int64_t>(g.heads.size()) == p.heads, "head groups cover ", g.heads.size(),
              " heads, the input has ", p.heads);
  return g;
}

// Bias tables, one per group; an empty tensor means "no bias" for that group.
template <typename T>
struct BiasTables {
  std::vector<const T*> tables;
  BiasTables(const std::vector<Tensor>& rpbs, const Groups& groups) {
    TORCH_CHECK(static_cast<int64_t>(rpbs.size()) == groups.count(), "expected one rpb entry per head group");
    for (int64_t gi = 0; gi < groups.count(); ++gi) {
      const Tensor& t = rpbs[gi];
      if (t.numel() == 0) {
        tables.push_back(nullptr);
        continue;
      }
      const HeadShape& s = groups.first_head(gi);
      const int64_t heads = groups.end[gi] - groups.begin[gi];
      TORCH_CHECK(t.is_contiguous() && t.device().is_cpu() && t.scalar_type() == c10::CppTypeToScalarType<T>::value,
                  "rpb must be a contiguous CPU tensor of the input dtype");
      TORCH_CHECK(t.dim() == 3 && t.size(0) == heads && t.size(1) == 2 * s.kernel_h - 1 &&
                      t.size(2) == 2 * s.kernel_w - 1,
                  "rpb of group ", gi, " has shape ", t.sizes(), ", expected [", heads, ", ",
                  2 * s.kernel_h - 1, ", ", 2 * s.kernel_w - 1, "]");
      tables.push_back(t.data_ptr<T>());
    }
  }
  bool any() const {
    return std::any_of(tables.begin(), tables.end(), [](const T* t) { return t != nullptr; });
  }
  // The head's [2kh-1, 2kw-1] table, or nullptr.
  const T* of(const HeadShape& s) const {
    const T* t = tables[s.group];
    return t ? t + s.group_head * s.bias_area() : nullptr;
  }
};

// Sums bias-gradient partials [B * heads * parts, stride] (`parts` partial tables per (batch, head)
// plane, e.g. one per query row) into one [heads, 2kh-1, 2kw-1] table per group that has a bias (an
// empty tensor for the others), in a fixed order per head.
template <typename T>
std::vector<Tensor> reduce_bias_grad(const T* partial, int64_t stride, int64_t parts, const Problem& p,
                                     const Groups& groups, const std::vector<bool>& has_bias,
                                     const at::TensorOptions& options) {
  std::vector<Tensor> grads;
  for (int64_t gi = 0; gi < groups.count(); ++gi) {
    if (!has_bias[gi]) {
      grads.push_back(at::empty({0}, options));
      continue;
    }
    const int64_t begin = groups.begin[gi], end = groups.end[gi];
    const HeadShape& s = groups.first_head(gi);
    Tensor g = at::zeros({end - begin, 2 * s.kernel_h - 1, 2 * s.kernel_w - 1}, options);
    T* out = g.data_ptr<T>();
    at::parallel_for(begin, end, 1, [&](int64_t h0, int64_t h1) {
      for (int64_t h = h0; h < h1; ++h) {
        T* dst = out + (h - begin) * s.bias_area();
        for (int64_t b = 0; b < p.batch; ++b)
          for (int64_t part = 0; part < parts; ++part) {
            const T* src = partial + ((b * p.heads + h) * parts + part) * stride;
            for (int64_t t = 0; t < s.bias_area(); ++t) dst[t] += src[t];
          }
      }
    });
    grads.push_back(g);
  }
  return grads;
}

// ---------------------------------------------------------------------------------------------
// Fused na2d: out = softmax(scale * q.k + rpb) v, saving the log-sum-exp for the backward pass.

template <typename T, int kDim>
void fused_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                   const Groups& groups, const BiasTables<T>& bias, const Problem& p, T scale) {
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
  const int64_t D = kDim > 0 ? kDim : p.dim, W = p.width, area = groups.max_kernel_area();
  at::parallel_for(0, p.rows(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> logits(area), acc(D);
    std::vector<int64_t> key(area);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / p.height, i = row % p.height;
      const HeadShape& s = groups.heads[bh % p.heads];
      const T* table = bias.of(s);
      const int64_t plane = bh * p.plane(), n = s.kernel_area();
      const int64_t row0 = window_start(i, p.height, s.kernel_h, s.dilation_h);
      const int64_t bias_row0 = bias_index(i, row0, s.kernel_h, s.dilation_h);
      for (int64_t j = 0; j < W; ++j) {
        const int64_t query = plane + i * W + j;
        const int64_t col0 = window_start(j, W, s.kernel_w, s.dilation_w);
        const T* qv = qp + query * D;
        const T* bias_at = table ? table + bias_row0 * s.bias_cols() + bias_index(j, col0, s.kernel_w, s.dilation_w)
                                 : nullptr;  // bias of slot (uh, uw): bias_at[uh * bias_cols + uw]
        int64_t u = 0;
        for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
          const int64_t key_row = (plane + (row0 + uh * s.dilation_h) * W + col0) * D;
          for (int64_t uw = 0; uw < s.kernel_w; ++uw, ++u) {
            key[u] = key_row + uw * s.dilation_w * D;
            logits[u] = dot<kDim>(qv, kp + key[u], D) * scale + (bias_at ? bias_at[uh * s.bias_cols() + uw] : T(0));
          }
        }
        T max_logit = logits[0];
        for (int64_t w = 1; w < n; ++w) max_logit = std::max(max_logit, logits[w]);
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t w = 0; w < n; ++w) {
          logits[w] = exp_nonpositive(logits[w] - max_logit);
          sum += logits[w];
        }
        std::fill(acc.begin(), acc.end(), T(0));
        for (int64_t w = 0; w < n; ++w) axpy<kDim>(logits[w], vp + key[w], acc.data(), D);
        scale_into<kDim>(T(1) / sum, acc.data(), op + query * D, D);
        lp[query] = max_logit + std::log(sum);
      }
    }
  });
}

// Softmax gradient terms of one (query, key) list: prob = exp(logit - lse), ds = prob * (dp - delta).
template <typename T>
inline void softmax_grad_terms(int64_t n, T* logit_then_prob, const T* lse, T* dp_then_ds, const T* delta) {
#pragma omp simd
  for (int64_t w = 0; w < n; ++w) {
    const T prob = exp_nonpositive(logit_then_prob[w] - lse[w]);
    logit_then_prob[w] = prob;
    dp_then_ds[w] = prob * (dp_then_ds[w] - delta[w]);
  }
}

template <typename T, int kDim>
void fused_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                    const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, T* bias_partial, const Groups& groups,
                    const BiasTables<T>& bias, const Problem& p, T scale) {
  const T *gp = dout.data_ptr<T>(), *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  const T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
  T *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>(), *dvp = dv.data_ptr<T>();
  const int64_t D = kDim > 0 ? kDim : p.dim, W = p.width, H = p.height;
  const int64_t bias_stride = groups.max_bias_area(), area = groups.max_kernel_area();
  Tensor delta_tensor = at::empty({p.rows() * W}, q.options());  // rowsum(dout * out) per query
  T* delta = delta_tensor.data_ptr<T>();

  // Query pass: dQ over the neighborhood, and the bias gradient per row.
  at::parallel_for(0, p.rows(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> prob(area), ds(area), lse_rep(area), delta_rep(area);
    std::vector<int64_t> key(area), bias_at(area);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / H, i = row % H;
      const HeadShape& s = groups.heads[bh % p.heads];
      const T* table = bias.of(s);
      T* partial = table ? bias_partial + row * bias_stride : nullptr;
      const int64_t plane = bh * p.plane(), n = s.kernel_area();
      const int64_t row0 = window_start(i, H, s.kernel_h, s.dilation_h);
      const int64_t bias_row0 = bias_index(i, row0, s.kernel_h, s.dilation_h);
      for (int64_t j = 0; j < W; ++j) {
        const int64_t query = plane + i * W + j;
        const int64_t col0 = window_start(j, W, s.kernel_w, s.dilation_w);
        const int64_t bias0 = bias_row0 * s.bias_cols() + bias_index(j, col0, s.kernel_w, s.dilation_w);
        const T *qv = qp + query * D, *gv = gp + query * D;
        const T dlt = dot<kDim>(gv, op + query * D, D);
        delta[query] = dlt;
        int64_t u = 0;
        for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
          const int64_t key_row = (plane + (row0 + uh * s.dilation_h) * W + col0) * D;
          for (int64_t uw = 0; uw < s.kernel_w; ++uw, ++u) {
            key[u] = key_row + uw * s.dilation_w * D;
            bias_at[u] = bias0 + uh * s.bias_cols() + uw;
            prob[u] = dot<kDim>(qv, kp + key[u], D) * scale + (table ? table[bias_at[u]] : T(0));
            ds[u] = dot<kDim>(gv, vp + key[u], D);
            lse_rep[u] = lp[query];
            delta_rep[u] = dlt;
          }
        }
        softmax_grad_terms(n, prob.data(), lse_rep.data(), ds.data(), delta_rep.data());
        T* dqv = dqp + query * D;
        for (int64_t w = 0; w < n; ++w) axpy<kDim>(ds[w] * scale, kp + key[w], dqv, D);
        if (partial)
          for (int64_t w = 0; w < n; ++w) partial[bias_at[w]] += ds[w];
      }
    }
  });

  // Key pass: dK and dV over the inverse neighborhood of each key. It has fewer than 2k queries
  // per axis (k + k/2 at most, next to a border), so (2kh-1)(2kw-1) bounds its size.
  at::parallel_for(0, p.rows(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> prob(bias_stride), ds(bias_stride), lse_of(bias_stride), delta_of(bias_stride);
    std::vector<int64_t> query_at(bias_stride);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bh = row / H, a = row % H;
      const HeadShape& s = groups.heads[bh % p.heads];
      const T* table = bias.of(s);
      const int64_t plane = bh * p.plane();
      int64_t i0, i1;
      inverse_window(a, H, s.kernel_h, s.dilation_h, &i0, &i1);
      for (int64_t c = 0; c < W; ++c) {
        const int64_t key = plane + a * W + c;
        const T *kv = kp + key * D, *vv = vp + key * D;
        int64_t j0, j1;
        inverse_window(c, W, s.kernel_w, s.dilation_w, &j0, &j1);
        // Bias of query (i0 + m * dh, j0 + l * dw) for this key: bias0 - m * bias_cols - l.
        const int64_t bias0 = bias_index(i0, a, s.kernel_h, s.dilation_h) * s.bias_cols() +
                              bias_index(j0, c, s.kernel_w, s.dilation_w);
        int64_t n = 0;
        for (int64_t i = i0, m = 0; i < i1; i += s.dilation_h, ++m) {
          for (int64_t j = j0, l = 0; j < j1; j += s.dilation_w, ++l, ++n) {
            const int64_t query = plane + i * W + j;
            query_at[n] = query * D;
            prob[n] = dot<kDim>(qp + query * D, kv, D) * scale +
                      (table ? table[bias0 - m * s.bias_cols() - l] : T(0));
            ds[n] = dot<kDim>(gp + query * D, vv, D);
            lse_of[n] = lp[query];
            delta_of[n] = delta[query];
          }
        }
        softmax_grad_terms(n, prob.data(), lse_of.data(), ds.data(), delta_of.data());
        T *dkv = dkp + key * D, *dvv = dvp + key * D;
        for (int64_t w = 0; w < n; ++w) {
          axpy<kDim>(ds[w] * scale, qp + query_at[w], dkv, D);
          axpy<kDim>(prob[w], gp + query_at[w], dvv, D);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Tiled float32 kernels of the fused na2d for AVX-512 builds.
//
// The portable kernels above take one query at a time: k*k dot products of length head_dim, each
// ending in a horizontal sum. Here a tile of up to 16 queries (or, in the key pass, keys) of one row
// sits across the lanes of a register, so one logit of the whole tile is head_dim lane-wise FMAs and
// nothing is reduced across lanes.
//
// Reordered columns: inside a row, columns are taken group by group (dilation group 0's columns in
// order, then group 1's, ...), so the k keys of a query's window are k consecutive reordered columns,
// and so are the queries of a key's inverse neighbourhood. A tile is a run of consecutive reordered
// columns; it may span two groups, which keeps all 16 lanes busy when a group has only 8 columns.
// All the keys (or queries) a tile needs from one row lie in a window of at most 32 consecutive
// reordered columns.
//
// Gathered rows: for one row and one tile, the window's 32 columns are transposed in registers (two
// registers per d) and lane l's key of slot uw, window element offset[l] + uw, is picked with
// _mm512_permutex2var_ps, giving g[uw][d] = the 16 lanes' keys of slot uw. Near borders, where windows
// are clamped and lanes share keys, only the offsets change: there is no scalar border path.
//
// Sweeps: a task takes one tile and one dilation group of rows and visits the group's rows in order,
// keeping the gathered rows its windows need in a RowRing, so each row is gathered once per tile and
// serves all the rows whose windows hold it. The inner loops are then FMAs on aligned loads. Tasks
// write disjoint outputs and the tensors are read in place: no copies, no atomics.
#if defined(__AVX512F__)
namespace tiled {

using Vec = __m512;   // 16 float lanes
using Idx = __m512i;  // 16 int32 lanes

// A heap array of registers (std::vector<__m512> would drop their 64-byte alignment).
class Registers {
  struct alignas(64) Slot {
    Vec v;
  };
  std::vector<Slot> slots_;

 public:
  explicit Registers(int64_t n) : slots_(std::max<int64_t>(n, 1)) {}
  Vec* data() { return &slots_[0].v; }
};

constexpr int64_t kLanes = 16;                       // queries (or keys) per tile
constexpr int64_t kWindow = 32;                      // columns a tile reads per row: two registers
constexpr int64_t kMaxKernel = 15;                   // widest kernel: 2k-1 bias columns fit two registers
constexpr int64_t kMaxInverse = 2 * kMaxKernel - 1;  // most queries that attend a key, per axis

inline __mmask16 first_lanes(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }  // n in [0, 16]

inline Vec pick(Vec lo, Idx index, Vec hi) { return _mm512_permutex2var_ps(lo, index, hi); }

inline Idx plus(Idx index, int64_t n) { return _mm512_add_epi32(index, _mm512_set1_epi32(static_cast<int32_t>(n))); }

// exp_nonpositive (above) on 16 lanes: the same range reduction and polynomial.
inline Vec exp_nonpositive(Vec x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const Vec n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  Vec r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  Vec poly = _mm512_set1_ps(1.9875691500e-4f);
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.3981999507e-3f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(8.3334519073e-3f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(4.1665795894e-2f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(1.6666665459e-1f));
  poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(5.0000001201e-1f));
  poly = _mm512_fmadd_ps(poly, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(poly, n);
}

// In-register 16x16 transpose: afterwards lane j of r[i] holds what lane i of r[j] held.
inline void transpose16(Vec r[kLanes]) {
  Vec t[kLanes];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// Loads 16 rows of x_row (a row of the input, [W][dim]) at input columns `columns`, transposed: for
// the 16 values of d from d0, r[d - d0] lane l = x_row[columns[l]][d] (zero past dim).
inline void load_transposed(const float* x_row, const int32_t* columns, int64_t dim, int64_t d0, Vec r[kLanes]) {
  const __mmask16 valid = first_lanes(std::min(kLanes, dim - d0));
  for (int64_t l = 0; l < kLanes; ++l) r[l] = _mm512_maskz_loadu_ps(valid, x_row + columns[l] * dim + d0);
  transpose16(r);
}

// x_t[d] (16 lanes) = x_row[columns[l]][d] for d < dim.
inline void lanes_of(const float* x_row, const int32_t* columns, int64_t dim, Vec* x_t) {
  for (int64_t d0 = 0; d0 < dim; d0 += kLanes) {
    Vec r[kLanes];
    load_transposed(x_row, columns, dim, d0, r);
    std::copy(r, r + std::min(kLanes, dim - d0), x_t + d0);
  }
}

// The inverse of lanes_of, scaled: out_row[columns[l]][d] = scale[l] * x_t[d][l] for lanes l < count.
inline void store_lanes(const Vec* x_t, int64_t dim, Vec scale, const int32_t* columns, int64_t count, float* out_row) {
  for (int64_t d0 = 0; d0 < dim; d0 += kLanes) {
    const int64_t n = std::min(kLanes, dim - d0);
    Vec r[kLanes];
    for (int64_t d = 0; d < kLanes; ++d) r[d] = d < n ? _mm512_mul_ps(x_t[d0 + d], scale) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t l = 0; l < count; ++l) _mm512_mask_storeu_ps(out_row + columns[l] * dim + d0, first_lanes(n), r[l]);
  }
}

// Asks for the rows x_row[columns[l]] (l < count, dim floats each) to be brought into the cache: a
// sweep prefetches the rows of its next step, whose addresses the hardware prefetchers cannot guess.
inline void prefetch_columns(const float* x_row, const int32_t* columns, int64_t count, int64_t dim) {
  constexpr int64_t kLine = 64 / sizeof(float);
  for (int64_t l = 0; l < count; ++l)
    for (int64_t d = 0; d < dim; d += kLine)
      _mm_prefetch(reinterpret_cast<const char*>(x_row + columns[l] * dim + d), _MM_HINT_T0);
}

// A run of at most 32 consecutive reordered columns of a row: the keys (or queries) one tile reads.
struct Window {
  int64_t size;                          // columns in the window (<= kWindow)
  alignas(64) int32_t column[kWindow];  // input column of each window element (the last one repeated)
};

// Gathers the window's part of one row of x (x_row: [W][dim] in the input layout):
// out[c * dim + d] = lane-wise x_row[window.column[index[c]]][d] for c < count and d < dim.
inline void gather_row(const float* x_row, const Window& window, int64_t dim, const Idx* index, int64_t count, Vec* out) {
  for (int64_t d0 = 0; d0 < dim; d0 += kLanes) {
    Vec lo[kLanes], hi[kLanes];
    load_transposed(x_row, window.column, dim, d0, lo);
    if (window.size > kLanes) load_transposed(x_row, window.column + kLanes, dim, d0, hi);
    const Vec* high = window.size > kLanes ? hi : lo;  // indices stay below 16 in a one-register window
    for (int64_t d = 0; d < std::min(kLanes, dim - d0); ++d)
      for (int64_t c = 0; c < count; ++c) out[c * dim + d0 + d] = pick(lo[d], index[c], high[d]);
  }
}

// The same for one value per column (values_row: [W]): out[c] = lane-wise values_row[window.column[index[c]]].
inline void gather_values(const float* values_row, const Window& window, const Idx* index, int64_t count, Vec* out) {
  const Vec lo = _mm512_i32gather_ps(_mm512_load_si512(window.column), values_row, sizeof(float));
  const Vec hi = _mm512_i32gather_ps(_mm512_load_si512(window.column + kLanes), values_row, sizeof(float));
  for (int64_t c = 0; c < count; ++c) out[c] = pick(lo, index[c], hi);
}

// out[c] = sum_d x_t[d] * g[c * dim + d] for c < C.
template <int C>
inline void gathered_dots(const Vec* x_t, const Vec* g, int64_t dim, Vec* out) {
  Vec acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < dim; ++d)
    for (int c = 0; c < C; ++c) acc[c] = _mm512_fmadd_ps(x_t[d], g[c * dim + d], acc[c]);
  for (int c = 0; c < C; ++c) out[c] = acc[c];
}

// acc[d] += sum_c weight[c] * g[c * dim + d] for d < dim, summed in order c = 0..C-1. Blocks of 8 d
// keep 8 independent FMA chains in flight.
template <int C>
inline void gathered_axpys(const Vec* weight, const Vec* g, int64_t dim, Vec* acc) {
  constexpr int64_t kBlock = 8;
  int64_t d0 = 0;
  for (; d0 + kBlock <= dim; d0 += kBlock) {
    Vec a[kBlock];
    for (int64_t d = 0; d < kBlock; ++d) a[d] = acc[d0 + d];
    for (int c = 0; c < C; ++c)
      for (int64_t d = 0; d < kBlock; ++d) a[d] = _mm512_fmadd_ps(weight[c], g[c * dim + d0 + d], a[d]);
    for (int64_t d = 0; d < kBlock; ++d) acc[d0 + d] = a[d];
  }
  for (; d0 < dim; ++d0)
    for (int c = 0; c < C; ++c) acc[d0] = _mm512_fmadd_ps(weight[c], g[c * dim + d0], acc[d0]);
}

// Calls fn(first, std::integral_constant<int, C>{}) for blocks [first, first + C) of near-equal sizes
// C <= 8 that cover [0, n) in order (C is a compile-time count of registers).
template <typename Fn>
inline void for_each_block(int64_t n, const Fn& fn) {
  const int64_t blocks = (n + 7) / 8;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t first = b * n / blocks;
    switch ((b + 1) * n / blocks - first) {
      case 1: fn(first, std::integral_constant<int, 1>{}); break;
      case 2: fn(first, std::integral_constant<int, 2>{}); break;
      case 3: fn(first, std::integral_constant<int, 3>{}); break;
      case 4: fn(first, std::integral_constant<int, 4>{}); break;
      case 5: fn(first, std::integral_constant<int, 5>{}); break;
      case 6: fn(first, std::integral_constant<int, 6>{}); break;
      case 7: fn(first, std::integral_constant<int, 7>{}); break;
      default: fn(first, std::integral_constant<int, 8>{}); break;
    }
  }
}

// One row of a bias table (2kw-1 <= 32 entries) in two registers, for pick(); zeros without a table.
struct BiasRow {
  Vec lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  BiasRow(const float* row, int64_t cols) {
    if (!row) return;
    lo = _mm512_maskz_loadu_ps(first_lanes(std::min(cols, kLanes)), row);
    hi = _mm512_maskz_loadu_ps(first_lanes(std::max<int64_t>(cols - kLanes, 0)), row + kLanes);
  }
  Vec at(Idx col) const { return pick(lo, col, hi); }
};

// A tile of the forward pass and of the backward query pass: lanes = queries at input columns
// column[l], l < lanes (the last repeated past `lanes`). Lane l's key of slot (uh, uw) is window
// element key_offset[l] + uw of key row uh, with bias column bias_col[l] + uw.
struct QueryTile {
  int64_t lanes;
  alignas(64) int32_t column[kLanes];
  alignas(64) int32_t key_offset[kLanes];
  alignas(64) int32_t bias_col[kLanes];
  Window window;
  std::vector<std::pair<int32_t, __mmask16>> bias_classes;  // (bias_col, the lanes that have it)
};

// A tile of the backward key pass: lanes = keys at input columns column[l], l < lanes. In each query
// row of the key row's inverse neighbourhood, lane l is attended by the queries at window elements
// query_offset[l] + m for m < count[l] (count 0 past `lanes`), with bias column bias_col[l] - m.
struct KeyTile {
  int64_t lanes, max_count;
  alignas(64) int32_t column[kLanes];
  alignas(64) int32_t query_offset[kLanes];
  alignas(64) int32_t count[kLanes];
  alignas(64) int32_t bias_col[kLanes];
  Window window;
};

// The tiles of a row for one head shape (the width axis; rows are swept one at a time).
struct RowLayout {
  std::vector<QueryTile> query_tiles;
  std::vector<KeyTile> key_tiles;
};

// Splits the reordered columns [0, W) into runs of at most kLanes columns whose ranges
// [begin[c], end[c]) fit in one window starting at begin[first] (begin and end never decrease along c),
// and calls fn(first, lanes, window) for each.
template <typename Fn>
void for_each_tile(const std::vector<int64_t>& begin, const std::vector<int64_t>& end,
                   const std::vector<int64_t>& column, const Fn& fn) {
  const int64_t width = static_cast<int64_t>(begin.size());
  for (int64_t first = 0, lanes = 0; first < width; first += lanes) {
    lanes = std::min(kLanes, width - first);
    while (end[first + lanes - 1] - begin[first] > kWindow) --lanes;
    Window window;
    window.size = end[first + lanes - 1] - begin[first];
    for (int64_t e = 0; e < kWindow; ++e)
      window.column[e] = static_cast<int32_t>(column[begin[first] + std::min(e, window.size - 1)]);
    fn(first, lanes, window);
  }
}

RowLayout make_row_layout(int64_t W, int64_t kernel, int64_t dilation) {
  std::vector<int64_t> column, position(W);  // reordered column <-> input column
  for (int64_t g = 0; g < dilation; ++g)
    for (int64_t j = g; j < W; j += dilation) {
      position[j] = static_cast<int64_t>(column.size());
      column.push_back(j);
    }
  // Per reordered column: its window [key_begin, key_end) and inverse neighbourhood [query_begin, query_end).
  std::vector<int64_t> key_begin(W), key_end(W), query_begin(W), query_end(W);
  for (int64_t c = 0; c < W; ++c) {
    const int64_t j = column[c];
    key_begin[c] = position[window_start(j, W, kernel, dilation)];
    key_end[c] = key_begin[c] + kernel;
    int64_t first, end;
    inverse_window(j, W, kernel, dilation, &first, &end);
    query_begin[c] = position[first];
    query_end[c] = query_begin[c] + (end - first + dilation - 1) / dilation;
  }
  RowLayout layout;
  for_each_tile(key_begin, key_end, column, [&](int64_t first, int64_t lanes, const Window& window) {
    QueryTile t;
    t.lanes = lanes, t.window = window;
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t c = first + std::min(l, lanes - 1), j = column[c];
      t.column[l] = static_cast<int32_t>(j);
      t.key_offset[l] = static_cast<int32_t>(key_begin[c] - key_begin[first]);
      t.bias_col[l] = static_cast<int32_t>(bias_index(j, window_start(j, W, kernel, dilation), kernel, dilation));
    }
    for (int64_t l = 0; l < lanes; ++l) {
      auto same = [&](const auto& cls) { return cls.first == t.bias_col[l]; };
      auto cls = std::find_if(t.bias_classes.begin(), t.bias_classes.end(), same);
      if (cls == t.bias_classes.end()) cls = t.bias_classes.insert(cls, {t.bias_col[l], 0});
      cls->second |= static_cast<__mmask16>(1u << l);
    }
    layout.query_tiles.push_back(t);
  });
  for_each_tile(query_begin, query_end, column, [&](int64_t first, int64_t lanes, const Window& window) {
    KeyTile t;
    t.lanes = lanes, t.max_count = 0, t.window = window;
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t c = first + std::min(l, lanes - 1);
      t.column[l] = static_cast<int32_t>(column[c]);
      t.query_offset[l] = static_cast<int32_t>(query_begin[c] - query_begin[first]);
      t.count[l] = static_cast<int32_t>(l < lanes ? query_end[c] - query_begin[c] : 0);
      t.bias_col[l] = static_cast<int32_t>(bias_index(column[query_begin[c]], column[c], kernel, dilation));
      t.max_count = std::max<int64_t>(t.max_count, t.count[l]);
    }
    layout.key_tiles.push_back(t);
  });
  return layout;
}

bool supports(const Groups& groups) {
  return std::all_of(groups.heads.begin(), groups.heads.end(),
                     [](const HeadShape& s) { return s.kernel_w <= kMaxKernel; });
}

std::vector<RowLayout> make_layouts(const Groups& groups, int64_t W) {
  std::vector<RowLayout> layouts;
  for (int64_t g = 0; g < groups.count(); ++g) {
    const HeadShape& s = groups.first_head(g);
    layouts.push_back(make_row_layout(W, s.kernel_w, s.dilation_w));
  }
  return layouts;
}

// Runs fn(scratch, task) for the tasks [0, count) on the intra-op threads, with one scratch =
// make_scratch() per thread. Tasks are handed out one at a time from a shared counter, so a thread
// slowed down by other work on the machine simply takes fewer; every task writes only its own
// outputs, so the results do not depend on which thread ran which task.
template <typename MakeScratch, typename Fn>
void parallel_tasks(int64_t count, const MakeScratch& make_scratch, const Fn& fn) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    auto scratch = make_scratch();
    for (int64_t task = next++; task < count; task = next++) fn(scratch, task);
  });
}

// The tasks of a pass: per (batch, head) plane, one per (dilation group of rows, tile), numbered
// group * tiles + tile within the plane's `per_plane` slots (the most over the head groups).
template <typename Tile>
struct Tasks {
  const std::vector<std::vector<Tile>>& tiles;  // per head group
  int64_t per_plane = 0;
  Tasks(const std::vector<std::vector<Tile>>& tiles_, const Groups& groups) : tiles(tiles_) {
    for (const HeadShape& s : groups.heads)
      per_plane = std::max<int64_t>(per_plane, s.dilation_h * static_cast<int64_t>(tiles[s.group].size()));
  }
  // Calls fn(row group, tile) if slot `slot` of a plane of head shape s is a task.
  template <typename Fn>
  void run(const HeadShape& s, int64_t slot, const Fn& fn) const {
    const std::vector<Tile>& of_head = tiles[s.group];
    const int64_t count = static_cast<int64_t>(of_head.size());
    if (slot < s.dilation_h * count) fn(slot / count, of_head[slot % count]);
  }
};

// The gathered rows a sweep over one dilation group of rows needs: in-group row r sits in slot
// r % capacity. Rows are gathered once each, in increasing order; a sweep's windows never move back
// and span at most `capacity` rows.
class RowRing {
 public:
  RowRing(int64_t capacity, int64_t row_size, Vec* storage) : capacity_(capacity), row_size_(row_size), data_(storage) {}
  // Gathers the rows before `end` not gathered yet: gather(r, destination).
  template <typename Gather>
  void fill(int64_t end, const Gather& gather) {
    for (; next_ < end; ++next_) gather(next_, row(next_));
  }
  Vec* row(int64_t r) const { return data_ + r % capacity_ * row_size_; }

 private:
  int64_t capacity_, row_size_, next_ = 0;
  Vec* data_;
};

// Offsets of a tile's lanes into its window for slots (or queries) 0 .. n-1: index[u] = offset + u.
inline void slot_indices(const int32_t* offset, int64_t n, Idx* index) {
  const Idx base = _mm512_load_si512(offset);
  for (int64_t u = 0; u < n; ++u) index[u] = plus(base, u);
}

struct ForwardScratch {
  Registers q_t, slots, acc, ring;
};

// Forward of one query tile over the rows of one dilation group: logits, softmax, out and lse.
// q, k, v, out: one (batch, head) plane [H, W, D]; lse: [H, W].
void forward_sweep(const QueryTile& t, const HeadShape& s, const float* table, int64_t group, const Problem& p,
                   float scale, const float* q, const float* k, const float* v, float* out, float* lse,
                   ForwardScratch& scratch) {
  const int64_t D = p.dim, W = p.width, H = p.height, kh = s.kernel_h, kw = s.kernel_w, dh = s.dilation_h;
  Vec *q_t = scratch.q_t.data(), *slots = scratch.slots.data(), *acc = scratch.acc.data();
  Idx key[kMaxKernel];  // lane l's key of slot uw: window element key_offset[l] + uw
  slot_indices(t.key_offset, kw, key);
  const Idx bias_col = _mm512_load_si512(t.bias_col);
  RowRing ring(kh, 2 * kw * D, scratch.ring.data());  // a gathered key row: kw * D registers of k, then of v
  for (int64_t i = group; i < H; i += dh) {
    const int64_t row0 = window_start(i, H, kh, dh), first_row = (row0 - group) / dh;
    ring.fill(first_row + kh, [&](int64_t r, Vec* g) {
      const int64_t a = group + r * dh;
      gather_row(k + a * W * D, t.window, D, key, kw, g);
      gather_row(v + a * W * D, t.window, D, key, kw, g + kw * D);
    });
    lanes_of(q + i * W * D, t.column, D, q_t);
    if (i + dh < H) {  // the next step's query row and the key row it may gather
      const int64_t next_key_row = group + (first_row + kh) * dh;
      prefetch_columns(q + (i + dh) * W * D, t.column, t.lanes, D);
      if (next_key_row < H) {
        prefetch_columns(k + next_key_row * W * D, t.window.column, t.window.size, D);
        prefetch_columns(v + next_key_row * W * D, t.window.column, t.window.size, D);
      }
    }

    // slots[uh * kw + uw] = scale * q . k + bias, then exp(. - max); sum over the slots.
    const int64_t bias_row0 = bias_index(i, row0, kh, dh);
    Vec max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t uh = 0; uh < kh; ++uh) {
      const Vec* g = ring.row(first_row + uh);
      Vec* logit = slots + uh * kw;
      for_each_block(kw, [&](int64_t u, auto count) { gathered_dots<count()>(q_t, g + u * D, D, logit + u); });
      const BiasRow bias(table ? table + (bias_row0 + uh) * s.bias_cols() : nullptr, s.bias_cols());
      for (int64_t uw = 0; uw < kw; ++uw) {
        logit[uw] = _mm512_fmadd_ps(logit[uw], _mm512_set1_ps(scale), bias.at(plus(bias_col, uw)));
        max = _mm512_max_ps(max, logit[uw]);
      }
    }
    Vec sum = _mm512_setzero_ps();
    for (int64_t u = 0; u < s.kernel_area(); ++u) {
      slots[u] = exp_nonpositive(_mm512_sub_ps(slots[u], max));
      sum = _mm512_add_ps(sum, slots[u]);
    }

    std::fill(acc, acc + D, _mm512_setzero_ps());  // acc[d] = the lanes' sum_u p_u v_u[d]
    for (int64_t uh = 0; uh < kh; ++uh) {
      const Vec* g = ring.row(first_row + uh) + kw * D;
      for_each_block(kw, [&](int64_t u, auto count) { gathered_axpys<count()>(slots + uh * kw + u, g + u * D, D, acc); });
    }
    store_lanes(acc, D, _mm512_div_ps(_mm512_set1_ps(1.f), sum), t.column, t.lanes, out + i * W * D);

    alignas(64) float max_of[kLanes], sum_of[kLanes];
    _mm512_store_ps(max_of, max);
    _mm512_store_ps(sum_of, sum);
    for (int64_t l = 0; l < t.lanes; ++l) lse[i * W + t.column[l]] = max_of[l] + std::log(sum_of[l]);
  }
}

std::vector<std::vector<QueryTile>> query_tiles_of(const std::vector<RowLayout>& layouts) {
  std::vector<std::vector<QueryTile>> tiles;
  for (const RowLayout& layout : layouts) tiles.push_back(layout.query_tiles);
  return tiles;
}

void forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse, const Groups& groups,
             const BiasTables<float>& bias, const Problem& p, float scale) {
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  float *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  const int64_t D = p.dim, plane = p.plane(), planes = p.batch * p.heads;
  const std::vector<std::vector<QueryTile>> tiles = query_tiles_of(make_layouts(groups, p.width));
  const Tasks<QueryTile> tasks(tiles, groups);
  int64_t ring = 0;
  for (const HeadShape& s : groups.heads) ring = std::max(ring, s.kernel_h * 2 * s.kernel_w * D);
  auto make_scratch = [&] {
    return ForwardScratch{Registers(D), Registers(groups.max_kernel_area()), Registers(D), Registers(ring)};
  };
  parallel_tasks(planes * tasks.per_plane, make_scratch, [&](ForwardScratch& scratch, int64_t task) {
    const int64_t bh = task / tasks.per_plane;
    const HeadShape& s = groups.heads[bh % p.heads];
    tasks.run(s, task % tasks.per_plane, [&](int64_t group, const QueryTile& t) {
      forward_sweep(t, s, bias.of(s), group, p, scale, qp + bh * plane * D, kp + bh * plane * D, vp + bh * plane * D,
                    op + bh * plane * D, lp + bh * plane, scratch);
    });
  });
}

// One (batch, head) plane of the backward inputs: q, k, v, out, grad_out [H, W, D]; lse, delta [H, W].
struct BackwardPlane {
  const float *q, *k, *v, *dout, *lse, *delta;
};

struct BackwardScratch {
  Registers q_t, dout_t, logits, dp, acc, bias_acc, k_t, v_t, dk_acc, dv_acc, query_ring, key_ring;
};

// Backward query pass of one query tile over the rows of one dilation group: ds_u = p_u (dp_u - delta),
// dq = scale sum_u ds_u k_u, and the bias gradient summed in scratch.bias_acc (16 lanes per bias entry).
void query_sweep(const QueryTile& t, const HeadShape& s, const float* table, int64_t group, const Problem& p,
                 float scale, const BackwardPlane& x, float* dq, BackwardScratch& scratch) {
  const int64_t D = p.dim, W = p.width, H = p.height, kh = s.kernel_h, kw = s.kernel_w, dh = s.dilation_h;
  Vec *q_t = scratch.q_t.data(), *dout_t = scratch.dout_t.data(), *acc = scratch.acc.data();
  Vec *logits = scratch.logits.data(), *dp = scratch.dp.data(), *bias_acc = scratch.bias_acc.data();
  Idx key[kMaxKernel];
  slot_indices(t.key_offset, kw, key);
  const Idx bias_col = _mm512_load_si512(t.bias_col), columns = _mm512_load_si512(t.column);
  const __mmask16 valid = first_lanes(t.lanes);
  RowRing ring(kh, 2 * kw * D, scratch.query_ring.data());  // a gathered key row: kw * D registers of k, then of v
  for (int64_t i = group; i < H; i += dh) {
    const int64_t row0 = window_start(i, H, kh, dh), first_row = (row0 - group) / dh;
    ring.fill(first_row + kh, [&](int64_t r, Vec* g) {
      const int64_t a = group + r * dh;
      gather_row(x.k + a * W * D, t.window, D, key, kw, g);
      gather_row(x.v + a * W * D, t.window, D, key, kw, g + kw * D);
    });
    lanes_of(x.q + i * W * D, t.column, D, q_t);
    lanes_of(x.dout + i * W * D, t.column, D, dout_t);
    const Vec lse = _mm512_i32gather_ps(columns, x.lse + i * W, sizeof(float));
    const Vec delta = _mm512_i32gather_ps(columns, x.delta + i * W, sizeof(float));

    // logits[u] becomes ds_u: logit -> p = exp(logit - lse) -> p (dp - delta), zero on unused lanes.
    const int64_t bias_row0 = bias_index(i, row0, kh, dh);
    for (int64_t uh = 0; uh < kh; ++uh) {
      const Vec* g = ring.row(first_row + uh);
      Vec *logit = logits + uh * kw, *dpu = dp + uh * kw;
      for_each_block(kw, [&](int64_t u, auto count) {
        gathered_dots<count()>(q_t, g + u * D, D, logit + u);
        gathered_dots<count()>(dout_t, g + (kw + u) * D, D, dpu + u);
      });
      const int64_t bias_row = bias_row0 + uh;
      const BiasRow bias(table ? table + bias_row * s.bias_cols() : nullptr, s.bias_cols());
      for (int64_t uw = 0; uw < kw; ++uw) {
        const Vec z = _mm512_sub_ps(_mm512_fmadd_ps(logit[uw], _mm512_set1_ps(scale), bias.at(plus(bias_col, uw))), lse);
        logit[uw] = _mm512_maskz_mul_ps(valid, exp_nonpositive(z), _mm512_sub_ps(dpu[uw], delta));
        if (table)
          for (const auto& [col, lanes] : t.bias_classes) {
            Vec& entry = bias_acc[bias_row * s.bias_cols() + col + uw];
            entry = _mm512_mask_add_ps(entry, lanes, entry, logit[uw]);
          }
      }
    }

    std::fill(acc, acc + D, _mm512_setzero_ps());
    for (int64_t uh = 0; uh < kh; ++uh) {
      const Vec* g = ring.row(first_row + uh);
      for_each_block(kw, [&](int64_t u, auto count) { gathered_axpys<count()>(logits + uh * kw + u, g + u * D, D, acc); });
    }
    store_lanes(acc, D, _mm512_set1_ps(scale), t.column, t.lanes, dq + i * W * D);
  }
}

// Backward key pass of one key tile over the rows of one dilation group: dk = scale sum ds q and
// dv = sum p dout over the keys' inverse neighbourhoods, recomputing p and ds from lse and delta.
void key_sweep(const KeyTile& t, const HeadShape& s, const float* table, int64_t group, const Problem& p, float scale,
               const BackwardPlane& x, float* dk, float* dv, BackwardScratch& scratch) {
  const int64_t D = p.dim, W = p.width, H = p.height, kh = s.kernel_h, dh = s.dilation_h, M = t.max_count;
  Vec *k_t = scratch.k_t.data(), *v_t = scratch.v_t.data();
  Vec *dk_acc = scratch.dk_acc.data(), *dv_acc = scratch.dv_acc.data();
  Idx query[kMaxInverse];  // lane l's m-th query: window element query_offset[l] + m
  slot_indices(t.query_offset, M, query);
  const Idx count = _mm512_load_si512(t.count), bias_col = _mm512_load_si512(t.bias_col);
  // A gathered query row: M * D registers of q, then of grad_out, then M of lse and M of delta.
  RowRing ring(2 * kh - 1, 2 * M * D + 2 * M, scratch.key_ring.data());
  for (int64_t a = group; a < H; a += dh) {
    int64_t i0, i1;
    inverse_window(a, H, kh, dh, &i0, &i1);
    const int64_t first_row = (i0 - group) / dh, end_row = (i1 - group + dh - 1) / dh;
    ring.fill(end_row, [&](int64_t r, Vec* g) {
      const int64_t i = group + r * dh;
      gather_row(x.q + i * W * D, t.window, D, query, M, g);
      gather_row(x.dout + i * W * D, t.window, D, query, M, g + M * D);
      gather_values(x.lse + i * W, t.window, query, M, g + 2 * M * D);
      gather_values(x.delta + i * W, t.window, query, M, g + 2 * M * D + M);
    });
    lanes_of(x.k + a * W * D, t.column, D, k_t);
    lanes_of(x.v + a * W * D, t.column, D, v_t);
    std::fill(dk_acc, dk_acc + D, _mm512_setzero_ps());
    std::fill(dv_acc, dv_acc + D, _mm512_setzero_ps());
    for (int64_t r = first_row; r < end_row; ++r) {
      const Vec *q_g = ring.row(r), *dout_g = q_g + M * D, *lse_g = q_g + 2 * M * D, *delta_g = lse_g + M;
      const int64_t i = group + r * dh;
      const BiasRow bias(table ? table + bias_index(i, a, kh, dh) * s.bias_cols() : nullptr, s.bias_cols());
      for_each_block(M, [&](int64_t m0, auto block) {
        constexpr int C = block();
        Vec prob[C], ds[C];
        gathered_dots<C>(k_t, q_g + m0 * D, D, prob);
        gathered_dots<C>(v_t, dout_g + m0 * D, D, ds);
        for (int c = 0; c < C; ++c) {
          const int64_t m = m0 + c;
          const __mmask16 attends = _mm512_cmpgt_epi32_mask(count, _mm512_set1_epi32(static_cast<int32_t>(m)));
          const Vec logit = _mm512_fmadd_ps(prob[c], _mm512_set1_ps(scale), bias.at(plus(bias_col, -m)));
          prob[c] = _mm512_maskz_mov_ps(attends, exp_nonpositive(_mm512_sub_ps(logit, lse_g[m])));
          ds[c] = _mm512_mul_ps(prob[c], _mm512_sub_ps(ds[c], delta_g[m]));
        }
        gathered_axpys<C>(prob, dout_g + m0 * D, D, dv_acc);
        gathered_axpys<C>(ds, q_g + m0 * D, D, dk_acc);
      });
    }
    store_lanes(dk_acc, D, _mm512_set1_ps(scale), t.column, t.lanes, dk + a * W * D);
    store_lanes(dv_acc, D, _mm512_set1_ps(1.f), t.column, t.lanes, dv + a * W * D);
  }
}

std::vector<std::vector<KeyTile>> key_tiles_of(const std::vector<RowLayout>& layouts) {
  std::vector<std::vector<KeyTile>> tiles;
  for (const RowLayout& layout : layouts) tiles.push_back(layout.key_tiles);
  return tiles;
}

// Bias-gradient partial tables per plane of the backward pass: one per query-pass task slot.
int64_t bias_parts(const Groups& groups, int64_t W) {
  const std::vector<std::vector<QueryTile>> tiles = query_tiles_of(make_layouts(groups, W));
  return Tasks<QueryTile>(tiles, groups).per_plane;
}

// dq, dk, dv (every element written) and the bias-gradient partials [B * heads * bias_parts(), bias_stride].
// The query-pass and key-pass tasks run in one parallel region (they only share the inputs).
void backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
              const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, float* bias_partial, int64_t bias_stride,
              const Groups& groups, const BiasTables<float>& bias, const Problem& p, float scale) {
  const float *gp = dout.data_ptr<float>(), *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *vp = v.data_ptr<float>(), *op = out.data_ptr<float>(), *lp = lse.data_ptr<float>();
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  const int64_t D = p.dim, plane = p.plane(), planes = p.batch * p.heads, area = groups.max_kernel_area();

  Tensor delta_tensor = at::empty({planes * plane}, q.options());  // grad_out . out per query
  float* delta = delta_tensor.data_ptr<float>();
  parallel_tasks(p.rows(), [] { return 0; }, [&](int, int64_t row) {
    for (int64_t query = row * p.width; query < (row + 1) * p.width; ++query)
      delta[query] = dot<0>(gp + query * D, op + query * D, D);
  });

  const std::vector<RowLayout> layouts = make_layouts(groups, p.width);
  const std::vector<std::vector<QueryTile>> query_tiles = query_tiles_of(layouts);
  const std::vector<std::vector<KeyTile>> key_tiles = key_tiles_of(layouts);
  const Tasks<QueryTile> query_tasks(query_tiles, groups);
  const Tasks<KeyTile> key_tasks(key_tiles, groups);
  int64_t query_ring = 0, key_ring = 0;
  for (const HeadShape& s : groups.heads) {
    query_ring = std::max(query_ring, s.kernel_h * 2 * s.kernel_w * D);
    for (const KeyTile& t : key_tiles[s.group])
      key_ring = std::max(key_ring, (2 * s.kernel_h - 1) * (2 * t.max_count * D + 2 * t.max_count));
  }
  auto make_scratch = [&] {
    return BackwardScratch{Registers(D),    Registers(D),         Registers(area), Registers(area),
                           Registers(D),    Registers(bias_stride), Registers(D),  Registers(D),
                           Registers(D),    Registers(D),         Registers(query_ring), Registers(key_ring)};
  };
  const int64_t query_task_count = planes * query_tasks.per_plane;
  parallel_tasks(query_task_count + planes * key_tasks.per_plane, make_scratch, [&](BackwardScratch& scratch, int64_t task) {
    if (task < query_task_count) {
      const int64_t bh = task / query_tasks.per_plane;
      const HeadShape& s = groups.heads[bh % p.heads];
      const BackwardPlane x{qp + bh * plane * D, kp + bh * plane * D, vp + bh * plane * D, gp + bh * plane * D,
                            lp + bh * plane, delta + bh * plane};
      query_tasks.run(s, task % query_tasks.per_plane, [&](int64_t group, const QueryTile& t) {
        const float* table = bias.of(s);
        Vec* bias_acc = scratch.bias_acc.data();
        if (table) std::fill(bias_acc, bias_acc + s.bias_area(), _mm512_setzero_ps());
        query_sweep(t, s, table, group, p, scale, x, dqp + bh * plane * D, scratch);
        if (table)
          for (int64_t e = 0; e < s.bias_area(); ++e) bias_partial[task * bias_stride + e] = _mm512_reduce_add_ps(bias_acc[e]);
      });
    } else {
      const int64_t key_task = task - query_task_count, bh = key_task / key_tasks.per_plane;
      const HeadShape& s = groups.heads[bh % p.heads];
      const BackwardPlane x{qp + bh * plane * D, kp + bh * plane * D, vp + bh * plane * D, gp + bh * plane * D,
                            lp + bh * plane, delta + bh * plane};
      key_tasks.run(s, key_task % key_tasks.per_plane, [&](int64_t group, const KeyTile& t) {
        key_sweep(t, s, bias.of(s), group, p, scale, x, dkp + bh * plane * D, dvp + bh * plane * D, scratch);
      });
    }
  });
}

}  // namespace tiled
#endif  // __AVX512F__

// Fused forward for one dtype: the tiled AVX-512 kernels where they apply, else the portable ones.
template <typename T>
void fused_forward_any(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Groups& groups, const BiasTables<T>& bias, const Problem& p, T scale) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (tiled::supports(groups)) return tiled::forward(q, k, v, out, lse, groups, bias, p, scale);
  }
#endif
  dispatch_head_dim<T>(p.dim, [&](auto dim) { fused_forward<T, dim()>(q, k, v, out, lse, groups, bias, p, scale); });
}

// Runs fn(partial) on zeroed bias-gradient partials [B * heads * parts, max bias area] (none without a
// bias), then sums them into each group's bias gradient.
template <typename T, typename Fn>
std::vector<Tensor> with_bias_partials(int64_t parts, const Groups& groups, const BiasTables<T>& bias,
                                       const Problem& p, const at::TensorOptions& options, const Fn& fn) {
  const int64_t stride = groups.max_bias_area();
  Tensor partial = at::zeros({bias.any() ? p.batch * p.heads * parts * stride : 0}, options);
  fn(partial.data_ptr<T>(), stride);
  std::vector<bool> has_bias;
  for (const T* t : bias.tables) has_bias.push_back(t != nullptr);
  return reduce_bias_grad(partial.data_ptr<T>(), stride, parts, p, groups, has_bias, options);
}

// Fused backward for one dtype (kernels chosen as in fused_forward_any): fills dq, dk, dv and returns
// the bias gradient of each group.
template <typename T>
std::vector<Tensor> fused_backward_any(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                       const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv,
                                       const Groups& groups, const BiasTables<T>& bias, const Problem& p, T scale) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    if (tiled::supports(groups))
      return with_bias_partials(tiled::bias_parts(groups, p.width), groups, bias, p, q.options(), [&](float* partial, int64_t stride) {
        tiled::backward(dout, q, k, v, out, lse, dq, dk, dv, partial, stride, groups, bias, p, scale);
      });
  }
#endif
  for (Tensor* grad : {&dq, &dk, &dv}) grad->zero_();  // the portable kernels accumulate
  return with_bias_partials(p.height, groups, bias, p, q.options(), [&](T* partial, int64_t) {
    dispatch_head_dim<T>(p.dim, [&](auto dim) {
      fused_backward<T, dim()>(dout, q, k, v, out, lse, dq, dk, dv, partial, groups, bias, p, scale);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Unfused ops. na2d_qk: attn[q, u] = q . k[nb(q, u)] + rpb;  na2d_av: out[q] = sum_u attn[q, u] v[nb(q, u)].
// The inverse passes need the slot of key (a, c) in query (i, j)'s window.

inline int64_t slot_of(int64_t i, int64_t j, int64_t a, int64_t c, const HeadShape& s, int64_t H, int64_t W) {
  const int64_t uh = (a - window_start(i, H, s.kernel_h, s.dilation_h)) / s.dilation_h;
  const int64_t uw = (c - window_start(j, W, s.kernel_w, s.dilation_w)) / s.dilation_w;
  return uh * s.kernel_w + uw;
}

// Calls fn(slot, key, bias_index) for every slot of query (i, j) in plane `plane`.
template <typename Fn>
inline void for_each_neighbor(int64_t plane, int64_t i, int64_t j, const HeadShape& s, const Problem& p,
                              const Fn& fn) {
  const int64_t row0 = window_start(i, p.height, s.kernel_h, s.dilation_h);
  const int64_t col0 = window_start(j, p.width, s.kernel_w, s.dilation_w);
  int64_t u = 0;
  for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
    const int64_t a = row0 + uh * s.dilation_h;
    const int64_t brow = bias_index(i, a, s.kernel_h, s.dilation_h) * s.bias_cols();
    for (int64_t uw = 0; uw < s.kernel_w; ++uw, ++u) {
      const int64_t c = col0 + uw * s.dilation_w;
      fn(u, plane + a * p.width + c, brow + bias_index(j, c, s.kernel_w, s.dilation_w));
    }
  }
}

// Calls fn(query, slot) for every query that attends key (a, c) in plane `plane`.
template <typename Fn>
inline void for_each_inverse_neighbor(int64_t plane, int64_t a, int64_t c, const HeadShape& s,
                                      const Problem& p, const Fn& fn) {
  int64_t i0, i1, j0, j1;
  inverse_window(a, p.height, s.kernel_h, s.dilation_h, &i0, &i1);
  inverse_window(c, p.width, s.kernel_w, s.dilation_w, &j0, &j1);
  for (int64_t i = i0; i < i1; i += s.dilation_h)
    for (int64_t j = j0; j < j1; j += s.dilation_w)
      fn(plane + i * p.width + j, slot_of(i, j, a, c, s, p.height, p.width));
}

template <typename T>
void qk_forward(const Tensor& q, const Tensor& k, Tensor& attn, const HeadShape& s, const T* table,
                const Problem& p) {
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>();
  T* ap = attn.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area();
  const int64_t table_size = s.bias_area();
  parallel_rows(p, [&](int64_t bh, int64_t i) {
    const T* head_table = table ? table + (bh % p.heads) * table_size : nullptr;
    const int64_t plane = bh * p.plane();
    for (int64_t j = 0; j < p.width; ++j) {
      const int64_t query = plane + i * p.width + j;
      T* out = ap + query * area;
      for_each_neighbor(plane, i, j, s, p, [&](int64_t u, int64_t key, int64_t bidx) {
        out[u] = dot<0>(qp + query * D, kp + key * D, D) + (head_table ? head_table[bidx] : T(0));
      });
    }
  });
}

template <typename T>
void qk_backward(const Tensor& dattn, const Tensor& q, const Tensor& k, Tensor& dq, Tensor& dk,
                 T* bias_partial, const HeadShape& s, const Problem& p) {
  const T *gp = dattn.data_ptr<T>(), *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>();
  T *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area(), table_size = s.bias_area();
  parallel_rows(p, [&](int64_t bh, int64_t i) {
    T* partial = bias_partial ? bias_partial + (bh * p.height + i) * table_size : nullptr;
    const int64_t plane = bh * p.plane();
    for (int64_t j = 0; j < p.width; ++j) {
      const int64_t query = plane + i * p.width + j;
      const T* g = gp + query * area;
      for_each_neighbor(plane, i, j, s, p, [&](int64_t u, int64_t key, int64_t bidx) {
        axpy<0>(g[u], kp + key * D, dqp + query * D, D);
        if (partial) partial[bidx] += g[u];
      });
    }
  });
  parallel_rows(p, [&](int64_t bh, int64_t a) {
    const int64_t plane = bh * p.plane();
    for (int64_t c = 0; c < p.width; ++c) {
      const int64_t key = plane + a * p.width + c;
      for_each_inverse_neighbor(plane, a, c, s, p, [&](int64_t query, int64_t u) {
        axpy<0>(gp[query * area + u], qp + query * D, dkp + key * D, D);
      });
    }
  });
}

template <typename T>
void av_forward(const Tensor& attn, const Tensor& v, Tensor& out, const HeadShape& s, const Problem& p) {
  const T *ap = attn.data_ptr<T>(), *vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area();
  parallel_rows(p, [&](int64_t bh, int64_t i) {
    const int64_t plane = bh * p.plane();
    for (int64_t j = 0; j < p.width; ++j) {
      const int64_t query = plane + i * p.width + j;
      T* o = op + query * D;
      std::fill(o, o + D, T(0));
      for_each_neighbor(plane, i, j, s, p, [&](int64_t u, int64_t key, int64_t) {
        axpy<0>(ap[query * area + u], vp + key * D, o, D);
      });
    }
  });
}

template <typename T>
void av_backward(const Tensor& dout, const Tensor& attn, const Tensor& v, Tensor& dattn, Tensor& dv,
                 const HeadShape& s, const Problem& p) {
  const T *gp = dout.data_ptr<T>(), *ap = attn.data_ptr<T>(), *vp = v.data_ptr<T>();
  T *dap = dattn.data_ptr<T>(), *dvp = dv.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area();
  parallel_rows(p, [&](int64_t bh, int64_t i) {
    const int64_t plane = bh * p.plane();
    for (int64_t j = 0; j < p.width; ++j) {
      const int64_t query = plane + i * p.width + j;
      for_each_neighbor(plane, i, j, s, p, [&](int64_t u, int64_t key, int64_t) {
        dap[query * area + u] = dot<0>(gp + query * D, vp + key * D, D);
      });
    }
  });
  parallel_rows(p, [&](int64_t bh, int64_t a) {
    const int64_t plane = bh * p.plane();
    for (int64_t c = 0; c < p.width; ++c) {
      const int64_t key = plane + a * p.width + c;
      for_each_inverse_neighbor(plane, a, c, s, p, [&](int64_t query, int64_t u) {
        axpy<0>(ap[query * area + u], gp + query * D, dvp + key * D, D);
      });
    }
  });
}

Groups single_group(const Tensor& table, const Problem& p) {
  Groups groups = parse_groups(table, p);
  TORCH_CHECK(groups.count() == 1, "na2d_qk / na2d_av take a single head group");
  return groups;
}

void check_float(const Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "the CPU kernels take float32 or float64, got ", x.scalar_type());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points (bound in bindings.cpp).

std::vector<Tensor> na2d_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& group_table,
                                 const std::vector<Tensor>& rpbs, double scale) {
  const Problem p = problem_of(q, "q");
  check_float(q);
  check_same(k, q, "k");
  check_same(v, q, "v");
  const Groups groups = parse_groups(group_table, p);
  Tensor out = at::empty_like(q);
  Tensor lse = at::empty({p.batch, p.heads, p.height, p.width}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_forward", [&] {
    BiasTables<scalar_t> bias(rpbs, groups);
    fused_forward_any<scalar_t>(q, k, v, out, lse, groups, bias, p, static_cast<scalar_t>(scale));
  });
  return {out, lse};
}

std::vector<Tensor> na2d_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& lse, const Tensor& group_table,
                                  const std::vector<Tensor>& rpbs, double scale) {
  const Problem p = problem_of(q, "q");
  check_float(q);
  check_same(k, q, "k");
  check_same(v, q, "v");
  check_same(out, q, "out");
  check_same(dout, q, "grad_out");
  TORCH_CHECK(lse.is_contiguous() && lse.dim() == 4 && lse.numel() == p.rows() * p.width, "lse must be [B, heads, H, W]");
  const Groups groups = parse_groups(group_table, p);
  Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  std::vector<Tensor> result{dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_backward", [&] {
    BiasTables<scalar_t> bias(rpbs, groups);
    for (auto& g : fused_backward_any<scalar_t>(dout, q, k, v, out, lse, dq, dk, dv, groups, bias, p,
                                                static_cast<scalar_t>(scale)))
      result.push_back(g);
  });
  return result;
}

Tensor na2d_qk_forward(const Tensor& q, const Tensor& k, const Tensor& group_table, const Tensor& rpb) {
  const Problem p = problem_of(q, "q");
  check_float(q);
  check_same(k, q, "k");
  const Groups groups = single_group(group_table, p);
  const HeadShape& s = groups.first_head(0);
  Tensor attn = at::empty({p.batch, p.heads, p.height, p.width, s.kernel_area()}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_forward", [&] {
    BiasTables<scalar_t> bias({rpb}, groups);
    qk_forward<scalar_t>(q, k, attn, s, bias.tables[0], p);
  });
  return attn;
}

std::vector<Tensor> na2d_qk_backward(const Tensor& dattn, const Tensor& q, const Tensor& k,
                                     const Tensor& group_table, bool has_rpb) {
  const Problem p = problem_of(q, "q");
  check_float(q);
  check_same(k, q, "k");
  check_same(dattn, q, "grad_attn", false);
  const Groups groups = single_group(group_table, p);
  const HeadShape& s = groups.first_head(0);
  TORCH_CHECK(dattn.size(4) == s.kernel_area(), "grad_attn must have kernel_h * kernel_w slots");
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k);
  Tensor drpb = at::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_qk_backward", [&] {
    Tensor partial = at::zeros({has_rpb ? p.rows() * s.bias_area() : 0}, q.options());
    scalar_t* partial_ptr = has_rpb ? partial.data_ptr<scalar_t>() : nullptr;
    qk_backward<scalar_t>(dattn, q, k, dq, dk, partial_ptr, s, p);
    if (has_rpb) drpb = reduce_bias_grad(partial_ptr, s.bias_area(), p.height, p, groups, {true}, q.options())[0];
  });
  return {dq, dk, drpb};
}

Tensor na2d_av_forward(const Tensor& attn, const Tensor& v, const Tensor& group_table) {
  const Problem p = problem_of(v, "v");
  check_float(v);
  check_same(attn, v, "attn", false);
  const Groups groups = single_group(group_table, p);
  const HeadShape& s = groups.first_head(0);
  TORCH_CHECK(attn.size(4) == s.kernel_area(), "attn must have kernel_h * kernel_w slots");
  Tensor out = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_forward", [&] { av_forward<scalar_t>(attn, v, out, s, p); });
  return out;
}

std::vector<Tensor> na2d_av_backward(const Tensor& dout, const Tensor& attn, const Tensor& v,
                                     const Tensor& group_table) {
  const Problem p = problem_of(v, "v");
  check_float(v);
  check_same(dout, v, "grad_out");
  check_same(attn, v, "attn", false);
  const Groups groups = single_group(group_table, p);
  const HeadShape& s = groups.first_head(0);
  TORCH_CHECK(attn.size(4) == s.kernel_area(), "attn must have kernel_h * kernel_w slots");
  Tensor dattn = at::empty_like(attn), dv = at::zeros_like(v);
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "na2d_av_backward",
                             [&] { av_backward<scalar_t>(dout, attn, v, dattn, dv, s, p); });
  return {dattn, dv};
}

// The index math of na2d_index.h over a whole axis, for tests: [L, 3] = (window start, inverse
// first, inverse end) per position.
Tensor axis_tables(int64_t length, int64_t kernel, int64_t dilation) {
  TORCH_CHECK(kernel > 1 && kernel % 2 == 1 && dilation >= 1 && kernel * dilation <= length,
              "axis_tables: invalid (length, kernel, dilation)");
  Tensor t = at::empty({length, 3}, at::kLong);
  int64_t* p = t.data_ptr<int64_t>();
  for (int64_t x = 0; x < length; ++x) {
    p[3 * x] = window_start(x, length, kernel, dilation);
    inverse_window(x, length, kernel, dilation, &p[3 * x + 1], &p[3 * x + 2]);
  }
  return t;
}

}  // namespace cpu
}  // namespace natten_ops
