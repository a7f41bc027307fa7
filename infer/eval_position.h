// `bt eval --by-position BUCKET`: the mean loss per absolute token position, in buckets of BUCKET
// positions, over long windows (the paper's analysis of how block models use long context; the
// official util/perplexity.py): every document of the shards is cut into whole windows of
// model.context_length tokens from its start (its EOS and a shorter remainder left out;
// documents shorter than a window are skipped), each window is scored from a fresh context, and
// the loss of every predicted position is averaged over the windows. Positions without a
// prediction (0 for vanilla; the first block, 0 .. L_B - 1, for block models) have none.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/model.h"

namespace bt {

struct PositionLoss {
  int context_length = 0;
  int64_t windows = 0;            // windows scored
  int64_t documents = 0;          // documents that gave at least one window
  int64_t skipped_documents = 0;  // documents shorter than one window
  std::vector<double> sum;        // [context_length] loss sum per position (nats)
  std::vector<int64_t> count;     // [context_length] targets per position
};

// Scores the windows of the shards `glob` with `model` (built with max_batch >= 1), at most
// max_windows of them (0: all), batch windows per forward.
PositionLoss loss_by_position(Model& model, const std::string& glob, int batch, int64_t max_windows);

// {"bucket", "context_length", "windows", "documents", "skipped_documents", "loss",
//  "buckets": [{"start", "end", "loss", "targets"}]}: bucket k covers positions
// [k * bucket, min((k + 1) * bucket, L)); buckets without a target are left out.
nlohmann::json position_json(const PositionLoss& p, int bucket);
// The same as a text table.
std::string position_table(const nlohmann::json& j);

}  // namespace bt
