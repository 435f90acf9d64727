// Neighborhood-attention index math: the one definition of the semantics, shared by the CPU and
// CUDA kernels (the rules below; natten_ops/reference.py's window_indices is the same in Python).
//
// One axis of length L, odd kernel k, dilation d, r = k / 2. Position i is in dilation group
// g = i % d at in-group coordinate t = i / d; the group has L_g = (L - 1 - g) / d + 1 positions.
// The query's window starts at in-group s(t) = clamp(t - r, 0, L_g - k) and holds the k positions
// g + d * (s + u), u = 0..k-1: every query sees exactly k keys per axis, shifted inward at borders.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NA_HOST_DEVICE inline
#endif

namespace natten_ops {

// Axis position of the first key in the window of query `i`.
NA_HOST_DEVICE int64_t window_start(int64_t i, int64_t length, int64_t kernel, int64_t dilation) {
  const int64_t group = i % dilation;
  const int64_t t = i / dilation;
  const int64_t group_length = (length - 1 - group) / dilation + 1;
  int64_t s = t - kernel / 2;
  if (s < 0) s = 0;
  if (s > group_length - kernel) s = group_length - kernel;
  return group + dilation * s;
}

// Row (or column) of the relative-position-bias table for query `query` attending key `key`,
// both in the same dilation group: (k - 1) + (key - query) / d, in [0, 2k - 2].
NA_HOST_DEVICE int64_t bias_index(int64_t query, int64_t key, int64_t kernel, int64_t dilation) {
  return (kernel - 1) + (key - query) / dilation;  // exact division: same group
}

// Inverse neighborhood: the queries that attend key `key` are first, first + d, ... < end.
NA_HOST_DEVICE void inverse_window(int64_t key, int64_t length, int64_t kernel, int64_t dilation,
                                   int64_t* first, int64_t* end) {
  const int64_t r = kernel / 2;
  *first = key < kernel * dilation ? key % dilation : key - r * dilation;
  *end = key >= length - kernel * dilation ? length : key + (r + 1) * dilation;
}

// Kernel and dilation of one head, per axis, and where its bias table lives (if it has one).
struct HeadShape {
  int64_t kernel_h, kernel_w, dilation_h, dilation_w;
  int64_t group;        // index of the head group (selects the bias table)
  int64_t group_head;   // head index inside its group (selects the table's slice)
  NA_HOST_DEVICE int64_t kernel_area() const { return kernel_h * kernel_w; }
  NA_HOST_DEVICE int64_t bias_cols() const { return 2 * kernel_w - 1; }
  NA_HOST_DEVICE int64_t bias_area() const { return (2 * kernel_h - 1) * (2 * kernel_w - 1); }
};

}  // namespace natten_ops
