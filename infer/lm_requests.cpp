// Token-level requests from text, as lm-evaluation-harness builds them: see lm_requests.h.
#include "infer/lm_requests.h"

#include <algorithm>

#include "core/error.h"
#include "infer/tasks/text.h"

namespace bt {

LLRequest encode_request(const Tokenizer& tok, const std::string& context, const std::string& continuation) {
  LLRequest r;
  if (context.empty()) {
    r.context = {tok.eos_id()};
    r.continuation = tok.encode(continuation);
    return r;
  }
  // Trailing whitespace of the context belongs to the continuation (TemplateLM._encode_pair).
  const size_t n_space = text::trailing_space_bytes(context);
  const std::string ctx = context.substr(0, context.size() - n_space);
  const std::string cont = context.substr(context.size() - n_space) + continuation;
  std::vector<int32_t> whole = tok.encode(ctx + cont);
  r.context = tok.encode(ctx);
  const size_t n = std::min(r.context.size(), whole.size());
  r.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  if (r.context.empty()) {
    // A context that is all whitespace encodes to nothing; the harness would then index past
    // it. Condition on EOT instead, as it does for an empty context.
    r.context = {tok.eos_id()};
  }
  return r;
}

std::vector<LLRequest> rolling_windows(const std::vector<int32_t>& tokens, int32_t prefix_token, int max_len) {
  BT_CHECK(max_len >= 1, "rolling windows: max length must be >= 1");
  std::vector<LLRequest> out;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return out;
  auto slice = [&](int64_t a, int64_t b) { return std::vector<int32_t>(tokens.begin() + a, tokens.begin() + b); };
  // First window: all of its (up to max_len) tokens are predicted, conditioned on the prefix token.
  const int64_t first = std::min<int64_t>(max_len, n);
  out.push_back({{prefix_token}, slice(0, first), false});
  int64_t predicted = first;
  while (predicted < n) {
    // Later windows: max_len input tokens ending just before the last predicted one; the
    // context is what the previous windows already predicted (max_len + 1 - pred tokens).
    const int64_t pred = std::min<int64_t>(n - predicted, max_len);
    const int64_t end = predicted + pred;
    const int64_t ctx_begin = end - max_len - 1;  // >= 0: predicted >= max_len here
    out.push_back({slice(ctx_begin, end - pred), slice(end - pred, end), false});
    predicted = end;
  }
  return out;
}

}  // namespace bt
