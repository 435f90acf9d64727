// The portable CPU kernels: fused na2d (forward, backward) and the unfused na2d_qk / na2d_av, for any
// float type, head_dim and processor, free of intrinsics: the fused kernels put kLanes window slots
// side by side (lane vectors, below) and leave the instruction set to the compiler's vectoriser and
// generic vector types; the unfused ones take one query at a time.
//
// The fused kernels split the work into sweeps, runs of the rows of one dilation group in one (batch,
// head) plane, run in parallel with at::parallel_for; the unfused ones split it over (batch, head, row).
// Every output element has exactly one owner: dQ is summed over the query's neighborhood, dK / dV over
// the key's inverse neighborhood (no atomics), and dRPB is reduced from per-row partial sums in a fixed
// order, so results are bitwise reproducible, whatever the thread count.
//
// NaN and Inf propagate as in natten_ops/reference.py: logits are (scale * q) . k + bias, the softmax
// subtracts the row's max (a NaN or +inf logit, or a row of -inf logits, gives a NaN row) and exp of
// -inf is exactly 0; lanes outside a window never reach a result.
#pragma once

#include <limits>
#include <utility>

#include "kernel_common.h"

namespace natten_ops {
namespace cpu {

// ---------------------------------------------------------------------------------------------
// Lane vectors: kLanes consecutive window slots (or queries) side by side.
//
// Inside a row, columns are taken in dilation-group order (group 0's columns in order, then group 1's,
// ...), so the kw keys of a query's window are kw consecutive reordered columns, and so are the queries
// of a row that attend one key. A sweep keeps the rows it reads transposed in that order
// ([D][stride], stride = W + kLanes, zero past W), so the logits of one query against kLanes window
// slots of a key row are kLanes lane-wise dot products: for each d, one broadcast of the query's d-th
// value times kLanes consecutive values of row d, on any ISA the compiler vectorises for (AVX2,
// AVX-512, NEON). Slots past the window (kw is rounded up to whole vectors) read the zero padding or the
// next group's columns; their logits are replaced before use, so what they read never matters.
// Weighted sums of value rows (attn @ v, dq, dk, dv) run over head_dim on the rows as they are stored.

constexpr int64_t kLanes = 8;  // window slots per vector: one AVX2 register of floats

inline int64_t lane_vectors(int64_t n) { return (n + kLanes - 1) / kLanes; }

// Calls fn(std::integral_constant<int, n>{}) for 1 <= n <= kMax.
template <int kMax, typename Fn>
inline void with_constant(int64_t n, const Fn& fn) {
  if constexpr (kMax > 1) {
    if (n < kMax) return with_constant<kMax - 1>(n, fn);
  }
  fn(std::integral_constant<int, kMax>{});
}

// out[r * kLanes + l] = sum_d x[d] * rows[r][d * stride + l] for r < R, l < kLanes: R independent chains
// of lane-wise FMAs sharing the loop over d.
template <int R, int kDim, typename T>
inline void lane_dots_block(const T* __restrict x, const T* const* rows, int64_t stride, int64_t dim,
                            T* __restrict out) {
  T acc[R][kLanes] = {};
  for (int64_t d = 0; d < (kDim > 0 ? kDim : dim); ++d) {
    const T xd = x[d];
    for (int r = 0; r < R; ++r) {
      const T* row = rows[r] + d * stride;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) acc[r][l] += xd * row[l];
    }
  }
  std::copy(&acc[0][0], &acc[0][0] + R * kLanes, out);
}

// lane_dots_block for any count of vectors, in blocks of up to 8 (8 chains keep two FMA units busy).
template <int kDim, typename T>
inline void lane_dots(const T* x, const T* const* rows, int64_t count, int64_t stride, int64_t dim, T* out) {
  for (int64_t r0 = 0; r0 < count; r0 += 8)
    with_constant<8>(std::min<int64_t>(8, count - r0), [&](auto block) {
      lane_dots_block<block(), kDim>(x, rows + r0, stride, dim, out + r0 * kLanes);
    });
}

// The compiler's generic vector of kLanes values (GCC / Clang vector extensions, lowered to whatever the
// target has: one AVX2 register of floats, two NEON ones, ...): accumulators declared as these stay in
// registers where arrays of scalars would not.
template <typename T>
struct LaneVector {
  typedef T type __attribute__((vector_size(kLanes * sizeof(T))));
};
template <typename T>
using Lanes = typename LaneVector<T>::type;

// out[d] = scale * sum_{r < runs} sum_{m < n} weight[r * weight_stride + m] * x[r][m * step + d] for
// d < dim: a weighted sum of runs of rows of a tensor as stored (the kw value rows of each window row,
// say), vectorised over d, in two interleaved partial sums (twice the independent FMA chains).
template <int kDim, typename T>
inline void weighted_rows(const T* weight, int64_t weight_stride, const T* const* x, int64_t runs, int64_t step,
                          int64_t n, T scale, T* __restrict out, int64_t dim) {
  if constexpr (kDim > 0 && kDim % kLanes == 0) {
    constexpr int64_t kVectors = kDim / kLanes;
    Lanes<T> even[kVectors], odd[kVectors], row;
    for (int64_t b = 0; b < kVectors; ++b) even[b] = odd[b] = Lanes<T>{};
    for (int64_t r = 0; r < runs; ++r) {
      const T* w = weight + r * weight_stride;
      int64_t m = 0;
      for (; m + 1 < n; m += 2)
        for (int64_t b = 0; b < kVectors; ++b) {
          std::memcpy(&row, x[r] + m * step + b * kLanes, sizeof row);
          even[b] += w[m] * row;
          std::memcpy(&row, x[r] + (m + 1) * step + b * kLanes, sizeof row);
          odd[b] += w[m + 1] * row;
        }
      for (; m < n; ++m)
        for (int64_t b = 0; b < kVectors; ++b) {
          std::memcpy(&row, x[r] + m * step + b * kLanes, sizeof row);
          even[b] += w[m] * row;
        }
    }
    for (int64_t b = 0; b < kVectors; ++b) even[b] = scale * (even[b] + odd[b]);
    std::memcpy(out, even, sizeof even);
  } else {
    std::fill(out, out + dim, T(0));
    for (int64_t r = 0; r < runs; ++r)
      for (int64_t m = 0; m < n; ++m) axpy<0>(weight[r * weight_stride + m], x[r] + m * step, out, dim);
    for (int64_t d = 0; d < dim; ++d) out[d] *= scale;
  }
}

// The reordered columns of one (width, kernel, dilation): see the comment above lane vectors.
struct ColumnOrder {
  std::vector<int64_t> column;       // input column of reordered column c
  std::vector<int64_t> key_begin;    // reordered column of the first key of column[c]'s window
  std::vector<int64_t> query_begin;  // reordered column of the first query of a row that attends column[c]
  std::vector<int64_t> query_count;  // how many queries of a row attend column[c]

