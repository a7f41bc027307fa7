// Autoregressive decoding with KV caches, written once over model/backend.h (any backend), on
// the decode engine of infer/decode_session.h.
//
// Block model (docs/design.md §2.4): each prompt is left-padded with pad_id to a multiple of L_B (at least
// one block); a batch is further aligned with whole pad blocks that attention_cached hides
// (start[b] = number of whole pad blocks). The block decoder runs once over the prompt blocks
// (embedded by the model's embedder, concat or projection_layer) into a block-level cache; the last
// context embedding goes through the expansion; with the prefix strategy the token decoder
// prefills the R prefix vectors into a local cache of R + L_B positions and then takes one token
// per step, L_B times; with summation it takes e(BOS) + E_1, then e(t_j) + E_{j+1}, in a local cache
// of L_B positions. The new block is embedded and the block decoder takes one incremental step.
// The context embedding of block i conditions block i+1, as in training.
// Vanilla model: the prompt is left-padded to the longest one (pads hidden by start[b]),
// prefilled into the cache, then one token per step.
//
// Decoding stays on the device (docs/inference.md, "Decoding on the device"): tokens are chosen
// by Backend::sample_tokens, feed the next embedding without leaving the device, and the
// positions and the Philox counter are device counters. Per step only the new ids come back
// (once per block for block models, once per token for the vanilla model), never the logits.
// The steady-state steps (token-decoder step, block-decoder step, vanilla step) run through
// Backend::run_step, so the CUDA backend replays them as CUDA graphs.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "infer/decode_session.h"
#include "infer/sampler.h"
#include "model/model.h"
#include "model/transformer.h"

namespace bt {

struct GenerateOptions {
  int max_new_tokens = 64;
  SamplingOptions sampling;
  int eos_id = -1;  // a sequence stops when it produces this id (-1: never)
  int pad_id = 0;   // left padding of prompts: the model's pad token (bt generate: model.pad_token_id, else the data's EOS)
  // The Philox stream of each prompt (empty: the prompt's index). A prompt's samples depend only
  // on (seed, its stream, the token index), not on its row or on the other prompts of the batch.
  std::vector<int32_t> streams;
  // Prompt positions per forward call in the prefill: at most max(1, prefill_rows / batch)
  // positions (blocks for the block decoder) of every sequence at once, so the prefill's
  // activations stay bounded for long prompts and large batches. 0: 4096.
  int64_t prefill_rows = 0;
  bool profile = false;  // time the decode phases (GenerateResult::phases); synchronizes, no graphs
};

struct GenerateResult {
  std::vector<std::vector<int32_t>> tokens;  // per prompt: the new tokens (up to, without, EOS)
  std::vector<bool> hit_eos;
  double prefill_seconds = 0;  // prompt processing up to the first sampled token
  double decode_seconds = 0;   // everything after
  int64_t steps = 0;           // tokens generated per sequence (incl. after EOS, excl. early stop)
  size_t kv_cache_bytes = 0;   // KV caches allocated for the batch (all sequences)
  TransferStats prefill_transfers;  // host <-> device traffic of the setup and prefill
  TransferStats decode_transfers;   // ... of the decode loop (after the first sampled token)
  DecodePhases phases;              // with GenerateOptions::profile
};

// The device memory one generate call allocates besides the weights (the memory plan of
// `bt bench infer --batch auto`): exactly what the decode session allocates, each allocation
// rounded up to `align` bytes (the CUDA arena: 256).
DecodePlan plan_decode(const ModelConfig& m, DType act, DType stats, int64_t B, int64_t prompt, int64_t gen,
                       int64_t prefill_rows = 0, size_t align = 256);
// The largest B <= max_batch whose plan fits `budget` bytes (0 when not even B = 1 does).
int64_t largest_batch(const ModelConfig& m, DType act, DType stats, size_t budget, int64_t prompt, int64_t gen,
                      int64_t max_batch, int64_t prefill_rows = 0, size_t align = 256);

// Generation of one batch of prompts from start to end on a decode session (decode_session.h):
// the prompts are left-padded to a common length, prefilled, armed, and decoded round by round
// until every sequence has stopped or has max_new_tokens tokens.
class Generator {
 public:
  // The model's parameters are used in place (an inference-only Model(cfg, be, 0) suffices).
  explicit Generator(Model& model);
  ~Generator();
  GenerateResult generate(const std::vector<std::vector<int32_t>>& prompts, const GenerateOptions& o);
  // Allocates what generate() needs for B prompts of `prompt` tokens and `gen` new tokens (no
  // compute): confirms a memory plan. Throws when the device runs out of memory.
  void reserve(int64_t B, int64_t prompt, int64_t gen, int64_t prefill_rows = 0);
  // The device buffer that holds the logits of the last step of the last call, [B, V] (tests).
  Tensor last_logits() const { return session_->logits(last_B_); }

 private:
  Backend& be() { return model_.backend(); }
  Model& model_;
  std::unique_ptr<DecodeSession> session_;
  int64_t last_B_ = 1;
};

// KV-cache bytes one sequence needs for a prompt of `prompt` tokens and `gen` new tokens, with
// elements of `elem_bytes` (block model: block decoder over blocks + the token decoder's local cache).
size_t kv_bytes_per_sequence(const ModelConfig& m, size_t elem_bytes, int64_t prompt, int64_t gen);

// The reference for tests: recomputes the whole (padded) sequence with the training forward for
// every new token, one prompt at a time, and samples on the host by the same rule
// (model/sampling.h) with the same Philox streams. model needs max_batch >= 1; the sequence must
// fit in context_length.
std::vector<std::vector<int32_t>> generate_naive(Model& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const GenerateOptions& o);

}  // namespace bt
