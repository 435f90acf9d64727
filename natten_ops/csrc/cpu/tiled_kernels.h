// The tiled float32 kernels of the fused na2d for processors with AVX-512 (compiled only where
// __AVX512F__ is defined and NATTEN_OPS_PORTABLE is not).
#pragma once

#include "kernel_common.h"

#if defined(__AVX512F__) && !defined(NATTEN_OPS_PORTABLE)
#define NATTEN_OPS_TILED_AVX512 1
#include <immintrin.h>

#include <atomic>
#include <limits>

namespace natten_ops {
namespace cpu {

// ---------------------------------------------------------------------------------------------
// Tiled float32 kernels of the fused na2d for AVX-512 builds.
//
// The portable kernels (portable_kernels.h) take one query at a time: k*k dot products of length head_dim, each
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
// serves all the rows whose windows hold it. A step takes kRowsPerStep (2) consecutive rows of the
// group at once: their windows share all but one gathered row, and each gathered register loaded
// from the ring feeds one FMA per row (StepRows, step_products). Tasks write disjoint outputs and the
// tensors are read in place: no copies, no atomics. Every output element is summed in the same order
// whatever the step size and the thread that runs its task, so results are bitwise reproducible.
//
// Where the time goes (one thread, TSC marks around each section of a sweep, preempted intervals
// dropped, summed over 6 calls; B=4, 16 heads, D=32, k=7 at 16x16 d=2 and 32x32 d=1; 128x128 d=16 and
// 256x256 d=32 within a few points). Forward: gathering the k and v rows of the windows (reading them,
// two 16x16 transposes per 16 channels and per row half, one permute and one ring store per gathered
// register) 30-33%; loading the query tile (reading q, transposes) 12%; q.k FMAs 16%; bias, max, exp
// and sum 6%; p.v FMAs 15%; storing out and lse 16-19%, most of it the first-touch page faults of the
// freshly allocated output (a first fill of a fresh 2 MB tensor costs as much). Backward, query pass
// (40% of the backward): gather 9%, q and grad_out tiles 6%, q.k and grad_out.v FMAs 9-10%, exp,
// ds and bias gradient 6-8%, ds.k FMAs 4-5%, store dq 3-4%; key pass (60%): gathering q, grad_out,
// lse, delta rows 10-11%, k and v tiles 7%, p and dp dots 13-15%, exp and ds 3%, dv and dk FMAs 10-11%,
// storing dk and dv 10-16% (page faults again). The FMAs are a third of the time: the rest is moving
// data into the lane layout (transposes, permutes) and first touches of memory.
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

// exp_nonpositive (kernel_common.h) on 16 lanes: the same range reduction, polynomial, 0 and NaN.
inline Vec exp_nonpositive(Vec x) {
  const __mmask16 underflow = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_LT_OQ);  // -inf too, not NaN
  x = _mm512_max_ps(_mm512_set1_ps(-87.3f), x);  // max_ps returns its second operand for NaN: NaN stays
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
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(~underflow), _mm512_scalef_ps(poly, n));
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

// x_t[d] *= scale for d < dim: logits are (scale * q) . k, as in the reference (scale = inf included).
inline void scale_lanes(Vec* x_t, int64_t dim, float scale) {
  for (int64_t d = 0; d < dim; ++d) x_t[d] = _mm512_mul_ps(x_t[d], _mm512_set1_ps(scale));
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

// Register blocking over rows: a sweep step takes up to kRowsPerStep consecutive query rows (or, in
// the key pass, one key row) at once. Their windows share all but one gathered row, and each gathered
// register loaded from the ring feeds one FMA per row of the step that uses it. The ring holds
// kh * 2 * kw * D registers (200 KB at k = 7, D = 32), more than L1: loading it, not the FMAs, is what
// bounds the products, so sharing each load between two rows is what speeds them up.
constexpr int kRowsPerStep = 2;

// Returns v from a register: without it the compiler folds each use of a loaded value into its FMA
// as a memory operand, and a value shared by R FMAs is loaded R times.
inline Vec in_register(Vec v) {
  __asm__("" : "+v"(v));
  return v;
}

// out[r][c] = sum_d x_t[r][d] * g[c * dim + d] for rows r < R and c < C, summed in order d = 0..dim-1.
// Always inlined, as gathered_axpys: out of line, their pointer arrays and accumulators go through
// memory at every call, which made head_dim 8 about 25% slower.
template <int C, int R>
[[gnu::always_inline]] inline void gathered_dots(const Vec* const* x_t, const Vec* g, int64_t dim, Vec* const* out) {
  Vec acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < dim; ++d)
    for (int c = 0; c < C; ++c) {
      const Vec key = R > 1 ? in_register(g[c * dim + d]) : g[c * dim + d];
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(x_t[r][d], key, acc[r][c]);
    }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r][c] = acc[r][c];
}

