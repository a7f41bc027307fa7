// The device buffers of a decode session, one list of shapes per strategy (internal to
// infer/decode_*.cpp): the session allocates exactly this list and plan_session sums it.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "infer/decode_session.h"

namespace bt {

// Buffer slots (grow-only, reused across allocations).
enum DecodeSlot : int {
  kStart = 0,        // [R] i32 first visible position of the first stack's cache per row
  kSeq = 1,          // [R] i32 Philox stream per row
  kDone = 2,         // [R] i32 1 once a row drew its EOS
  kIds = 3,          // [R] i32 the newest token of each row (the next embedding's input)
  kCounters = 4,     // [3, R] i32 token index s, token-decoder position, block-decoder position
  kLogits = 5,       // [R, V]
  kParams = 6,       // [R, kSampleParamWords] i32 per-row sampling parameters (row_params)
  kPromptIds = 7,    // [units * unit] i32 prompt ids of one prefill call
  kPromptEmb = 8,    // [units * unit, C] their embeddings
  kTokEmb = 9,       // [R, D] the token embedding of a token step
  kHist = 10,        // block: [R, L_B] i32 the tokens of the current block
  kBlockEmb = 11,    // block: [R * L_B, E] the lookups of a block-decoder step
  kPrefixHead = 12,  // prefix: [R, (R_p-1) * D_T] prefix vectors P_1 .. P_{R_p-1}; summation: [L_B, R, D_T] E_1 .. E_{L_B}
  kPrefixLast = 13,  // prefix: [R, D_T] prefix vector P_{R_p}; summation: [R, D_T] the token decoder's input
  kLookT = 14,       // projection_layer: [blocks, E * L_B] channel-major lookups of the blocks being embedded
  kBlocks = 15,      // projection_layer: [blocks, D_B] block vectors
  kBos = 16,         // summation: [R] i32 BOS, the token decoder's first input
  kCacheBase = 24,   // then k, v per layer of the first stack, then of the token decoder
};

struct SessionBuffers {
  struct Spec {
    int slot;
    Shape shape;
    DType dtype;
  };
  std::vector<Spec> slots;
  int64_t rows1 = 0, rows2 = 0;  // forward_cached rows of the first stack and the token decoder
  int64_t T1 = 0, T2 = 0;        // cache lengths
  void add(int slot, Shape s, DType t) { slots.push_back({slot, s, t}); }
  // k, v [R, H, T, hd] per layer of a stack, from slot `base` on.
  void caches(const DecoderConfig& d, int64_t R, int64_t T, int base, DType act);
};

// The whole list for a shape: the common buffers and the strategy's.
SessionBuffers session_buffers(const ModelConfig& m, DType act, const SessionShape& s);
// The strategies' own buffers (decode_block.cpp, decode_vanilla.cpp).
void block_buffers(const ModelConfig& m, DType act, const SessionShape& s, SessionBuffers& b);
void vanilla_buffers(const ModelConfig& m, DType act, const SessionShape& s, SessionBuffers& b);
std::unique_ptr<DecodeSession> make_block_session(Model& model);
std::unique_ptr<DecodeSession> make_vanilla_session(Model& model);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace bt
