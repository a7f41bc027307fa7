// Token-level language-model requests as lm-evaluation-harness (v0.4) defines them, built from
// text with one of our tokenizers:
//   loglikelihood(context, continuation) -> (sum of log P(continuation tokens | everything before),
//                                            is_greedy: every continuation token is the argmax)
//   loglikelihood_rolling(text)          -> the sum over disjoint windows that cover the whole text,
//                                            each scored with at most max_length tokens of input
// The text-to-token rules follow the harness's TemplateLM: an empty context becomes the EOT token;
// trailing whitespace of a context moves to the front of the continuation; the continuation's
// tokens are those of encode(context + continuation) after the first len(encode(context)).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace bt {

struct LLRequest {
  std::vector<int32_t> context;       // >= 1 token
  std::vector<int32_t> continuation;  // >= 1 token (an empty one scores 0, is_greedy true)
  bool need_greedy = true;            // false: is_greedy is not needed (skips reading logits)
};

struct LLResult {
  double logprob = 0;         // natural log
  bool is_greedy = true;      // meaningful only when greedy_known
  bool greedy_known = false;  // computed (need_greedy, or no token to score)
  int scored = 0;             // continuation tokens scored (block no-pad mode drops those in the first block)
};

// The harness's _encode_pair, or ([eot], encode(continuation)) when the context is empty.
LLRequest encode_request(const Tokenizer& tok, const std::string& context, const std::string& continuation);

// get_rolling_token_windows(tokens, prefix_token, max_len, context_len = 1) followed by
// make_disjoint_window: every token of `tokens` is predicted exactly once; the first window is
// conditioned on prefix_token alone, every later one on the max_len + 1 - |window| tokens before
// it (at least one). Empty input: no windows.
std::vector<LLRequest> rolling_windows(const std::vector<int32_t>& tokens, int32_t prefix_token, int max_len);

}  // namespace bt
