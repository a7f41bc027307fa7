// Checkpoints (docs/design.md §6): one directory per saved step,
//
//   ROOT/step_00010000/
//     model.safetensors      fp32 weights, official PyTorch names and shapes (ParamInfo::file_shape)
//     optimizer.safetensors  AdamW state per parameter: NAME.exp_avg, NAME.exp_avg_sq (+ NAME.master)
//     trainer_state.json     step, tokens seen, loader state, RNG state, lr, config hash, world size
//     config.yaml            the resolved config
//     tokenizer.json, ...    the tokenizer files of the data (when known), for generate / eval
//     checksums.json         {"algorithm": "xxh3-64", "files": {NAME: {"bytes", "xxh3"}}} of every file
//                            above, recorded as they were written; verified when they are loaded
//     COMPLETE               written last; a directory without it is not a checkpoint
//   ROOT/latest -> step_00010000   (a relative symlink, replaced atomically with rename(2))
//
// Crash safety: everything is written into ROOT/step_XXXXXXXX.tmp-<pid>, each file and the
// directory fsynced, COMPLETE written and fsynced last, then the directory is renamed into place
// (or atomically exchanged with an existing one of the same step), ROOT fsynced, and only then
// `latest` is moved. A kill at any moment leaves `latest` at a complete checkpoint. Old
// checkpoints are deleted by first renaming them to *.del-<pid>, so a half-deleted directory
// never looks like a checkpoint.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "model/safetensors.h"

namespace bt {

// "step_00000010"
std::string checkpoint_dir_name(int64_t step);

struct CheckpointContents {
  int64_t step = 0;
  const Config* config = nullptr;
  const ParamTable* table = nullptr;
  const float* params = nullptr;                // [table->total()] flat host copy of the weights
  std::vector<SafetensorOut> optimizer;         // optimizer.safetensors (skipped when empty)
  nlohmann::json trainer_state = nlohmann::json::object();  // trainer_state.json
  std::vector<std::string> copy_files;          // copied into the directory under their file names
};

// Writes ROOT/step_XXXXXXXX as described above, points ROOT/latest at it, and keeps the `keep`
// newest checkpoints up to this step (keep <= 0 keeps all) and, with keep_every > 0, every
// checkpoint whose step is a multiple of keep_every. Returns the checkpoint directory. A save that
// fails (disk full, I/O error) removes its partial directory and leaves `latest` as it was; the
// error says so.
std::string save_checkpoint(const std::string& root, const CheckpointContents& c, int keep, int keep_every = 0);

// Removes leftovers of interrupted saves and deletions under ROOT (*.tmp-<pid>, *.del-<pid>,
// latest.tmp-<pid>): those of processes that are gone, or all of them when `all` (the caller
// holds the out_dir lock, so no other writer can be at work there).
void clean_checkpoint_leftovers(const std::string& root, bool all);

// Verifies every file listed in DIR/checksums.json (size and XXH3-64); fails naming the file and
// the newest earlier checkpoint. Returns false when DIR has no checksums.json (a checkpoint
// written before checksums were recorded): nothing is verified then. Each file is hashed once
// per process (the result is remembered by path, size and modification time).
bool verify_checkpoint(const std::string& dir);
// The same for one file, against the checksums.json next to it (when there is one).
void verify_checkpoint_file(const std::string& file);

// Complete checkpoints under ROOT, sorted by step: (step, directory).
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& root);
// The directory ROOT/latest points at, or "" when there is no `latest`.
std::string find_latest_checkpoint(const std::string& root);
// Accepts a checkpoint directory, a `latest` link, a checkpoints root (holding `latest`) or a run
// directory (holding checkpoints/latest); returns the checkpoint directory. One-line error when it
// is not a complete checkpoint.
std::string resolve_checkpoint(const std::string& path);

// config.yaml of a checkpoint directory.
Config load_checkpoint_config(const std::string& dir);
// trainer_state.json of a checkpoint directory.
nlohmann::json load_trainer_state(const std::string& dir);

// Fills the flat buffer [table.total()] from a safetensors file with the official names. Every
// tensor of the table must be present with its file shape (or its storage shape), and finite; a
// missing, mis-shaped or non-finite tensor is a one-line error naming it. The file is first
// verified against the checksums.json next to it, when there is one. Tensors the model does not use (the block
// decoder's embed_in, HF's attention.bias / rotary_emb.inv_freq buffers, ...) are returned.
std::vector<std::string> load_weights(const std::string& file, const ParamTable& table, float* flat);

// Loads per-parameter tensors NAME + suffix (optimizer.safetensors) into a flat buffer laid out
// by the table; every parameter must be present and finite. Returns false when the file has none of them.
bool load_flat_by_suffix(const SafetensorsReader& f, const ParamTable& table, const std::string& suffix, float* flat);
// The SafetensorOut list for a flat buffer: NAME + suffix with the file shapes.
std::vector<SafetensorOut> flat_tensors(const ParamTable& table, const float* flat, const std::string& suffix);

// Fails with one line naming the first model.* key where a checkpoint's model differs from the
// config being run.
void check_same_model(const ModelConfig& ckpt, const ModelConfig& run, const std::string& what);

// Writes text to path and fsyncs it (not atomic by itself).
void write_file_synced(const std::string& path, const std::string& text);
void fsync_dir(const std::string& dir);

}  // namespace bt
