// The per-element math of the CUDA kernels, written once for the device and the host.
//
// Every function here computes one output element (or one query / one key of the fused kernels)
// from raw pointers and is __host__ __device__: the CUDA kernels call them from their threads, and
// the CPU harness (cuda/harness.cpp, built in CI on machines without a GPU) calls the very same
// functions over the whole grid so tests can compare them with the reference backend.
//
// Layout: q, k, v, out, grad tensors are contiguous [B, heads, H, W, D]; a "row" is one (b, head,
// i, j) position, row = (plane * H + i) * W + j with plane = b * heads + head; element d of a row is
// at row * D + d. attn / grad_attn are [B, heads, H, W, kh * kw] with slot u = uh * kw + uw. Bias
// tables are [group_heads, 2 kh - 1, 2 kw - 1]. Offsets are int64 throughout.
//
// The fused functions split head_dim over a "team" of `lanes` threads (lane l holds elements
// d = l + e * lanes, e < kSlots) and take `sum`, a functor that returns the team-wide sum of a value
// to every lane: a warp shuffle on the device, the identity on the host (lanes = 1).
#pragma once

#include <math.h>

#include "na2d_index.h"

namespace natten_ops {

// Accumulation type: float for float / half / bfloat16, double for double.
template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Accumulate<T>::type;

NA_HOST_DEVICE float na_exp(float x) { return expf(x); }
NA_HOST_DEVICE double na_exp(double x) { return exp(x); }
NA_HOST_DEVICE float na_log(float x) { return logf(x); }
NA_HOST_DEVICE double na_log(double x) { return log(x); }

// The spatial grid of one call and how the head planes map to bias tables.
struct Plane {
  int64_t heads, height, width, dim;
  NA_HOST_DEVICE int64_t row(int64_t plane, int64_t i, int64_t j) const { return (plane * height + i) * width + j; }
  NA_HOST_DEVICE int64_t rows(int64_t batch) const { return batch * heads * height * width; }  // of the batch
};

// The window of query (i, j) for one head shape: first key row/column and bias row/column offsets.
struct QueryWindow {
  int64_t row0, col0;  // first key of the window
  int64_t bias_row0;   // bias_index(i, row0) * bias_cols + bias_index(j, col0)
  NA_HOST_DEVICE QueryWindow(int64_t i, int64_t j, const HeadShape& s, const Plane& p) {
    row0 = window_start(i, p.height, s.kernel_h, s.dilation_h);
    col0 = window_start(j, p.width, s.kernel_w, s.dilation_w);
    bias_row0 = bias_index(i, row0, s.kernel_h, s.dilation_h) * s.bias_cols() +
                bias_index(j, col0, s.kernel_w, s.dilation_w);
  }
  // Key row of slot (uh, uw) in plane `plane`; the slot's bias entry is bias_row0 + uh * bias_cols + uw.
  NA_HOST_DEVICE int64_t key(int64_t plane, int64_t uh, int64_t uw, const HeadShape& s, const Plane& p) const {
    return p.row(plane, row0 + uh * s.dilation_h, col0 + uw * s.dilation_w);
  }
};

// Slot of key (a, c) in the window of query (i, j) (the key must be in that window).
NA_HOST_DEVICE int64_t slot_of(int64_t i, int64_t j, int64_t a, int64_t c, const HeadShape& s, const Plane& p) {
  const int64_t uh = (a - window_start(i, p.height, s.kernel_h, s.dilation_h)) / s.dilation_h;
  const int64_t uw = (c - window_start(j, p.width, s.kernel_w, s.dilation_w)) / s.dilation_w;
  return uh * s.kernel_w + uw;
}

// Bias entry of query (i, j) attending key (a, c): row-major in the [2 kh - 1, 2 kw - 1] table.
NA_HOST_DEVICE int64_t bias_entry(int64_t i, int64_t j, int64_t a, int64_t c, const HeadShape& s) {
  return bias_index(i, a, s.kernel_h, s.dilation_h) * s.bias_cols() + bias_index(j, c, s.kernel_w, s.dilation_w);
}

template <typename T>
NA_HOST_DEVICE acc_t<T> dot(const T* x, const T* y, int64_t dim) {
  acc_t<T> total = 0;
  for (int64_t d = 0; d < dim; ++d) total += static_cast<acc_t<T>>(x[d]) * static_cast<acc_t<T>>(y[d]);
  return total;
}

// ---------------------------------------------------------------------------------------------
// Unfused ops: one owner per output element.

// na2d_qk: attn[row, u] = q[row] . k[key(u)] + bias[u] (bias may be null).
template <typename T>
NA_HOST_DEVICE acc_t<T> qk_element(const T* q, const T* k, const T* bias, const HeadShape& s, const Plane& p,
                                   int64_t plane, int64_t i, int64_t j, int64_t u) {
  const QueryWindow w(i, j, s, p);
  const int64_t uh = u / s.kernel_w, uw = u % s.kernel_w;
  acc_t<T> logit = dot(q + p.row(plane, i, j) * p.dim, k + w.key(plane, uh, uw, s, p) * p.dim, p.dim);
  if (bias) logit += static_cast<acc_t<T>>(bias[w.bias_row0 + uh * s.bias_cols() + uw]);
  return logit;
}

// Gathers over the window of query (i, j): sum_u weights[row, u] * x[key(u), d].
template <typename T>
NA_HOST_DEVICE acc_t<T> window_sum(const T* weights, const T* x, const HeadShape& s, const Plane& p, int64_t plane,
                                   int64_t i, int64_t j, int64_t d) {
  const QueryWindow w(i, j, s, p);
  const T* row_weights = weights + p.row(plane, i, j) * s.kernel_area();
  acc_t<T> total = 0;
  for (int64_t uh = 0; uh < s.kernel_h; ++uh)
    for (int64_t uw = 0; uw < s.kernel_w; ++uw)
      total += static_cast<acc_t<T>>(row_weights[uh * s.kernel_w + uw]) *
               static_cast<acc_t<T>>(x[w.key(plane, uh, uw, s, p) * p.dim + d]);
  return total;
}

// Scatters by gathering over the inverse window of key (a, c): sum over the queries that attend it
// of weights[query, slot(query -> key)] * x[query, d]. The owner of (key, d) writes it: no atomics.
template <typename T>
NA_HOST_DEVICE acc_t<T> inverse_window_sum(const T* weights, const T* x, const HeadShape& s, const Plane& p,
                                           int64_t plane, int64_t a, int64_t c, int64_t d) {
  int64_t i0, i1, j0, j1;
  inverse_window(a, p.height, s.kernel_h, s.dilation_h, &i0, &i1);
  inverse_window(c, p.width, s.kernel_w, s.dilation_w, &j0, &j1);
  acc_t<T> total = 0;
  for (int64_t i = i0; i < i1; i += s.dilation_h)
    for (int64_t j = j0; j < j1; j += s.dilation_w) {
      const int64_t query = p.row(plane, i, j);
      total += static_cast<acc_t<T>>(weights[query * s.kernel_area() + slot_of(i, j, a, c, s, p)]) *
               static_cast<acc_t<T>>(x[query * p.dim + d]);
    }
  return total;
}

// na2d_av backward: grad_attn[row, u] = grad_out[row] . v[key(u)].
template <typename T>
NA_HOST_DEVICE acc_t<T> av_grad_attn_element(const T* grad_out, const T* v, const HeadShape& s, const Plane& p,
                                             int64_t plane, int64_t i, int64_t j, int64_t u) {
  const QueryWindow w(i, j, s, p);
  return dot(grad_out + p.row(plane, i, j) * p.dim, v + w.key(plane, u / s.kernel_w, u % s.kernel_w, s, p) * p.dim,
             p.dim);
}

// The value that query (i, j) of `plane` contributes to bias entry (br, bc): grad_attn at the slot whose
// key has that relative position, or 0 when no slot of the window does.
template <typename T>
NA_HOST_DEVICE acc_t<T> bias_grad_term(const T* grad_attn, const HeadShape& s, const Plane& p, int64_t plane,
                                       int64_t i, int64_t j, int64_t br, int64_t bc) {
  const QueryWindow w(i, j, s, p);
  const int64_t row_first = w.bias_row0 / s.bias_cols(), col_first = w.bias_row0 % s.bias_cols();
  const int64_t uh = br - row_first, uw = bc - col_first;
  if (uh < 0 || uh >= s.kernel_h || uw < 0 || uw >= s.kernel_w) return 0;
  return static_cast<acc_t<T>>(grad_attn[p.row(plane, i, j) * s.kernel_area() + uh * s.kernel_w + uw]);
}

// ---------------------------------------------------------------------------------------------
// Fused attention: softmax(scale * q . k + bias) . v with the log-sum-exp saved, and its backward.

template <typename T>
struct FusedArgs {
  const T *q, *k, *v;
  const T* bias;        // this head's [2 kh - 1, 2 kw - 1] table, or null
  acc_t<T> scale;
  // Backward only.
  const T* grad_out;
  const acc_t<T>* lse;    // [rows]
  const acc_t<T>* delta;  // [rows]: grad_out . out
};

// Team-parallel dot product of a register-held vector with x[row * D ...].
template <int kSlots, typename T, typename Sum>
NA_HOST_DEVICE acc_t<T> team_dot(const acc_t<T> (&held)[kSlots], const T* x, int64_t dim, int lane, int lanes,
                                 const Sum& sum) {
  acc_t<T> partial = 0;
#pragma unroll
  for (int e = 0; e < kSlots; ++e) {
    const int64_t d = lane + static_cast<int64_t>(e) * lanes;
    if (d < dim) partial += held[e] * static_cast<acc_t<T>>(x[d]);
  }
  return sum(partial);
}

template <int kSlots, typename T>
NA_HOST_DEVICE void team_load(acc_t<T> (&held)[kSlots], const T* x, int64_t dim, int lane, int lanes) {
#pragma unroll
  for (int e = 0; e < kSlots; ++e) {
    const int64_t d = lane + static_cast<int64_t>(e) * lanes;
    held[e] = d < dim ? static_cast<acc_t<T>>(x[d]) : acc_t<T>(0);
  }
}

template <int kSlots, typename T>
NA_HOST_DEVICE void team_store(const acc_t<T> (&held)[kSlots], acc_t<T> factor, T* x, int64_t dim, int lane,
                               int lanes) {
#pragma unroll
  for (int e = 0; e < kSlots; ++e) {
    const int64_t d = lane + static_cast<int64_t>(e) * lanes;
    if (d < dim) x[d] = static_cast<T>(held[e] * factor);
  }
}

// Forward of query (i, j): out[row] and lse[row], online softmax over the window. Logits are
// (scale * q) . k + bias as in the reference, so NaN and Inf in q, k, v, scale or bias propagate as there.
template <int kSlots, typename T, typename Sum>
NA_HOST_DEVICE void fused_forward_query(const FusedArgs<T>& a, T* out, acc_t<T>* lse, const HeadShape& s,
                                        const Plane& p, int64_t plane, int64_t i, int64_t j, int lane, int lanes,
                                        const Sum& sum) {
  using Acc = acc_t<T>;
  const int64_t row = p.row(plane, i, j), D = p.dim;
  const QueryWindow w(i, j, s, p);
  Acc q[kSlots], acc[kSlots];
  team_load(q, a.q + row * D, D, lane, lanes);
#pragma unroll
  for (int e = 0; e < kSlots; ++e) q[e] *= a.scale, acc[e] = 0;
  Acc running_max = -INFINITY, denominator = 0;
  for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
    for (int64_t uw = 0; uw < s.kernel_w; ++uw) {
      const int64_t key = w.key(plane, uh, uw, s, p);
      Acc logit = team_dot(q, a.k + key * D, D, lane, lanes, sum);
      if (a.bias) logit += static_cast<Acc>(a.bias[w.bias_row0 + uh * s.bias_cols() + uw]);
      const Acc new_max = logit > running_max ? logit : running_max;
      // Shift by 0 while every logit so far is -inf, so that -inf - -inf (NaN) never appears: -inf
      // logits weigh 0, and a window of only -inf logits ends with denominator 0, hence a NaN output
      // as the reference's softmax gives. A NaN logit makes weight, denominator and output NaN.
      const Acc shift = new_max == -INFINITY ? Acc(0) : new_max;
      const Acc correction = na_exp(running_max - shift), weight = na_exp(logit - shift);
      denominator = denominator * correction + weight;
      const T* value = a.v + key * D;
#pragma unroll
      for (int e = 0; e < kSlots; ++e) {
        const int64_t d = lane + static_cast<int64_t>(e) * lanes;
        acc[e] = acc[e] * correction + (d < D ? weight * static_cast<Acc>(value[d]) : Acc(0));
      }
      running_max = new_max;
    }
  }
  team_store(acc, Acc(1) / denominator, out + row * D, D, lane, lanes);
  if (lane == 0) lse[row] = running_max + na_log(denominator);
}

