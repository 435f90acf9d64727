// What every CPU kernel shares: the problem shape, head groups and bias tables (built from the checked
// arguments of na2d_problem.h), the vector helpers over head_dim, exp for softmax weights, and the
// bias-gradient reduction.
//
// Layouts: q, k, v, out, grads [B, heads, H, W, D] contiguous; attn [B, heads, H, W, kh*kw];
// lse / delta [B, heads, H, W]; one bias table [group_heads, 2kh-1, 2kw-1] per head group.
#pragma once

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../na2d_problem.h"

namespace natten_ops {
namespace cpu {

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
// round-off). Below -87.3 (where exp underflows float32), -inf included, the result is 0; NaN stays NaN.
inline float exp_nonpositive(float x) {
  const bool underflow = x < -87.3f;
  x = underflow ? -87.3f : x;
  const float rounded = std::floor(x * 1.44269504088896341f + 0.5f);
  const float n = rounded == rounded ? rounded : 0.f;  // NaN: any exponent (the polynomial is NaN)
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
  return underflow ? 0.f : poly * scale;
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


// Head groups from the checked group specs of na2d_problem.h, with the shape of every head.
struct Groups {
  std::vector<int64_t> begin, end;
  std::vector<HeadShape> heads;  // one entry per head
  explicit Groups(const std::vector<GroupSpec>& specs) {
    for (const GroupSpec& g : specs) {
      begin.push_back(g.begin);
      end.push_back(g.end);
      for (int64_t h = g.begin; h < g.end; ++h) heads.push_back({g.shape.kernel_h, g.shape.kernel_w,
                                                                 g.shape.dilation_h, g.shape.dilation_w,
                                                                 g.shape.group, h - g.begin});
    }
  }
  int64_t count() const { return static_cast<int64_t>(begin.size()); }
  const HeadShape& first_head(int64_t g) const { return heads[begin[g]]; }
  // The largest fn(shape) over the heads.
  template <typename Fn>
  int64_t max_over(const Fn& fn) const {
    int64_t most = 0;
    for (const auto& s : heads) most = std::max(most, fn(s));
    return most;
  }
  int64_t max_kernel_area() const { return max_over([](const HeadShape& s) { return s.kernel_area(); }); }
  int64_t max_bias_area() const { return max_over([](const HeadShape& s) { return s.bias_area(); }); }
};


// Bias tables, one per group (nullptr for a group without one), from the checked group specs.
template <typename T>
struct BiasTables {
  std::vector<const T*> tables;
  explicit BiasTables(const std::vector<GroupSpec>& specs) {
    for (const GroupSpec& g : specs) tables.push_back(g.bias.defined() ? g.bias.data_ptr<T>() : nullptr);
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


}  // namespace cpu
}  // namespace natten_ops
