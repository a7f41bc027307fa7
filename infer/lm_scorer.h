// Scores loglikelihood requests (infer/lm_requests.h) with a Model, in batches, on any backend.
//
// Each request becomes one row: the last max_length + 1 tokens of context + continuation (the
// harness truncates from the left the same way); the logits at the continuation's positions give
// its log-probability (the model's cross-entropy of those rows) and is_greedy (argmax of the
// downloaded rows, only when asked for).
//
// Block models see a row the way the official evaluation wrappers build it
// (itsnamgyu/block-transformer lm_eval/models/block_transformer_{pad,nopad}.py):
//   pad    L_B - 1 pad tokens, then the row: the first block is [P .. P t_0], so every token after
//          t_0 has a context embedding to be predicted from (the official eval config's default,
//          `eval_no_pad: False`, for checkpoints trained with pads in their first blocks).
//   nopad  the row from position 0: tokens in the first block have no context embedding and are
//          not scored (the patched harness drops them: `cont_toks[-ctx_len:]`); a request with
//          no scorable token scores 0 and is counted in ScorerStats::unscorable.
// In both modes the rows are right-padded to a whole number of blocks and every token equal to
// the pad id gets mask 0 (`attention_mask = inps != pad_token_id` in the official code), so the
// model hides it as the official model does; a continuation token equal to the pad id is still
// scored (from its logits row, on the host).
// The vanilla model sees the row as is, right-padded, with no mask (HF causal LM, no attention
// mask, as the harness calls it).
//
// Batching: rows are sorted by length (longest first, as the harness does) and packed into
// forwards of up to batch_tokens positions (Model::forward_window, windows padded to the longest
// row of the batch), so short requests fill a forward with many rows. A row that is a prefix of
// another row is read from that row (causal: the same logits). For the vanilla model, requests
// that share their context (the choices of a multiple-choice question) prefill the context once
// into a KV cache that every choice continues from (share_context).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "infer/lm_requests.h"
#include "model/model.h"

namespace bt {

enum class BlockContext { pad, nopad };
BlockContext parse_block_context(const std::string& s);  // "pad" | "nopad"
const char* to_string(BlockContext c);

struct ScorerOptions {
  int max_length = 0;        // tokens of model input per request (the harness's max_length)
  BlockContext block_context = BlockContext::pad;
  int pad_id = 0;            // block models: pad token of the rows (the official pad, else EOS)
  bool share_context = true; // vanilla: prefill each shared context once
  // Called after every batch with (requests done, requests in all).
  std::function<void(int64_t, int64_t)> progress;
};

struct ScorerStats {
  int64_t requests = 0;      // requests scored (all calls)
  int64_t forwards = 0;      // model calls (window forwards + shared-context batches)
  int64_t rows = 0;          // rows computed (after prefix sharing)
  int64_t positions = 0;     // token positions computed, padding included
  int64_t tokens = 0;        // request tokens (context + continuation, truncated)
  int64_t shared_requests = 0;   // requests scored through a shared context
  int64_t unscorable = 0;    // nopad: requests whose continuation lies in the first block
  int64_t dropped_tokens = 0;    // nopad: continuation tokens in the first block (not scored)
};

// Tokens per row the model must hold for max_length (what Model::forward_window needs):
// vanilla max_length + 1; block pad L_B - 1 + max_length + 1, nopad max_length + 1, rounded up
// to a multiple of L_B (at least 2 L_B).
int scorer_window(const ModelConfig& m, int max_length, BlockContext c);

class LMScorer {
 public:
  // model: built with context_length >= scorer_window(...) and a micro batch >= 1; the token
  // budget of one forward is its micro batch x context_length.
  LMScorer(Model& model, const ScorerOptions& o);
  ~LMScorer();
  std::vector<LLResult> score(const std::vector<LLRequest>& requests);
  const ScorerStats& stats() const { return stats_; }
  int max_length() const;
  const ScorerOptions& options() const;
  void set_progress(std::function<void(int64_t, int64_t)> f);

 private:
  struct Row;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ScorerStats stats_;
};

}  // namespace bt
