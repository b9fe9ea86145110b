// The packing planner, torch-free: csrc/packing.cpp wraps it as the op torch.ops.s1fast.plan.
//
// It follows s1fast/packing.py's `_plan_reference` step by step (same SplitMix64 stream, same stable sorts,
// same tie-breaking), so the two produce identical plans; see that module's docstring for the modes.
#pragma once
#include <cstdint>
#include <vector>

namespace s1fast {

enum PlanMode : int64_t { kModeNone = 0, kModeBalanced = 1, kModeTokens = 2 };

struct PlanArgs {
  int64_t world_size, max_tokens, global_batch, epochs;
  uint64_t seed;
  int64_t mode, group_window, accum;
};

// Flat plan: `order` lists example ids micro-batch by micro-batch (step -> rank -> micro); `offsets` delimits
// the micro-batches; step k has step_micro[k] micro-batches per rank; step_epoch[k] is its epoch.
struct PlanArrays {
  std::vector<int64_t> order, offsets, step_micro, step_epoch;
};

// keys: the balanced mode's grouping key per example (descending; ties keep the shuffled order).
PlanArrays plan_packing(const int64_t* lengths, const double* costs, const double* keys, int64_t n,
                        const PlanArgs& args);

}  // namespace s1fast