  ColumnOrder(int64_t width, int64_t kernel, int64_t dilation)
      : key_begin(width), query_begin(width), query_count(width) {
    std::vector<int64_t> position(width);
    for (int64_t g = 0; g < dilation; ++g)
      for (int64_t j = g; j < width; j += dilation) {
        position[j] = static_cast<int64_t>(column.size());
        column.push_back(j);
      }
    for (int64_t c = 0; c < width; ++c) {
      int64_t first, end;
      inverse_window(column[c], width, kernel, dilation, &first, &end);
      key_begin[c] = position[window_start(column[c], width, kernel, dilation)];
      query_begin[c] = position[first];
      query_count[c] = (end - first + dilation - 1) / dilation;
    }
  }
};

inline std::vector<ColumnOrder> column_orders(const Groups& groups, int64_t width) {
  std::vector<ColumnOrder> orders;
  for (int64_t g = 0; g < groups.count(); ++g)
    orders.emplace_back(width, groups.first_head(g).kernel_w, groups.first_head(g).dilation_w);
  return orders;
}

// out[d * stride + c] = x_row[column[c] * dim + d] for c < W, d < dim: one row [W, dim] transposed in
// reordered columns (the padding past W is left as it is: zero).
template <typename T>
inline void transpose_row(const T* x_row, const ColumnOrder& order, int64_t dim, int64_t stride, T* out) {
  for (int64_t c = 0; c < static_cast<int64_t>(order.column.size()); ++c) {
    const T* x = x_row + order.column[c] * dim;
    for (int64_t d = 0; d < dim; ++d) out[d * stride + c] = x[d];
  }
}

// The values of one row [W] in reordered columns.
template <typename T>
inline void reorder_row(const T* x_row, const ColumnOrder& order, T* out) {
  for (int64_t c = 0; c < static_cast<int64_t>(order.column.size()); ++c) out[c] = x_row[order.column[c]];
}

// A head's bias table [2kh-1, 2kw-1] with rows padded to `stride` entries (zeros), each row as is or
// reversed, so a run of kLanes window slots (or queries) reads consecutive entries.
template <typename T>
struct PaddedBias {
  int64_t stride;
  std::vector<T> rows;
  static int64_t size(const HeadShape& s) { return (2 * s.kernel_h - 1) * stride_of(s); }
  static int64_t stride_of(const HeadShape& s) { return s.bias_cols() + lane_vectors(s.bias_cols()) * kLanes; }
  PaddedBias(const T* table, const HeadShape& s, bool reversed)
      : stride(stride_of(s)), rows(table ? size(s) : 0, T(0)) {
    for (int64_t r = 0; table && r < 2 * s.kernel_h - 1; ++r)
      for (int64_t c = 0; c < s.bias_cols(); ++c)
        rows[r * stride + (reversed ? s.bias_cols() - 1 - c : c)] = table[r * s.bias_cols() + c];
  }
  const T* row(int64_t r) const { return rows.empty() ? nullptr : rows.data() + r * stride; }
};

// The in-group rows of a sweep's tensors that it has transposed: in-group row r sits in slot r % capacity.
// Rows are added in increasing order and a sweep never reads back further than `capacity` rows.
template <typename T>
class RowRing {
 public:
  RowRing(int64_t capacity, int64_t row_size, T* storage) : capacity_(capacity), row_size_(row_size), data_(storage) {}
  // Fills the rows [begin, end) not filled yet: fill(r, destination).
  template <typename Fill>
  void fill(int64_t begin, int64_t end, const Fill& fill_row) {
    for (next_ = std::max(next_, begin); next_ < end; ++next_) fill_row(next_, row(next_));
  }
  T* row(int64_t r) const { return data_ + r % capacity_ * row_size_; }