// Softmax-gradient term of one (query, key) pair: p = exp(logit - lse), ds = p * (grad_out . v - delta).
template <typename Acc>
struct PairGrad {
  Acc prob, dlogit;
};

// Backward of query (i, j): grad_q[row] (scaled), and bias_grad(entry, dlogit) for every slot.
template <int kSlots, typename T, typename Sum, typename BiasGrad>
NA_HOST_DEVICE void fused_grad_query(const FusedArgs<T>& a, T* grad_q, const HeadShape& s, const Plane& p,
                                     int64_t plane, int64_t i, int64_t j, int lane, int lanes, const Sum& sum,
                                     const BiasGrad& bias_grad) {
  using Acc = acc_t<T>;
  const int64_t row = p.row(plane, i, j), D = p.dim;
  const QueryWindow w(i, j, s, p);
  Acc q[kSlots], dout[kSlots], dq[kSlots];
  team_load(q, a.q + row * D, D, lane, lanes);
  team_load(dout, a.grad_out + row * D, D, lane, lanes);
#pragma unroll
  for (int e = 0; e < kSlots; ++e) q[e] *= a.scale, dq[e] = 0;
  const Acc lse = a.lse[row], delta = a.delta[row];
  for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
    for (int64_t uw = 0; uw < s.kernel_w; ++uw) {
      const int64_t key = w.key(plane, uh, uw, s, p), entry = w.bias_row0 + uh * s.bias_cols() + uw;
      Acc logit = team_dot(q, a.k + key * D, D, lane, lanes, sum);
      if (a.bias) logit += static_cast<Acc>(a.bias[entry]);
      const Acc prob = na_exp(logit - lse);
      const Acc dlogit = prob * (team_dot(dout, a.v + key * D, D, lane, lanes, sum) - delta);
      const T* kv = a.k + key * D;
#pragma unroll
      for (int e = 0; e < kSlots; ++e) {
        const int64_t d = lane + static_cast<int64_t>(e) * lanes;
        if (d < D) dq[e] += dlogit * static_cast<Acc>(kv[d]);
      }
      bias_grad(entry, dlogit);
    }
  }
  team_store(dq, a.scale, grad_q + row * D, D, lane, lanes);
}