// acc[r][d] += sum_c weight[r][c] * g[c * dim + d] for rows r < R and d < dim, summed in order
// c = 0..C-1, on the lanes of lanes[c] only when given (the others are left as they are, so a NaN or
// Inf in g on a lane that does not take part never reaches acc, as 0 * NaN would). Blocks of 8 / R
// values of d keep 8 independent FMA chains in flight.
template <int C, int R>
[[gnu::always_inline]] inline void gathered_axpys(const Vec* const* weight, const Vec* g, int64_t dim,
                                                  Vec* const* acc, const __mmask16* lanes = nullptr) {
  Vec w[R][C];  // the weights, kept in registers
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) w[r][c] = R > 1 ? in_register(weight[r][c]) : weight[r][c];
  auto fma = [&](int r, int c, Vec x, Vec a) {
    return lanes ? _mm512_mask3_fmadd_ps(w[r][c], x, a, lanes[c]) : _mm512_fmadd_ps(w[r][c], x, a);
  };
  constexpr int64_t kBlock = 8 / R;
  int64_t d0 = 0;
  for (; d0 + kBlock <= dim; d0 += kBlock) {
    Vec a[R][kBlock];
    for (int r = 0; r < R; ++r)
      for (int64_t d = 0; d < kBlock; ++d) a[r][d] = acc[r][d0 + d];
    for (int c = 0; c < C; ++c)
      for (int64_t d = 0; d < kBlock; ++d) {
        const Vec x = R > 1 ? in_register(g[c * dim + d0 + d]) : g[c * dim + d0 + d];
        for (int r = 0; r < R; ++r) a[r][d] = fma(r, c, x, a[r][d]);
      }
    for (int r = 0; r < R; ++r)
      for (int64_t d = 0; d < kBlock; ++d) acc[r][d0 + d] = a[r][d];
  }
  for (; d0 < dim; ++d0)
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r) acc[r][d0] = fma(r, c, g[c * dim + d0], acc[r][d0]);
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
  BiasRow() = default;
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

// The rows of one sweep step: in-group rows row[j] = i + j * dh (j < count <= kRowsPerStep) of one
// kind (query rows, or key rows in the key pass), each reading the in-group rows [first[j], end[j])
// of the other kind (its key window, or the query rows of its inverse neighbourhood). first[] and
// end[] never decrease, so the step reads the in-group rows [first[0], end[count - 1]).
struct StepRows {
  int count = 0;
  int64_t row[kRowsPerStep], first[kRowsPerStep], end[kRowsPerStep];
  int64_t start[kRowsPerStep];  // query steps: the input row where row[j]'s key window starts