 private:
  int64_t capacity_, row_size_, next_ = 0;
  T* data_;
};

// A sweep: the in-group rows [first, end) of dilation group `group` of rows in (batch, head) plane
// `plane` (first element: plane * H * W), whose head has shape `s` and column order `order`.
struct Sweep {
  int64_t plane, group, first, end;
  const HeadShape* s;
  const ColumnOrder* order;
  int64_t row(int64_t in_group) const { return group + in_group * s->dilation_h; }
};

// The sweeps of a pass: each plane's row groups, split into chunks (of at least 2 kh rows) until there
// are about 4 per thread. Every output row belongs to one sweep, whatever the split, and is computed
// the same way in any sweep: results do not depend on the thread count.
inline std::vector<Sweep> sweeps_of(const Groups& groups, const std::vector<ColumnOrder>& orders, const Problem& p) {
  std::vector<Sweep> sweeps;
  const int64_t planes = p.batch * p.heads, wanted = 4 * at::get_num_threads();
  for (int64_t plane = 0; plane < planes; ++plane) {
    const HeadShape& s = groups.heads[plane % p.heads];
    for (int64_t g = 0; g < s.dilation_h; ++g) {
      const int64_t rows = (p.height - 1 - g) / s.dilation_h + 1;
      const int64_t per_group = (wanted + planes * s.dilation_h - 1) / (planes * s.dilation_h);
      const int64_t chunks = std::max<int64_t>(1, std::min(per_group, rows / (2 * s.kernel_h)));
      for (int64_t c = 0; c < chunks; ++c)
        sweeps.push_back({plane * p.plane(), g, rows * c / chunks, rows * (c + 1) / chunks, &s, &orders[s.group]});
    }
  }
  return sweeps;
}

// Runs fn(scratch, sweep) for every sweep on the intra-op threads, with one scratch = make_scratch()
// per thread.
template <typename MakeScratch, typename Fn>
void for_each_sweep(const std::vector<Sweep>& sweeps, const MakeScratch& make_scratch, const Fn& fn) {
  at::parallel_for(0, static_cast<int64_t>(sweeps.size()), 1, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t task = begin; task < end; ++task) fn(scratch, sweeps[task]);
  });
}

// Softmax weights of one query's logits [rows][row_size] (row_size a multiple of kLanes; slots w >= kw
// of a row are padding): every logit becomes exp(logit - max), padding 0; returns (max, sum of the
// weights). The reductions run lane-wise (kLanes partial results), which the compiler vectorises.
template <typename T>
inline std::pair<T, T> softmax_weights(T* logits, int64_t rows, int64_t row_size, int64_t kw) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  T lane_max[kLanes];
  std::fill(lane_max, lane_max + kLanes, kNegInf);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w0 = 0; w0 < row_size; w0 += kLanes) {
      T* logit = logits + r * row_size + w0;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        logit[l] = w0 + l < kw ? logit[l] : kNegInf;
        lane_max[l] = std::max(lane_max[l], logit[l]);
      }
    }
  const T max = *std::max_element(lane_max, lane_max + kLanes);
