// The portable CPU kernels: fused na2d (forward, backward) and the unfused na2d_qk / na2d_av, for any
// float type and head_dim, free of intrinsics (the compiler vectorises the loops over head_dim).
//
// Work is split over (batch, head, row) with at::parallel_for. Every output element has exactly one
// owner: dQ is accumulated over the query's neighborhood, dK / dV over the key's inverse
// neighborhood (no atomics), and dRPB is reduced from per-row partial sums in a fixed order, so
// results are bitwise reproducible for a given thread count.
//
// NaN and Inf propagate as in natten_ops/reference.py: logits are (scale * q) . k + bias, the softmax
// subtracts the row's max (a NaN or +inf logit, or a row of -inf logits, gives a NaN row) and exp of
// -inf is exactly 0.
#pragma once

#include "kernel_common.h"

namespace natten_ops {
namespace cpu {

// ---------------------------------------------------------------------------------------------
// Fused na2d: out = softmax(scale * q.k + rpb) v, saving the log-sum-exp for the backward pass.

template <typename T, int kDim>
void fused_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                   const Groups& groups, const BiasTables<T>& bias, const Problem& p, T scale) {
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
  const int64_t D = kDim > 0 ? kDim : p.dim, W = p.width, area = groups.max_kernel_area();
  at::parallel_for(0, p.rows(), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> logits(area), acc(D), q_scaled(D);
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
        scale_into<kDim>(scale, qp + query * D, q_scaled.data(), D);  // (scale * q) . k, as the reference
        const T* bias_at = table ? table + bias_row0 * s.bias_cols() + bias_index(j, col0, s.kernel_w, s.dilation_w)
                                 : nullptr;  // bias of slot (uh, uw): bias_at[uh * bias_cols + uw]
        int64_t u = 0;
        for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
          const int64_t key_row = (plane + (row0 + uh * s.dilation_h) * W + col0) * D;
          for (int64_t uw = 0; uw < s.kernel_w; ++uw, ++u) {
            key[u] = key_row + uw * s.dilation_w * D;
            logits[u] = dot<kDim>(q_scaled.data(), kp + key[u], D) + (bias_at ? bias_at[uh * s.bias_cols() + uw] : T(0));
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
    std::vector<T> prob(area), ds(area), lse_rep(area), delta_rep(area), q_scaled(D);
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
        const T* gv = gp + query * D;
        scale_into<kDim>(scale, qp + query * D, q_scaled.data(), D);
        const T dlt = dot<kDim>(gv, op + query * D, D);
        delta[query] = dlt;
        int64_t u = 0;
        for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
          const int64_t key_row = (plane + (row0 + uh * s.dilation_h) * W + col0) * D;
          for (int64_t uw = 0; uw < s.kernel_w; ++uw, ++u) {
            key[u] = key_row + uw * s.dilation_w * D;
            bias_at[u] = bias0 + uh * s.bias_cols() + uw;
            prob[u] = dot<kDim>(q_scaled.data(), kp + key[u], D) + (table ? table[bias_at[u]] : T(0));
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
    std::vector<T> prob(bias_stride), ds(bias_stride), lse_of(bias_stride), delta_of(bias_stride), k_scaled(D);
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
        const T* vv = vp + key * D;
        scale_into<kDim>(scale, kp + key * D, k_scaled.data(), D);  // q . (scale * k): the same products
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
            prob[n] = dot<kDim>(qp + query * D, k_scaled.data(), D) +
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

}  // namespace cpu
}  // namespace natten_ops
