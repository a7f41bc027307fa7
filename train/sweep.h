// `bt sweep` (docs/ablations.md): one training run per point of a grid of config overrides, each in
// OUT/<point name>, resumable point by point, with a results table of every point.
//
// Points: the product of the --grid axes (each axis one key, or several keys linked so that they
// change together), then the --point extras. A point is a base config plus overrides: the common
// ones, then its own settings. Its name is the base config's name followed by `-KEY=VALUE` for
// each of its settings (KEY: the last part of the key; characters other than letters, digits
// and `._+-` become `_`): configs/tiny/block_b4.yaml with model.block_length=8 and
// model.embedder.dim=32 is `tiny_block_b4-block_length=8-dim=32`.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"

namespace bt {

// Splits at `sep` outside brackets ([], {}) and quotes: "a,[1,2],{x: 3}" -> a | [1,2] | {x: 3}.
std::vector<std::string> split_top_level(const std::string& s, char sep);

// One --grid axis: `KEY=V1,V2,...` (one key), or `K1,K2=[A1,B1],[A2,B2],...` (linked keys: each
// value a list with one entry per key). values[i] holds the value of every key at step i.
struct SweepAxis {
  std::vector<std::string> keys;
  std::vector<std::vector<std::string>> values;
};
SweepAxis parse_axis(const std::string& spec);

struct SweepSpec {
  std::string config;                   // the base config file
  std::vector<std::string> overrides;   // common to every point
  std::vector<SweepAxis> grid;
  std::vector<std::string> points;      // --point: "K=V,K=V" (config=FILE picks another base config)
  std::string out;                      // OUT
};

struct SweepPoint {
  std::string name;
  std::string config;                                        // its base config file
  std::vector<std::pair<std::string, std::string>> settings; // its own key=value, in order
  std::vector<std::string> overrides;                        // what bt train gets after --config
  Config resolved;                                           // the config it trains (validated)
  std::string dir;                                           // OUT/name
};

// Every point, in order (the grid product with the last axis changing fastest, then the
// --point extras), each config loaded and validated; fails naming the point when one does not
// load, or when two points get the same name.
std::vector<SweepPoint> expand_points(const SweepSpec& spec);

std::string point_name(const std::string& config_name, const std::vector<std::pair<std::string, std::string>>& settings);

// Where a point stands: no checkpoint, a checkpoint before the end (train.stop_step, else
// train.steps), or finished.
struct PointStatus {
  int64_t step = 0;  // the latest checkpoint's step (0: none)
  int64_t end = 0;   // the step the point's run ends at
  bool done() const { return step >= end; }
};
PointStatus point_status(const SweepPoint& p);

// OUT/NAME/point.json: what the point is (name, base config, overrides, settings). Written before
// the point first trains; a point directory that holds another point's settings is an error.
nlohmann::json point_json(const SweepPoint& p);
void claim_point_dir(const SweepPoint& p);

// The results of every point directory under OUT (those of `points` first, in their order, then
// any others, by name): one row per point. Columns: point, config, the settings' keys, kind,
// block_length, params, non_embedding_params, step, end_step, tokens, val_loss, val_loss_pos1..,
// train_tokens_per_s, then those present: prefill_heavy_tokens_per_s, decode_heavy_tokens_per_s,
// bench_batch (bench.json), TASK/METRIC (tasks.json). Missing values are empty.
struct SweepTable {
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
};
SweepTable gather_results(const std::string& out, const std::vector<SweepPoint>& points);
// OUT/results.csv and OUT/results.md, written atomically.
void write_results(const std::string& out, const SweepTable& t);

}  // namespace bt