#pragma omp simd
  for (int64_t u = 0; u < rows * row_size; ++u) logits[u] = exp_nonpositive(logits[u] - max);
  Lanes<T> lane_sum{}, weights;
  for (int64_t u0 = 0; u0 < rows * row_size; u0 += kLanes) {
    std::memcpy(&weights, logits + u0, sizeof weights);
    lane_sum += weights;
  }
  T sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lane_sum[l];
  return {max, sum};
}

// Pointers to the lane vectors of a window: vectors v < per_row of each of `rows` rows start at
// base[r] + offset + v * kLanes.
template <typename T>
inline void window_vectors(T* const* base, int64_t rows, int64_t offset, int64_t per_row, const T** out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < per_row; ++v) out[r * per_row + v] = base[r] + offset + v * kLanes;
}

// Scratch of the lane-vector dot products: x scaled, and pointers to the vectors of a window.
template <typename T>
struct DotScratch {
  std::vector<T> scaled;
  std::vector<const T*> vectors;
};

// logits[r * per_row * kLanes + w] = (scale * x) . rows[r][column begin + w] + bias_rows[r][bias_col + w]
// for the r < count transposed rows (no bias without bias_rows): a query against its window's key rows,
// or a key against the query rows of its inverse neighbourhood. Lanes w past the window: anything.
template <int kDim, typename T>
inline void window_logits(const T* x, T scale, T* const* rows, int64_t count, int64_t begin, int64_t per_row,
                          int64_t stride, int64_t dim, const std::type_identity_t<T>* const* bias_rows, int64_t bias_col,
                          DotScratch<T>& scratch, T* logits) {
  scale_into<kDim>(scale, x, scratch.scaled.data(), dim);  // (scale * q) . k, as the reference
  window_vectors(rows, count, begin, per_row, scratch.vectors.data());
  lane_dots<kDim>(scratch.scaled.data(), scratch.vectors.data(), count * per_row, stride, dim, logits);
  for (int64_t r = 0; r < count && bias_rows; ++r)
    axpy<0>(T(1), bias_rows[r] + bias_col, logits + r * per_row * kLanes, per_row * kLanes);
}

// ---------------------------------------------------------------------------------------------
// Fused na2d: out = softmax(scale * q.k + rpb) v, saving the log-sum-exp for the backward pass.
// A sweep goes down the rows of one dilation group; the key rows of the window are transposed once
// per sweep (a ring of kh rows) and serve every query row whose window holds them.

