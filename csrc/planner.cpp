// The packing planner (see planner.h). Each function names the Python function of s1fast/packing.py it
// mirrors; any change here must be made there too (tests/test_packing.py compares the two on random inputs).
//
// Costs arrive precomputed (float64, from CostModel.cost in Python) so both sides sum identical numbers in the
// same order; sorts are stable where Python's sorted() is, and ties go to the lowest index as in Python.
#include "planner.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

namespace s1fast {
namespace {

// SplitMix64 (Steele, Lea, Flood 2014), as packing.SplitMix64.
struct SplitMix64 {
  uint64_t s;
  explicit SplitMix64(uint64_t seed) : s(seed) {}
  uint64_t next() {
    s += 0x9E3779B97F4A7C15ULL;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  template <class T>
  void shuffle(std::vector<T>& xs) {  // Fisher-Yates from the back, as SplitMix64.shuffle
    for (int64_t i = static_cast<int64_t>(xs.size()) - 1; i > 0; --i) {
      int64_t j = static_cast<int64_t>(next() % static_cast<uint64_t>(i + 1));
      std::swap(xs[i], xs[j]);
    }
  }
};

struct Range { int64_t start, size; };

// An example with its cost and length beside it: gathered once per epoch after the shuffle, so the sorts and
// placements read memory in order (looking costs up by id would miss the cache for every access at 1M examples).
struct Item {
  double cost, key;  // key: what balanced mode groups by (the cost, or its tolerance level)
  int64_t len, id;
};

// Writes one step ([rank][micro] lists, already padded) into the flat plan.
struct Writer {
  PlanArrays& out;
  void begin_step(int64_t micro, int64_t epoch) {
    out.step_micro.push_back(micro);
    out.step_epoch.push_back(epoch);
  }
  void micro(const int64_t* ids, int64_t count) {
    out.order.insert(out.order.end(), ids, ids + count);
    out.offsets.push_back(static_cast<int64_t>(out.order.size()));
  }
  void empty() { out.offsets.push_back(static_cast<int64_t>(out.order.size())); }
  void micro(const Item* items, int64_t count) {
    for (int64_t k = 0; k < count; ++k) out.order.push_back(items[k].id);
    out.offsets.push_back(static_cast<int64_t>(out.order.size()));
  }
};

// std::stable_sort, but by insertion for the few elements of one rank's step (stable_sort allocates a buffer
// on every call, which dominated planning time at 1M examples).
template <class It, class Less>
void small_stable_sort(It first, It last, Less less) {
  if (last - first > 32) { std::stable_sort(first, last, less); return; }
  for (It i = first + (first != last); i < last; ++i) {
    auto v = std::move(*i);
    It j = i;
    for (; j != first && less(v, *(j - 1)); --j) *j = std::move(*(j - 1));
    *j = std::move(v);
  }
}

// _lpt_rank: least-loaded rank, first on ties, among the eligible ones (count < cap) when cap > 0.
inline int64_t lpt_rank(const std::vector<double>& load, const std::vector<int64_t>* count, int64_t cap) {
  int64_t best = -1;
  for (int64_t r = 0; r < static_cast<int64_t>(load.size()); ++r) {
    if (count && (*count)[r] >= cap) continue;
    if (best < 0 || load[r] < load[best]) best = r;
  }
  return best;
}

// Scratch buffers reused across steps (planning 1M examples must not allocate per step).
struct Scratch {
  std::vector<double> load;
  std::vector<int64_t> count;
  std::vector<std::vector<Item>> members;                  // [rank] -> examples
  std::vector<std::vector<std::vector<Item>>> bins;        // [rank] -> micro-batches
  std::vector<std::vector<int64_t>> room;                  // [rank] -> room left per micro-batch
  std::vector<std::vector<int64_t>> bin_order;             // [rank] -> micro-batch order (cost-descending)
                                                           // (tokens mode: the rank's bin indices)
  std::vector<double> bc;
  std::vector<int64_t> order;
  void reset(int64_t W) {
    load.assign(W, 0.0);
    count.assign(W, 0);
    members.resize(W);
    bins.resize(W);
    room.resize(W);
    bin_order.resize(W);
    for (int64_t r = 0; r < W; ++r) { members[r].clear(); room[r].clear(); bin_order[r].clear(); }
  }
};

double sum_cost(const Item* items, int64_t count) {  // _sum_cost
  double s = 0.0;
  for (int64_t k = 0; k < count; ++k) s += items[k].cost;
  return s;
}

// _place_examples: LPT over ranks, FFD by length per rank, micro-batches by cost, padded.
void place_examples(const Item* items, int64_t count, int64_t W, int64_t T, int64_t epoch, Scratch& sc, Writer& w) {
  sc.reset(W);
  for (int64_t k = 0; k < count; ++k) {
    int64_t r = lpt_rank(sc.load, nullptr, 0);
    sc.load[r] += items[k].cost;
    sc.members[r].push_back(items[k]);
  }
  int64_t M = 1;
  for (int64_t r = 0; r < W; ++r) {
    auto& mem = sc.members[r];
    small_stable_sort(mem.begin(), mem.end(), [](const Item& a, const Item& b) { return a.len > b.len; });
    auto& bins = sc.bins[r];
    auto& room = sc.room[r];
    int64_t nb = 0;
    for (const Item& it : mem) {
      int64_t b = 0;
      for (; b < nb; ++b) {
        if (room[b] >= it.len) { bins[b].push_back(it); room[b] -= it.len; break; }
      }
      if (b == nb) {
        if (static_cast<int64_t>(bins.size()) <= nb) bins.emplace_back();
        bins[nb].assign(1, it);
        room.push_back(T - it.len);
        ++nb;
      }
    }
    sc.bc.resize(nb);
    for (int64_t b = 0; b < nb; ++b) sc.bc[b] = sum_cost(bins[b].data(), bins[b].size());
    auto& ord = sc.bin_order[r];
    ord.resize(nb);
    std::iota(ord.begin(), ord.end(), 0);
    small_stable_sort(ord.begin(), ord.end(), [&](int64_t a, int64_t b) { return sc.bc[a] > sc.bc[b]; });
    M = std::max(M, nb);
  }
  w.begin_step(M, epoch);
  for (int64_t r = 0; r < W; ++r) {
    const auto& ord = sc.bin_order[r];
    for (int64_t m = 0; m < M; ++m) {
      if (m < static_cast<int64_t>(ord.size())) {
        const auto& b = sc.bins[r][ord[m]];
        w.micro(b.data(), b.size());
      } else {
        w.empty();
      }
    }
  }
}

// Micro-batches of one epoch in tokens mode, flat: bin k holds items[start[k] : start[k] + size[k]].
struct Bins {
  std::vector<Item> items;
  std::vector<int64_t> start, size;
  void clear() { items.clear(); start.clear(); size.clear(); }
};

// _best_fit: ids already length-descending; appends the window's bins to `bins` in creation order.
void best_fit(const Item* items, int64_t count, int64_t T, std::vector<std::vector<Item>>& win_bins) {
  std::set<std::pair<int64_t, int64_t>> open;  // (room, bin index)
  win_bins.clear();
  for (int64_t k = 0; k < count; ++k) {
    const int64_t L = items[k].len;
    auto it = open.lower_bound({L, -1});
    if (it != open.end()) {
      auto [room, b] = *it;
      open.erase(it);
      win_bins[b].push_back(items[k]);
      open.insert({room - L, b});
    } else {
      win_bins.push_back({items[k]});
      open.insert({T - L, static_cast<int64_t>(win_bins.size()) - 1});
    }
  }
}

// _place_bins: LPT of micro-batches over ranks, `accum` per rank at most.
void place_bins(const Bins& bins, const Range& g, int64_t W, int64_t accum, int64_t epoch, Scratch& sc, Writer& w) {
  sc.reset(W);
  sc.bc.resize(g.size);
  for (int64_t k = 0; k < g.size; ++k) {
    int64_t b = g.start + k;
    sc.bc[k] = sum_cost(bins.items.data() + bins.start[b], bins.size[b]);
  }
  auto& ord = sc.order;
  ord.resize(g.size);
  std::iota(ord.begin(), ord.end(), 0);
  small_stable_sort(ord.begin(), ord.end(), [&](int64_t a, int64_t b) { return sc.bc[a] > sc.bc[b]; });
  for (int64_t k : ord) {
    int64_t r = lpt_rank(sc.load, &sc.count, accum);
    sc.load[r] += sc.bc[k];
    sc.count[r] += 1;
    sc.bin_order[r].push_back(g.start + k);  // bin indices, per rank
  }
  int64_t M = 1;
  for (int64_t r = 0; r < W; ++r) M = std::max(M, sc.count[r]);
  w.begin_step(M, epoch);
  for (int64_t r = 0; r < W; ++r) {
    for (int64_t m = 0; m < M; ++m) {
      if (m < sc.count[r]) {
        int64_t b = sc.bin_order[r][m];
        w.micro(bins.items.data() + bins.start[b], bins.size[b]);
      } else {
        w.empty();
      }
    }
  }
}

// _windows: the epoch's ceil(n/G) steps split into ceil(steps/window) windows of near-equal step counts.
void windows(int64_t n, int64_t G, int64_t window, std::vector<Range>& out) {
  out.clear();
  const int64_t steps = (n + G - 1) / G, nw = (steps + window - 1) / window, q = steps / nw, rem = steps % nw;
  int64_t s0 = 0;
  for (int64_t k = 0; k < nw; ++k) {
    const int64_t s1 = s0 + q + (k < rem ? 1 : 0);
    out.push_back({s0 * G, std::min(n, s1 * G) - s0 * G});
    s0 = s1;
  }
}

}  // namespace

PlanArrays plan_packing(const int64_t* lengths, const double* costs, const double* keys, int64_t n,
                        const PlanArgs& a) {
  const int64_t W = a.world_size, T = a.max_tokens, G = a.global_batch;
  if (W < 1 || T < 1 || G < 1 || a.epochs < 1 || a.group_window < 1 || a.accum < 1 || n < 1)
    throw std::invalid_argument("plan: world_size, max_tokens, global_batch, epochs, group_window, accum and the "
                                "number of examples must all be >= 1");
  if (a.mode < kModeNone || a.mode > kModeTokens)
    throw std::invalid_argument("plan: mode must be 0 (none), 1 (balanced) or 2 (tokens), got " +
                                std::to_string(a.mode));
  for (int64_t i = 0; i < n; ++i) {
    if (lengths[i] < 1 || lengths[i] > T)
      throw std::invalid_argument("plan: example " + std::to_string(i) + " has length " +
                                  std::to_string(lengths[i]) + ", outside [1, max_tokens=" + std::to_string(T) +
                                  "]; drop or truncate it in the data pipeline, or raise max_tokens");
  }
  PlanArrays out;
  out.order.reserve(n * a.epochs);
  out.offsets.push_back(0);
  Writer w{out};
  Scratch sc;
  SplitMix64 rng(a.seed);
  std::vector<int64_t> perm(n);
  std::vector<Item> items(a.mode == kModeNone ? 0 : n);
  std::vector<Range> groups;
  Bins bins;
  std::vector<std::vector<Item>> win_bins;
  std::vector<int64_t> win_order;
  std::vector<double> win_bc;
  std::vector<Range> wins;

  for (int64_t e = 0; e < a.epochs; ++e) {
    std::iota(perm.begin(), perm.end(), 0);
    rng.shuffle(perm);
    if (a.mode == kModeNone) {
      for (int64_t s0 = 0; s0 < n; s0 += G) {
        int64_t S = std::min(G, n - s0), M = (S + W - 1) / W;
        w.begin_step(M, e);
        for (int64_t r = 0; r < W; ++r)
          for (int64_t m = 0; m < M; ++m) {
            int64_t j = m * W + r;  // example j of the step -> rank j % W, micro j / W
            if (j < S) w.micro(&perm[s0 + j], 1); else w.empty();
          }
      }
      continue;
    }
    for (int64_t k = 0; k < n; ++k) items[k] = Item{costs[perm[k]], keys[perm[k]], lengths[perm[k]], perm[k]};
    groups.clear();
    if (a.mode == kModeBalanced) {
      windows(n, G, a.group_window, wins);
      for (const auto& wr : wins) {
        const int64_t w0 = wr.start, w1 = wr.start + wr.size;
        std::stable_sort(items.begin() + w0, items.begin() + w1,
                         [](const Item& x, const Item& y) { return x.key > y.key; });
        for (int64_t s0 = w0; s0 < w1; s0 += G) groups.push_back({s0, std::min(G, w1 - s0)});
      }
      rng.shuffle(groups);
      for (const auto& g : groups) place_examples(&items[g.start], g.size, W, T, e, sc, w);
      continue;
    }
    // tokens mode
    bins.clear();
    windows(n, G, a.group_window, wins);
    for (const auto& wr : wins) {
      const int64_t w0 = wr.start, w1 = wr.start + wr.size;
      std::stable_sort(items.begin() + w0, items.begin() + w1,
                       [](const Item& x, const Item& y) { return x.len > y.len; });
      best_fit(&items[w0], w1 - w0, T, win_bins);
      int64_t nb = win_bins.size();
      win_bc.resize(nb);
      for (int64_t b = 0; b < nb; ++b) win_bc[b] = sum_cost(win_bins[b].data(), win_bins[b].size());
      win_order.resize(nb);
      std::iota(win_order.begin(), win_order.end(), 0);
      std::stable_sort(win_order.begin(), win_order.end(), [&](int64_t x, int64_t y) { return win_bc[x] > win_bc[y]; });
      for (int64_t b : win_order) {
        bins.start.push_back(bins.items.size());
        bins.size.push_back(win_bins[b].size());
        bins.items.insert(bins.items.end(), win_bins[b].begin(), win_bins[b].end());
      }
    }
    const int64_t per = W * a.accum, nbins = bins.start.size();
    for (int64_t k = 0; k < nbins; k += per) groups.push_back({k, std::min(per, nbins - k)});
    rng.shuffle(groups);
    for (const auto& g : groups) place_bins(bins, g, W, a.accum, e, sc, w);
  }
  return out;
}

}  // namespace s1fast
