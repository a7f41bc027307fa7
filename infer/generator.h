// Autoregressive decoding with KV caches, written once over model/backend.h (any backend).
//
// Block model (docs/design.md §2.4): each prompt is left-padded with pad_id to a multiple of L_B (at least
// one block); a batch is further aligned with whole pad blocks that attention_cached hides
// (start[b] = number of whole pad blocks). The block decoder runs once over the prompt blocks
// into a block-level cache; the last context embedding goes through the prefix expansion; the
// token decoder prefills the R prefix vectors into a local cache of R + L_B positions and then
// takes one token per step, L_B times; the new block is embedded and the block decoder takes one
// incremental step. The context embedding of block i conditions block i+1, as in training.
// Vanilla model: the prompt is left-padded to the longest one (pads hidden by start[b]),
// prefilled into the cache, then one token per step.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "infer/sampler.h"
#include "model/model.h"
#include "model/transformer.h"

namespace bt {

struct GenerateOptions {
  int max_new_tokens = 64;
  SamplingOptions sampling;
  int eos_id = -1;  // a sequence stops when it produces this id (-1: never)
  int pad_id = 0;   // left padding of prompts (the loader pads with EOS; use the tokenizer's EOS)
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // per prompt: the new tokens (up to, without, EOS)
  std::vector<bool> hit_eos;
  double prefill_seconds = 0;  // prompt processing up to the first sampled token's logits
  double decode_seconds = 0;   // everything after
  int64_t steps = 0;           // tokens generated per sequence (incl. after EOS, excl. early stop)
  size_t kv_cache_bytes = 0;   // KV caches allocated for the batch (all sequences)
};

class Generator {
 public:
  // The model's parameters are used in place (an inference-only Model(cfg, be, 0) suffices).
  explicit Generator(Model& model);
  ~Generator();
  GenerateResult generate(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o);

 private:
  Tensor scratch(int slot, Shape s, DType t);
  void embed_tokens(Tensor out, const std::vector<int32_t>& ids, Tensor table);
  GenerateResult generate_block(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o);
  GenerateResult generate_vanilla(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o);

  Model& model_;
  Backend& be_;
  std::unique_ptr<TransformerStack> bd_, td_, dec_;
  std::vector<Tensor> slots_;  // grow-only device buffers reused across calls
  std::vector<float> h_logits_;
};

// KV-cache bytes one sequence needs for a prompt of `prompt` tokens and `gen` new tokens, with
// elements of `elem_bytes` (block model: block decoder over blocks + the token decoder's local cache).
size_t kv_bytes_per_sequence(const ModelConfig& m, size_t elem_bytes, int64_t prompt, int64_t gen);

// The reference for tests: recomputes the whole (padded) sequence with the training forward for
// every new token, one prompt at a time. model needs max_batch >= 1; the sequence must fit in
// context_length.
std::vector<std::vector<int32_t>> generate_naive(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerateOptions& o);

}  // namespace bt
