// Loss by absolute position: see eval_position.h.
#include "infer/eval_position.h"

#include <fmt/core.h>

#include <cmath>

#include "core/error.h"
#include "data/shard.h"
#include "data/token_stream.h"

namespace bt {

PositionLoss loss_by_position(Model& model, const std::string& glob, int batch, int64_t max_windows) {
  const ModelConfig& m = model.config();
  const int L = m.context_length;
  BT_CHECK(batch >= 1 && batch <= model.max_batch(), "--by-position: batch ", batch, " outside 1..",
           model.max_batch());
  PositionLoss p;
  p.context_length = L;
  p.sum.assign(L, 0.0);
  p.count.assign(L, 0);
  const int first = m.is_block() ? m.block_length : 1;  // the first predicted position
  std::vector<int32_t> tokens;                          // [rows, L]
  auto flush = [&] {
    const int rows = static_cast<int>(tokens.size() / L);
    if (rows == 0) return;
    model.forward(tokens.data(), nullptr, rows);
    const std::vector<double>& losses = model.row_losses();
    for (int b = 0; b < rows; ++b)
      for (int pos = first; pos < L; ++pos) {
        p.sum[pos] += losses[static_cast<size_t>(model.logit_row(b, pos))];
        ++p.count[pos];
      }
    p.windows += rows;
    tokens.clear();
  };
  for (const std::string& path : expand_shard_list(glob)) {
    ShardFile shard(path);
    BT_CHECK(shard.info().vocab_size <= m.vocab_size, path, ": vocabulary of ", shard.info().vocab_size,
             " tokens does not fit model.vocab_size ", m.vocab_size);
    const std::vector<uint64_t> offsets = shard.read_doc_offsets();
    for (size_t d = 0; d < offsets.size(); ++d) {
      const uint64_t begin = offsets[d];
      const uint64_t end = (d + 1 < offsets.size() ? offsets[d + 1] : shard.info().tokens) - 1;  // without the EOS
      const uint64_t n = (end - begin) / static_cast<uint64_t>(L);
      if (n == 0) {
        ++p.skipped_documents;
        continue;
      }
      ++p.documents;
      for (uint64_t w = 0; w < n; ++w) {
        if (max_windows > 0 && p.windows + static_cast<int64_t>(tokens.size() / L) >= max_windows) break;
        tokens.resize(tokens.size() + L);
        shard.read_tokens(begin + w * L, L, tokens.data() + tokens.size() - L);
        if (static_cast<int>(tokens.size() / L) == batch) flush();
      }
      if (max_windows > 0 && p.windows + static_cast<int64_t>(tokens.size() / L) >= max_windows) break;
    }
    if (max_windows > 0 && p.windows + static_cast<int64_t>(tokens.size() / L) >= max_windows) break;
  }
  flush();
  BT_CHECK(p.windows > 0, "--by-position: no document of '", glob, "' holds a window of model.context_length = ", L,
           " tokens (", p.skipped_documents, " shorter documents skipped)");
  return p;
}

nlohmann::json position_json(const PositionLoss& p, int bucket) {
  BT_CHECK(bucket >= 1, "--by-position BUCKET must be >= 1 position (got ", bucket, ")");
  nlohmann::json buckets = nlohmann::json::array();
  double total = 0;
  int64_t targets = 0;
  for (int start = 0; start < p.context_length; start += bucket) {
    const int end = std::min(p.context_length, start + bucket);
    double s = 0;
    int64_t c = 0;
    for (int pos = start; pos < end; ++pos) {
      s += p.sum[pos];
      c += p.count[pos];
    }
    total += s;
    targets += c;
    if (c > 0) buckets.push_back({{"start", start}, {"end", end}, {"loss", s / double(c)}, {"targets", c}});
  }
  return {{"bucket", bucket},
          {"context_length", p.context_length},
          {"windows", p.windows},
          {"documents", p.documents},
          {"skipped_documents", p.skipped_documents},
          {"loss", targets ? total / double(targets) : 0.0},
          {"buckets", buckets}};
}

std::string position_table(const nlohmann::json& j) {
  std::string s = fmt::format("loss by position: {} windows of {} tokens from {} documents ({} shorter skipped)\n",
                              j["windows"].get<int64_t>(), j["context_length"].get<int>(),
                              j["documents"].get<int64_t>(), j["skipped_documents"].get<int64_t>());
  s += fmt::format("{:>8} {:>8} {:>10} {:>8} {:>10}\n", "from", "to", "loss", "ppl", "targets");
  for (const auto& b : j["buckets"])
    s += fmt::format("{:>8} {:>8} {:>10.4f} {:>8.2f} {:>10}\n", b["start"].get<int>(), b["end"].get<int>() - 1,
                     b["loss"].get<double>(), std::exp(b["loss"].get<double>()), b["targets"].get<int64_t>());
  s += fmt::format("all positions: loss {:.4f}\n", j["loss"].get<double>());
  return s;
}

}  // namespace bt
