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

#include <algorithm>
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

// Sums per-row bias-gradient partials [B * heads * H, stride] into one [heads, 2kh-1, 2kw-1] table
// per group that has a bias (an empty tensor for the others), in a fixed order per head.
template <typename T>
std::vector<Tensor> reduce_bias_grad(const T* partial, int64_t stride, const Problem& p,
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
          for (int64_t i = 0; i < p.height; ++i) {
            const T* src = partial + ((b * p.heads + h) * p.height + i) * stride;
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
    dispatch_head_dim<scalar_t>(p.dim, [&](auto dim) {
      fused_forward<scalar_t, dim()>(q, k, v, out, lse, groups, bias, p, static_cast<scalar_t>(scale));
    });
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
  Tensor dq = at::zeros_like(q), dk = at::zeros_like(k), dv = at::zeros_like(v);
  std::vector<Tensor> result{dq, dk, dv};
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "na2d_backward", [&] {
    BiasTables<scalar_t> bias(rpbs, groups);
    const int64_t stride = groups.max_bias_area();
    Tensor partial = at::zeros({bias.any() ? p.rows() * stride : 0}, q.options());
    dispatch_head_dim<scalar_t>(p.dim, [&](auto dim) {
      fused_backward<scalar_t, dim()>(dout, q, k, v, out, lse, dq, dk, dv, partial.data_ptr<scalar_t>(), groups,
                                      bias, p, static_cast<scalar_t>(scale));
    });
    std::vector<bool> has_bias;
    for (const scalar_t* t : bias.tables) has_bias.push_back(t != nullptr);
    for (auto& g : reduce_bias_grad(partial.data_ptr<scalar_t>(), stride, p, groups, has_bias, q.options())) result.push_back(g);
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
    if (has_rpb) drpb = reduce_bias_grad(partial_ptr, s.bias_area(), p, groups, {true}, q.options())[0];
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