// Backward of key (a, c): grad_k[key] and grad_v[key] over the queries that attend it.
template <int kSlots, typename T, typename Sum>
NA_HOST_DEVICE void fused_grad_key(const FusedArgs<T>& a, T* grad_k, T* grad_v, const HeadShape& s, const Plane& p,
                                   int64_t plane, int64_t ka, int64_t kc, int lane, int lanes, const Sum& sum) {
  using Acc = acc_t<T>;
  const int64_t key = p.row(plane, ka, kc), D = p.dim;
  Acc kv[kSlots], vv[kSlots], dk[kSlots], dv[kSlots];
  team_load(kv, a.k + key * D, D, lane, lanes);
  team_load(vv, a.v + key * D, D, lane, lanes);
#pragma unroll
  for (int e = 0; e < kSlots; ++e) kv[e] *= a.scale, dk[e] = 0, dv[e] = 0;  // q . (scale * k): the reference's products
  int64_t i0, i1, j0, j1;
  inverse_window(ka, p.height, s.kernel_h, s.dilation_h, &i0, &i1);
  inverse_window(kc, p.width, s.kernel_w, s.dilation_w, &j0, &j1);
  for (int64_t i = i0; i < i1; i += s.dilation_h) {
    for (int64_t j = j0; j < j1; j += s.dilation_w) {
      const int64_t query = p.row(plane, i, j);
      const T *qv = a.q + query * D, *gv = a.grad_out + query * D;
      Acc logit = team_dot(kv, qv, D, lane, lanes, sum);
      if (a.bias) logit += static_cast<Acc>(a.bias[bias_entry(i, j, ka, kc, s)]);
      const Acc prob = na_exp(logit - a.lse[query]);
      const Acc dlogit = prob * (team_dot(vv, gv, D, lane, lanes, sum) - a.delta[query]);
#pragma unroll
      for (int e = 0; e < kSlots; ++e) {
        const int64_t d = lane + static_cast<int64_t>(e) * lanes;
        if (d < D) {
          dk[e] += dlogit * static_cast<Acc>(qv[d]);
          dv[e] += prob * static_cast<Acc>(gv[d]);
        }
      }
    }
  }
  team_store(dk, a.scale, grad_k + key * D, D, lane, lanes);
  team_store(dv, Acc(1), grad_v + key * D, D, lane, lanes);
}

}  // namespace natten_ops