  static StepRows of_queries(int64_t i, int64_t group, int64_t H, int64_t kh, int64_t dh) {
    StepRows step;
    for (; step.count < kRowsPerStep && i + step.count * dh < H; ++step.count) {
      const int j = step.count;
      step.row[j] = i + j * dh;
      step.start[j] = window_start(step.row[j], H, kh, dh);
      step.first[j] = (step.start[j] - group) / dh;
      step.end[j] = step.first[j] + kh;
    }
    return step;
  }
  static StepRows of_keys(int64_t a, int64_t group, int64_t H, int64_t kh, int64_t dh) {
    StepRows step;
    for (; step.count < kRowsPerStep && a + step.count * dh < H; ++step.count) {
      const int j = step.count;
      int64_t i0, i1;
      step.row[j] = a + j * dh;
      inverse_window(step.row[j], H, kh, dh, &i0, &i1);
      step.first[j] = (i0 - group) / dh;
      step.end[j] = (i1 - group + dh - 1) / dh;
    }
    return step;
  }
  int64_t span_end() const { return end[count - 1]; }
};

// Calls fn(other_row, rows, slot_rows, n) for each in-group row of the other kind that the step reads,
// in increasing order, with the n step rows that read it: step row rows[j] takes it as its
// slot_rows[j]-th row (j < n).
template <typename Fn>
inline void for_each_shared_row(const StepRows& step, const Fn& fn) {
  for (int64_t r = step.first[0]; r < step.span_end(); ++r) {
    int rows[kRowsPerStep], slot_rows[kRowsPerStep], n = 0;
    for (int j = 0; j < step.count; ++j)
      if (r >= step.first[j] && r < step.end[j]) rows[n] = j, slot_rows[n] = static_cast<int>(r - step.first[j]), ++n;
    fn(r, rows, slot_rows, n);
  }
}

// Calls fn(std::integral_constant<int, n>{}) for n in [1, kRowsPerStep].
template <typename Fn>
inline void with_row_count(int n, const Fn& fn) {
  static_assert(kRowsPerStep == 2, "with_row_count dispatches 1 or 2 rows");
  if (n == 2) return fn(std::integral_constant<int, 2>{});
  fn(std::integral_constant<int, 1>{});
}

// The key-row products of one step: for each key row and block of slots, with the R rows using it,
// x[j] = x_of(rows[j]) and out[j] = out_of(rows[j], slot_rows[j]) + block start, then
// product<C, R>(x, gathered registers of the block, out). Used for q.k, grad_out.v (dots) and
// p.v, ds.k (axpys): `offset` picks the k or v half of a gathered row.
template <typename XOf, typename OutOf, typename Product>
inline void step_products(const StepRows& step, const RowRing& ring, int64_t kw, int64_t D, int64_t offset,
                          const XOf& x_of, const OutOf& out_of, const Product& product) {
  for_each_shared_row(step, [&](int64_t key_row, const int* rows, const int* slot_rows, int n) {
    const Vec* g = ring.row(key_row) + offset;
    with_row_count(n, [&](auto row_count) {
      constexpr int R = decltype(row_count)::value;
      for_each_block(kw, [&](int64_t u, auto count) {
        const Vec* x[R];
        Vec* out[R];
        for (int j = 0; j < R; ++j) x[j] = x_of(rows[j], slot_rows[j], u), out[j] = out_of(rows[j], slot_rows[j], u);
        product(count, row_count, x, g + u * D, out);
      });
    });
  });
}

// Gathers the key rows of a step that the ring lacks: kw * D registers of k, then of v, per row.
inline void gather_step_keys(const StepRows& step, const QueryTile& t, const Idx* key, int64_t kw, int64_t group,
                             int64_t dh, const Problem& p, const float* k, const float* v, RowRing& ring) {
  const int64_t D = p.dim, W = p.width;
  ring.fill(step.span_end(), [&](int64_t r, Vec* g) {
    const int64_t a = group + r * dh;
    gather_row(k + a * W * D, t.window, D, key, kw, g);
    gather_row(v + a * W * D, t.window, D, key, kw, g + kw * D);
  });
}