template <typename T, int kDim>
void fused_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                   const Groups& groups, const BiasTables<T>& bias, const Problem& p, T scale) {
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
  const int64_t D = kDim > 0 ? kDim : p.dim, W = p.width, H = p.height, stride = W + kLanes;
  const std::vector<ColumnOrder> orders = column_orders(groups, W);
  const std::vector<Sweep> sweeps = sweeps_of(groups, orders, p);
  const int64_t kh_max = groups.max_over([](const HeadShape& s) { return s.kernel_h; });
  const int64_t slots = groups.max_over([](const HeadShape& s) { return s.kernel_h * lane_vectors(s.kernel_w) * kLanes; });
  struct Scratch {
    std::vector<T> ring, logits;
    std::vector<T*> key_rows;                   // the window's key rows, transposed (in the ring)
    std::vector<const T*> value_rows, bias_rows;  // the window's value rows as stored; its bias rows
    DotScratch<T> dots;
  };
  auto make_scratch = [&] {
    return Scratch{std::vector<T>(kh_max * D * stride, T(0)), std::vector<T>(slots), std::vector<T*>(kh_max),
                   std::vector<const T*>(kh_max), std::vector<const T*>(kh_max), {std::vector<T>(D), std::vector<const T*>(slots)}};
  };
  for_each_sweep(sweeps, make_scratch, [&](Scratch& x, const Sweep& sweep) {
    const HeadShape& s = *sweep.s;
    const ColumnOrder& order = *sweep.order;
    const PaddedBias<T> table(bias.of(s), s, false);
    const int64_t kh = s.kernel_h, kw = s.kernel_w, dh = s.dilation_h, per_row = lane_vectors(kw);
    RowRing<T> ring(kh, D * stride, x.ring.data());
    for (int64_t t = sweep.first; t < sweep.end; ++t) {
      const int64_t i = sweep.row(t), row0 = window_start(i, H, kh, dh), first = (row0 - sweep.group) / dh;
      ring.fill(first, first + kh, [&](int64_t r, T* rows_t) {
        transpose_row(kp + (sweep.plane + sweep.row(r) * W) * D, order, D, stride, rows_t);
      });
      const int64_t bias_row0 = bias_index(i, row0, kh, dh);
      for (int64_t uh = 0; uh < kh; ++uh) {
        x.key_rows[uh] = ring.row(first + uh);
        x.bias_rows[uh] = table.row(bias_row0 + uh);
      }
      for (int64_t c = 0; c < W; ++c) {
        const int64_t j = order.column[c], query = sweep.plane + i * W + j, col0 = order.column[order.key_begin[c]];
        window_logits<kDim>(qp + query * D, scale, x.key_rows.data(), kh, order.key_begin[c], per_row, stride, D,
                            table.row(0) ? x.bias_rows.data() : nullptr, bias_index(j, col0, kw, s.dilation_w),
                            x.dots, x.logits.data());
        const auto [max, sum] = softmax_weights(x.logits.data(), kh, per_row * kLanes, kw);
        for (int64_t uh = 0; uh < kh; ++uh) x.value_rows[uh] = vp + (sweep.plane + (row0 + uh * dh) * W + col0) * D;
        weighted_rows<kDim>(x.logits.data(), per_row * kLanes, x.value_rows.data(), kh, s.dilation_w * D, kw, T(1) / sum,
                            op + query * D, D);
        lp[query] = max + std::log(sum);
      }
    }
  });
}

// Softmax gradient terms of lanes [rows][row_size] (row_size a multiple of kLanes), the first `valid`
// of each row real: prob = exp(logit - lse(r, w)), ds = prob * (dp - delta(r, w)); both 0 on the
// other lanes (whatever they held). The inner loops are one vector each.
template <typename T, typename Lse, typename Delta>
inline void softmax_grad_terms(int64_t rows, int64_t row_size, int64_t valid, T* logit_then_prob, T* dp_then_ds,
                               const Lse& lse, const Delta& delta) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t w0 = 0; w0 < row_size; w0 += kLanes) {
      T *logit = logit_then_prob + r * row_size + w0, *dp = dp_then_ds + r * row_size + w0;
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        const T prob = exp_nonpositive(logit[l] - lse(r, w0 + l));
        logit[l] = w0 + l < valid ? prob : T(0);
        dp[l] = w0 + l < valid ? prob * (dp[l] - delta(r, w0 + l)) : T(0);
      }
    }
}

template <typename T, int kDim>
void fused_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                    const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, T* bias_partial, const Groups& groups,
                    const BiasTables<T>& bias, const Problem& p, T scale) {
  const T *gp = dout.data_ptr<T>(), *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
  const T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
  T *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>(), *dvp = dv.data_ptr<T>();
  const int64_t D = kDim > 0 ? kDim : p.dim, W = p.width, H = p.height, stride = W + kLanes;
  Tensor delta_tensor = at::empty({p.rows() * W}, q.options());  // rowsum(dout * out) per query
  T* delta = delta_tensor.data_ptr<T>();
  const std::vector<ColumnOrder> orders = column_orders(groups, W);
  const std::vector<Sweep> sweeps = sweeps_of(groups, orders, p);
  // A key sees at most 2kh-1 query rows, and 2kw-1 queries of a row (the bias table's shape).
  const int64_t kh_max = groups.max_over([](const HeadShape& s) { return s.kernel_h; }), rows_max = 2 * kh_max - 1;
  const int64_t slots = groups.max_over([](const HeadShape& s) { return (2 * s.kernel_h - 1) * lane_vectors(s.bias_cols()) * kLanes; });
  struct Scratch {
    std::vector<T> ring, prob, ds, bias_grad;
    std::vector<T*> rows_t;                     // the rows the dots read, transposed (in the ring)
    std::vector<const T*> rows, bias_rows;      // the rows weighted sums read, as stored; bias rows
    DotScratch<T> dots;
  };
  auto scratch_of = [&](int64_t ring_size, int64_t bias_size) {
    return [=] {
      return Scratch{std::vector<T>(ring_size, T(0)), std::vector<T>(slots), std::vector<T>(slots),
                     std::vector<T>(bias_size), std::vector<T*>(2 * rows_max), std::vector<const T*>(2 * rows_max),
                     std::vector<const T*>(rows_max), {std::vector<T>(D), std::vector<const T*>(slots)}};
    };
  };

  // Query pass: delta, then dQ over the neighborhood and the bias gradient of each query row. The
  // ring holds the window's key rows transposed, then its value rows.
  const int64_t bias_stride = groups.max_bias_area(), padded_bias = groups.max_over(PaddedBias<T>::size);
  for_each_sweep(sweeps, scratch_of(kh_max * 2 * D * stride, padded_bias), [&](Scratch& x, const Sweep& sweep) {
    const HeadShape& s = *sweep.s;
    const ColumnOrder& order = *sweep.order;
    const PaddedBias<T> table(bias.of(s), s, false);
    const int64_t kh = s.kernel_h, kw = s.kernel_w, dh = s.dilation_h, per_row = lane_vectors(kw);
    T *const *key_rows = x.rows_t.data(), *const *value_rows = key_rows + kh;
    RowRing<T> ring(kh, 2 * D * stride, x.ring.data());
    for (int64_t t = sweep.first; t < sweep.end; ++t) {
      const int64_t i = sweep.row(t), row0 = window_start(i, H, kh, dh), first = (row0 - sweep.group) / dh;
      ring.fill(first, first + kh, [&](int64_t r, T* rows_t) {
        const int64_t row = sweep.plane + sweep.row(r) * W;
        transpose_row(kp + row * D, order, D, stride, rows_t);
        transpose_row(vp + row * D, order, D, stride, rows_t + D * stride);
      });
      const int64_t bias_row0 = bias_index(i, row0, kh, dh);
      for (int64_t uh = 0; uh < kh; ++uh) {
        x.rows_t[uh] = ring.row(first + uh);
        x.rows_t[kh + uh] = x.rows_t[uh] + D * stride;
        x.bias_rows[uh] = table.row(bias_row0 + uh);
      }
      for (int64_t query = sweep.plane + i * W; query < sweep.plane + (i + 1) * W; ++query)
        delta[query] = dot<kDim>(gp + query * D, op + query * D, D);
      std::fill(x.bias_grad.begin(), x.bias_grad.end(), T(0));
      for (int64_t c = 0; c < W; ++c) {
        const int64_t j = order.column[c], query = sweep.plane + i * W + j, col0 = order.column[order.key_begin[c]];
        const int64_t bias_col = bias_index(j, col0, kw, s.dilation_w);
        window_logits<kDim>(qp + query * D, scale, key_rows, kh, order.key_begin[c], per_row, stride, D,
                            table.row(0) ? x.bias_rows.data() : nullptr, bias_col, x.dots, x.prob.data());
        window_logits<kDim>(gp + query * D, T(1), value_rows, kh, order.key_begin[c], per_row, stride, D, nullptr, 0,
                            x.dots, x.ds.data());
        const T lse_q = lp[query], delta_q = delta[query];
        softmax_grad_terms(kh, per_row * kLanes, kw, x.prob.data(), x.ds.data(), [&](int64_t, int64_t) { return lse_q; },
                           [&](int64_t, int64_t) { return delta_q; });
        for (int64_t uh = 0; uh < kh; ++uh) {
          if (table.row(0))
            axpy<0>(T(1), x.ds.data() + uh * per_row * kLanes, x.bias_grad.data() + (bias_row0 + uh) * table.stride + bias_col,
                    per_row * kLanes);
          x.rows[uh] = kp + (sweep.plane + (row0 + uh * dh) * W + col0) * D;
        }
        weighted_rows<kDim>(x.ds.data(), per_row * kLanes, x.rows.data(), kh, s.dilation_w * D, kw, scale,
                            dqp + query * D, D);
      }
      T* partial = table.row(0) ? bias_partial + (sweep.plane / W + i) * bias_stride : nullptr;  // (b, head, i)
      for (int64_t r = 0; partial && r < 2 * kh - 1; ++r)
        std::copy_n(x.bias_grad.data() + r * table.stride, s.bias_cols(), partial + r * s.bias_cols());
    }
  });

  // Key pass: dK and dV over the inverse neighborhood of each key, p and ds recomputed from lse and
  // delta. The ring holds the query rows of the inverse neighbourhoods, each as q and dout transposed,
  // then lse and delta in reordered columns.
  const int64_t query_row = 2 * D * stride + 2 * stride;
  for_each_sweep(sweeps, scratch_of(rows_max * query_row, 0), [&](Scratch& x, const Sweep& sweep) {
    const HeadShape& s = *sweep.s;
    const ColumnOrder& order = *sweep.order;
    const PaddedBias<T> table(bias.of(s), s, true);
    const int64_t kh = s.kernel_h, kw = s.kernel_w, dh = s.dilation_h, dw = s.dilation_w;
    RowRing<T> ring(rows_max, query_row, x.ring.data());
    for (int64_t t = sweep.first; t < sweep.end; ++t) {
      const int64_t a = sweep.row(t);
      int64_t i0, i1;
      inverse_window(a, H, kh, dh, &i0, &i1);
      const int64_t first = (i0 - sweep.group) / dh, rows = (i1 - i0 + dh - 1) / dh;
      ring.fill(first, first + rows, [&](int64_t r, T* row_t) {
        const int64_t row = sweep.plane + sweep.row(r) * W;
        transpose_row(qp + row * D, order, D, stride, row_t);
        transpose_row(gp + row * D, order, D, stride, row_t + D * stride);
        reorder_row(lp + row, order, row_t + 2 * D * stride);
        reorder_row(delta + row, order, row_t + 2 * D * stride + stride);
      });
      T *const *q_rows = x.rows_t.data(), *const *dout_rows = q_rows + rows;
      for (int64_t r = 0; r < rows; ++r) {
        x.rows_t[r] = ring.row(first + r);
        x.rows_t[rows + r] = x.rows_t[r] + D * stride;
        x.bias_rows[r] = table.row(bias_index(i0 + r * dh, a, kh, dh));
      }
      for (int64_t c = 0; c < W; ++c) {
        const int64_t j = order.column[c], key = sweep.plane + a * W + j, qb = order.query_begin[c];
        const int64_t count = order.query_count[c], per_row = lane_vectors(count), j0 = order.column[qb];
        // Bias of the m-th query of a row for this key: entry bias_index(j0, j) - m of its row, which
        // the reversed table holds at bias_cols - 1 - bias_index(j0, j) + m.
        const int64_t bias_col = s.bias_cols() - 1 - bias_index(j0, j, kw, dw);
        window_logits<kDim>(kp + key * D, scale, q_rows, rows, qb, per_row, stride, D,  // q . (scale * k)
                            table.row(0) ? x.bias_rows.data() : nullptr, bias_col, x.dots, x.prob.data());
        window_logits<kDim>(vp + key * D, T(1), dout_rows, rows, qb, per_row, stride, D, nullptr, 0, x.dots,
                            x.ds.data());
        const int64_t lse_at = 2 * D * stride + qb, delta_at = lse_at + stride;  // in a ring row
        softmax_grad_terms(rows, per_row * kLanes, count, x.prob.data(), x.ds.data(),
                           [&](int64_t r, int64_t w) { return q_rows[r][lse_at + w]; },
                           [&](int64_t r, int64_t w) { return q_rows[r][delta_at + w]; });
        for (int64_t r = 0; r < rows; ++r) {
          x.rows[r] = qp + (sweep.plane + (i0 + r * dh) * W + j0) * D;
          x.rows[rows + r] = gp + (sweep.plane + (i0 + r * dh) * W + j0) * D;
        }
        weighted_rows<kDim>(x.ds.data(), per_row * kLanes, x.rows.data(), rows, dw * D, count, scale, dkp + key * D, D);
        weighted_rows<kDim>(x.prob.data(), per_row * kLanes, x.rows.data() + rows, rows, dw * D, count, T(1),
                            dvp + key * D, D);
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

// Calls fn(query, slot, key, bias_index) for every query (in parallel over query rows) and every slot
// of its window.
template <typename Fn>
inline void for_each_neighbor(const HeadShape& s, const Problem& p, const Fn& fn) {
  parallel_rows(p, [&](int64_t bh, int64_t i) {
    const int64_t plane = bh * p.plane(), row0 = window_start(i, p.height, s.kernel_h, s.dilation_h);
    for (int64_t j = 0; j < p.width; ++j) {
      const int64_t query = plane + i * p.width + j, col0 = window_start(j, p.width, s.kernel_w, s.dilation_w);
      int64_t u = 0;
      for (int64_t uh = 0; uh < s.kernel_h; ++uh) {
        const int64_t a = row0 + uh * s.dilation_h;
        const int64_t brow = bias_index(i, a, s.kernel_h, s.dilation_h) * s.bias_cols();
        for (int64_t uw = 0; uw < s.kernel_w; ++uw, ++u) {
          const int64_t c = col0 + uw * s.dilation_w;
          fn(query, u, plane + a * p.width + c, brow + bias_index(j, c, s.kernel_w, s.dilation_w));
        }
      }
    }
  });
}

// Calls fn(key, query, slot) for every key (in parallel over key rows) and every query that attends it.
template <typename Fn>
inline void for_each_inverse_neighbor(const HeadShape& s, const Problem& p, const Fn& fn) {
  parallel_rows(p, [&](int64_t bh, int64_t a) {
    const int64_t plane = bh * p.plane();
    int64_t i0, i1;
    inverse_window(a, p.height, s.kernel_h, s.dilation_h, &i0, &i1);
    for (int64_t c = 0; c < p.width; ++c) {
      int64_t j0, j1;
      inverse_window(c, p.width, s.kernel_w, s.dilation_w, &j0, &j1);
      for (int64_t i = i0; i < i1; i += s.dilation_h)
        for (int64_t j = j0; j < j1; j += s.dilation_w)
          fn(plane + a * p.width + c, plane + i * p.width + j, slot_of(i, j, a, c, s, p.height, p.width));
    }
  });
}

template <typename T>
void qk_forward(const Tensor& q, const Tensor& k, Tensor& attn, const HeadShape& s, const T* table,
                const Problem& p) {
  const T *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>();
  T* ap = attn.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area(), table_size = s.bias_area();
  for_each_neighbor(s, p, [&](int64_t query, int64_t u, int64_t key, int64_t bidx) {
    const T* head_table = table ? table + query / p.plane() % p.heads * table_size : nullptr;
    ap[query * area + u] = dot<0>(qp + query * D, kp + key * D, D) + (head_table ? head_table[bidx] : T(0));
  });
}

// dq, dk: zeros on entry. bias_partial: zeros [B * heads * H, bias area] (one table per query row), or null.
template <typename T>
void qk_backward(const Tensor& dattn, const Tensor& q, const Tensor& k, Tensor& dq, Tensor& dk,
                 T* bias_partial, const HeadShape& s, const Problem& p) {
  const T *gp = dattn.data_ptr<T>(), *qp = q.data_ptr<T>(), *kp = k.data_ptr<T>();
  T *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area(), table_size = s.bias_area();
  for_each_neighbor(s, p, [&](int64_t query, int64_t u, int64_t key, int64_t bidx) {
    axpy<0>(gp[query * area + u], kp + key * D, dqp + query * D, D);
    if (bias_partial) bias_partial[query / p.width * table_size + bidx] += gp[query * area + u];
  });
  for_each_inverse_neighbor(s, p, [&](int64_t key, int64_t query, int64_t u) {
    axpy<0>(gp[query * area + u], qp + query * D, dkp + key * D, D);
  });
}

template <typename T>
void av_forward(const Tensor& attn, const Tensor& v, Tensor& out, const HeadShape& s, const Problem& p) {
  const T *ap = attn.data_ptr<T>(), *vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area();
  out.zero_();
  for_each_neighbor(s, p, [&](int64_t query, int64_t u, int64_t key, int64_t) {
    axpy<0>(ap[query * area + u], vp + key * D, op + query * D, D);
  });
}

// dv: zeros on entry.
template <typename T>
void av_backward(const Tensor& dout, const Tensor& attn, const Tensor& v, Tensor& dattn, Tensor& dv,
                 const HeadShape& s, const Problem& p) {
  const T *gp = dout.data_ptr<T>(), *ap = attn.data_ptr<T>(), *vp = v.data_ptr<T>();
  T *dap = dattn.data_ptr<T>(), *dvp = dv.data_ptr<T>();
  const int64_t D = p.dim, area = s.kernel_area();
  for_each_neighbor(s, p, [&](int64_t query, int64_t u, int64_t key, int64_t) {
    dap[query * area + u] = dot<0>(gp + query * D, vp + key * D, D);
  });
  for_each_inverse_neighbor(s, p, [&](int64_t key, int64_t query, int64_t u) {
    axpy<0>(ap[query * area + u], gp + query * D, dvp + key * D, D);
  });
}

}  // namespace cpu
}  // namespace natten_ops