// x_t + r * D = the tile's lanes (at input columns `column`) of the step's rows of x (one plane
// [H, W, D]), times scale (logits are (scale * q) . k, as in the reference, scale = inf included).
inline void load_step_rows(const StepRows& step, const int32_t* column, const float* x, const Problem& p, float scale,
                           Vec* x_t) {
  for (int r = 0; r < step.count; ++r) {
    lanes_of(x + step.row[r] * p.width * p.dim, column, p.dim, x_t + r * p.dim);
    if (scale != 1.f) scale_lanes(x_t + r * p.dim, p.dim, scale);
  }
}

// Prefetches the first row of the step after `step` (of the planes `step_planes`, at the tile's
// columns) and the first row of the other kind it may gather (of `gathered_planes`, at the window's
// columns). Prefetching the step's second rows as well measured up to 10% slower at head_dim 8.
template <typename Tile>
inline void prefetch_next_step(const StepRows& step, const Tile& t, int64_t group, int64_t dh, const Problem& p,
                               std::initializer_list<const float*> step_planes,
                               std::initializer_list<const float*> gathered_planes) {
  const int64_t D = p.dim, W = p.width, H = p.height;
  const int64_t i = step.row[step.count - 1] + dh, a = group + step.span_end() * dh;
  if (i < H)
    for (const float* x : step_planes) prefetch_columns(x + i * W * D, t.column, t.lanes, D);
  if (a < H)
    for (const float* x : gathered_planes) prefetch_columns(x + a * W * D, t.window.column, t.window.size, D);
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
  const int64_t area = s.kernel_area();
  // Per step row r: q_t + r * D, slots + r * area, acc + r * D.
  Vec *q_t = scratch.q_t.data(), *slots = scratch.slots.data(), *acc = scratch.acc.data();
  Idx key[kMaxKernel];  // lane l's key of slot uw: window element key_offset[l] + uw
  slot_indices(t.key_offset, kw, key);
  const Idx bias_col = _mm512_load_si512(t.bias_col);
  // A gathered key row: kw * D registers of k, then of v.
  RowRing ring(kh + kRowsPerStep - 1, 2 * kw * D, scratch.ring.data());
  for (int64_t i = group; i < H; i += kRowsPerStep * dh) {
    const StepRows step = StepRows::of_queries(i, group, H, kh, dh);
    gather_step_keys(step, t, key, kw, group, dh, p, k, v, ring);
    load_step_rows(step, t.column, q, p, scale, q_t);
    prefetch_next_step(step, t, group, dh, p, {q}, {k, v});

    // slots[r * area + uh * kw + uw] = scale * q . k + bias, then exp(. - max); sum over the slots.
    step_products(step, ring, kw, D, 0, [&](int r, int, int64_t) { return q_t + r * D; },
                  [&](int r, int uh, int64_t u) { return slots + r * area + uh * kw + u; },
                  [&](auto C, auto R, const Vec* const* x, const Vec* g, Vec* const* o) { gathered_dots<C(), R()>(x, g, D, o); });
    Vec max[kRowsPerStep], sum[kRowsPerStep];
    for (int r = 0; r < step.count; ++r) {
      Vec* logit = slots + r * area;
      const int64_t bias_row0 = bias_index(step.row[r], step.start[r], kh, dh);
      max[r] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      for (int64_t uh = 0; uh < kh; ++uh) {
        const BiasRow bias(table ? table + (bias_row0 + uh) * s.bias_cols() : nullptr, s.bias_cols());
        for (int64_t uw = 0; uw < kw; ++uw) {
          Vec& l = logit[uh * kw + uw];
          l = _mm512_add_ps(l, bias.at(plus(bias_col, uw)));
          max[r] = _mm512_max_ps(max[r], l);
        }
      }
      sum[r] = _mm512_setzero_ps();
      for (int64_t u = 0; u < area; ++u) {
        logit[u] = exp_nonpositive(_mm512_sub_ps(logit[u], max[r]));
        sum[r] = _mm512_add_ps(sum[r], logit[u]);
      }
    }

    std::fill(acc, acc + step.count * D, _mm512_setzero_ps());  // acc[r * D + d] = the lanes' sum_u p_u v_u[d]
    step_products(step, ring, kw, D, kw * D, [&](int r, int uh, int64_t u) { return slots + r * area + uh * kw + u; },
                  [&](int r, int, int64_t) { return acc + r * D; },
                  [&](auto C, auto R, const Vec* const* w, const Vec* g, Vec* const* a) { gathered_axpys<C(), R()>(w, g, D, a); });
    for (int r = 0; r < step.count; ++r) {
      const int64_t row = step.row[r];
      store_lanes(acc + r * D, D, _mm512_div_ps(_mm512_set1_ps(1.f), sum[r]), t.column, t.lanes, out + row * W * D);
      alignas(64) float max_of[kLanes], sum_of[kLanes];
      _mm512_store_ps(max_of, max[r]);
      _mm512_store_ps(sum_of, sum[r]);
      for (int64_t l = 0; l < t.lanes; ++l) lse[row * W + t.column[l]] = max_of[l] + std::log(sum_of[l]);
    }
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
  for (const HeadShape& s : groups.heads) ring = std::max(ring, (s.kernel_h + kRowsPerStep - 1) * 2 * s.kernel_w * D);
  auto make_scratch = [&] {
    return ForwardScratch{Registers(kRowsPerStep * D), Registers(kRowsPerStep * groups.max_kernel_area()),
                          Registers(kRowsPerStep * D), Registers(ring)};
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
  const int64_t area = s.kernel_area();
  // Per step row r: q_t, dout_t, acc + r * D; logits, dp + r * area.
  Vec *q_t = scratch.q_t.data(), *dout_t = scratch.dout_t.data(), *acc = scratch.acc.data();
  Vec *logits = scratch.logits.data(), *dp = scratch.dp.data(), *bias_acc = scratch.bias_acc.data();
  Idx key[kMaxKernel];
  slot_indices(t.key_offset, kw, key);
  const Idx bias_col = _mm512_load_si512(t.bias_col), columns = _mm512_load_si512(t.column);
  const __mmask16 valid = first_lanes(t.lanes);
  // A gathered key row: kw * D registers of k, then of v.
  RowRing ring(kh + kRowsPerStep - 1, 2 * kw * D, scratch.query_ring.data());
  auto dots = [&](auto C, auto R, const Vec* const* x_t, const Vec* g, Vec* const* out) {
    gathered_dots<C(), R()>(x_t, g, D, out);
  };
  for (int64_t i = group; i < H; i += kRowsPerStep * dh) {
    const StepRows step = StepRows::of_queries(i, group, H, kh, dh);
    gather_step_keys(step, t, key, kw, group, dh, p, x.k, x.v, ring);
    load_step_rows(step, t.column, x.q, p, scale, q_t);
    load_step_rows(step, t.column, x.dout, p, 1.f, dout_t);
    prefetch_next_step(step, t, group, dh, p, {x.q, x.dout}, {x.k, x.v});

    // logits = (scale q) . k and dp = grad_out . v per slot, then logits[u] becomes ds_u:
    // logit -> p = exp(logit - lse) -> p (dp - delta), zero on unused lanes.
    step_products(step, ring, kw, D, 0, [&](int r, int, int64_t) { return q_t + r * D; },
                  [&](int r, int uh, int64_t u) { return logits + r * area + uh * kw + u; }, dots);
    step_products(step, ring, kw, D, kw * D, [&](int r, int, int64_t) { return dout_t + r * D; },
                  [&](int r, int uh, int64_t u) { return dp + r * area + uh * kw + u; }, dots);
    for (int r = 0; r < step.count; ++r) {
      const int64_t row = step.row[r], bias_row0 = bias_index(row, step.start[r], kh, dh);
      const Vec lse = _mm512_i32gather_ps(columns, x.lse + row * W, sizeof(float));
      const Vec delta = _mm512_i32gather_ps(columns, x.delta + row * W, sizeof(float));
      for (int64_t uh = 0; uh < kh; ++uh) {
        Vec *logit = logits + r * area + uh * kw, *dpu = dp + r * area + uh * kw;
        const int64_t bias_row = bias_row0 + uh;
        const BiasRow bias(table ? table + bias_row * s.bias_cols() : nullptr, s.bias_cols());
        for (int64_t uw = 0; uw < kw; ++uw) {
          const Vec z = _mm512_sub_ps(_mm512_add_ps(logit[uw], bias.at(plus(bias_col, uw))), lse);
          logit[uw] = _mm512_maskz_mul_ps(valid, exp_nonpositive(z), _mm512_sub_ps(dpu[uw], delta));
          if (table)
            for (const auto& [col, lanes] : t.bias_classes) {
              Vec& entry = bias_acc[bias_row * s.bias_cols() + col + uw];
              entry = _mm512_mask_add_ps(entry, lanes, entry, logit[uw]);
            }
        }
      }
    }

    std::fill(acc, acc + step.count * D, _mm512_setzero_ps());
    step_products(step, ring, kw, D, 0, [&](int r, int uh, int64_t u) { return logits + r * area + uh * kw + u; },
                  [&](int r, int, int64_t) { return acc + r * D; },
                  [&](auto C, auto R, const Vec* const* w, const Vec* g, Vec* const* a) { gathered_axpys<C(), R()>(w, g, D, a); });
    for (int r = 0; r < step.count; ++r)
      store_lanes(acc + r * D, D, _mm512_set1_ps(scale), t.column, t.lanes, dq + step.row[r] * W * D);
  }
}

// Backward key pass of one key tile over the rows of one dilation group: dk = scale sum ds q and
// dv = sum p dout over the keys' inverse neighbourhoods, recomputing p and ds from lse and delta. A step
// takes kRowsPerStep key rows, sharing each gathered query register between them.
void key_sweep(const KeyTile& t, const HeadShape& s, const float* table, int64_t group, const Problem& p, float scale,
               const BackwardPlane& x, float* dk, float* dv, BackwardScratch& scratch) {
  const int64_t D = p.dim, W = p.width, H = p.height, kh = s.kernel_h, dh = s.dilation_h, M = t.max_count;
  // Per step row r: k_t, v_t, dk_acc, dv_acc + r * D.
  Vec *k_t = scratch.k_t.data(), *v_t = scratch.v_t.data();
  Vec *dk_acc = scratch.dk_acc.data(), *dv_acc = scratch.dv_acc.data();
  Idx query[kMaxInverse];  // lane l's m-th query: window element query_offset[l] + m
  slot_indices(t.query_offset, M, query);
  const Idx count = _mm512_load_si512(t.count), bias_col = _mm512_load_si512(t.bias_col);
  // A gathered query row: M * D registers of q, then of grad_out, then M of lse and M of delta.
  RowRing ring(2 * kh - 1 + kRowsPerStep - 1, 2 * M * D + 2 * M, scratch.key_ring.data());
  for (int64_t a = group; a < H; a += kRowsPerStep * dh) {
    const StepRows step = StepRows::of_keys(a, group, H, kh, dh);
    ring.fill(step.span_end(), [&](int64_t r, Vec* g) {
      const int64_t i = group + r * dh;
      gather_row(x.q + i * W * D, t.window, D, query, M, g);
      gather_row(x.dout + i * W * D, t.window, D, query, M, g + M * D);
      gather_values(x.lse + i * W, t.window, query, M, g + 2 * M * D);
      gather_values(x.delta + i * W, t.window, query, M, g + 2 * M * D + M);
    });
    load_step_rows(step, t.column, x.k, p, scale, k_t);  // q . (scale * k): the same products as (scale * q) . k
    load_step_rows(step, t.column, x.v, p, 1.f, v_t);
    prefetch_next_step(step, t, group, dh, p, {x.k, x.v}, {x.q, x.dout});
    std::fill(dk_acc, dk_acc + step.count * D, _mm512_setzero_ps());
    std::fill(dv_acc, dv_acc + step.count * D, _mm512_setzero_ps());
    for_each_shared_row(step, [&](int64_t r, const int* rows, const int*, int n) {
      const Vec *q_g = ring.row(r), *dout_g = q_g + M * D, *lse_g = q_g + 2 * M * D, *delta_g = lse_g + M;
      const int64_t i = group + r * dh;
      with_row_count(n, [&](auto row_count) {
        constexpr int R = decltype(row_count)::value;
        const Vec *k_rows[R], *v_rows[R];
        Vec *dk_rows[R], *dv_rows[R];
        BiasRow bias[R];
        for (int j = 0; j < R; ++j) {
          k_rows[j] = k_t + rows[j] * D, v_rows[j] = v_t + rows[j] * D;
          dk_rows[j] = dk_acc + rows[j] * D, dv_rows[j] = dv_acc + rows[j] * D;
          const int64_t bias_row = bias_index(i, step.row[rows[j]], kh, dh);
          bias[j] = BiasRow(table ? table + bias_row * s.bias_cols() : nullptr, s.bias_cols());
        }
        for_each_block(M, [&](int64_t m0, auto block) {
          constexpr int C = block();
          Vec prob[R][C], ds[R][C];
          const Vec *prob_in[R], *ds_in[R];
          Vec *prob_out[R], *ds_out[R];
          for (int j = 0; j < R; ++j) prob_in[j] = prob_out[j] = prob[j], ds_in[j] = ds_out[j] = ds[j];
          gathered_dots<C, R>(k_rows, q_g + m0 * D, D, prob_out);
          gathered_dots<C, R>(v_rows, dout_g + m0 * D, D, ds_out);
          __mmask16 attends[C];  // the lanes whose key the m-th gathered query attends
          for (int c = 0; c < C; ++c)
            attends[c] = _mm512_cmpgt_epi32_mask(count, _mm512_set1_epi32(static_cast<int32_t>(m0 + c)));
          for (int j = 0; j < R; ++j)
            for (int c = 0; c < C; ++c) {
              const int64_t m = m0 + c;
              const Vec logit = _mm512_add_ps(prob[j][c], bias[j].at(plus(bias_col, -m)));
              prob[j][c] = _mm512_maskz_mov_ps(attends[c], exp_nonpositive(_mm512_sub_ps(logit, lse_g[m])));
              ds[j][c] = _mm512_maskz_mul_ps(attends[c], prob[j][c], _mm512_sub_ps(ds[j][c], delta_g[m]));
            }
          gathered_axpys<C, R>(prob_in, dout_g + m0 * D, D, dv_rows, attends);
          gathered_axpys<C, R>(ds_in, q_g + m0 * D, D, dk_rows, attends);
        });
      });
    });
    for (int r = 0; r < step.count; ++r) {
      store_lanes(dk_acc + r * D, D, _mm512_set1_ps(scale), t.column, t.lanes, dk + step.row[r] * W * D);
      store_lanes(dv_acc + r * D, D, _mm512_set1_ps(1.f), t.column, t.lanes, dv + step.row[r] * W * D);
    }
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
    query_ring = std::max(query_ring, (s.kernel_h + kRowsPerStep - 1) * 2 * s.kernel_w * D);
    for (const KeyTile& t : key_tiles[s.group])
      key_ring = std::max(key_ring, (2 * s.kernel_h - 1 + kRowsPerStep - 1) * (2 * t.max_count * D + 2 * t.max_count));
  }
  auto make_scratch = [&] {
    const int64_t rows = kRowsPerStep;  // the per-row buffers hold a step's rows
    return BackwardScratch{Registers(rows * D), Registers(rows * D), Registers(rows * area), Registers(rows * area),
                           Registers(rows * D), Registers(bias_stride), Registers(rows * D), Registers(rows * D),
                           Registers(rows * D), Registers(rows * D), Registers(query_ring), Registers(key_ring)};
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

}  // namespace cpu
}  // namespace natten_ops
#endif  // __AVX512F__ && !NATTEN_OPS_PORTABLE
