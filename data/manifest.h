// manifest.json (written last by `bt prepare`, prepare.h) as the shard readers use it: when a run
// opens shards, each one is checked against the manifest of its directory, so a deleted,
// truncated, replaced or half-copied shard, or the output of an unfinished `bt prepare`, is an
// error instead of silently different data:
//   - a directory whose `bt prepare` has not finished (its .bt-prepare-incomplete marker or a
//     *.h5.tmp file, no manifest.json) is refused;
//   - every shard opened must be listed, with the recorded size in bytes (a stat: always checked),
//     token and document counts and tokenizer;
//   - every listed shard that the glob would match must exist (a deleted shard is an error);
//   - with verify_checksums, each shard's XXH3-64 is compared with the manifest's "xxh3" (manifests
//     that record only sha256, e.g. from older builds, get the size checks only). The work is
//     split over the ranks: shard i is hashed by rank i mod world, so the job reads the corpus
//     once in all.
// A directory without manifest.json and without the marker (shards written by other tools or by
// tests) is used with a warning.
//
// write_manifest writes it, for `bt prepare` from text and from token files alike (the commit of
// the output directory, data/output_dir.h).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/shard.h"

namespace bt {

inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kPrepareMarker = ".bt-prepare-incomplete";

struct ShardCheckOptions {
  bool verify_checksums = true;
  int rank = 0, world = 1;
};

// What every manifest says about the corpus, whichever way it was prepared.
struct ManifestHeader {
  std::string tokenizer;       // the name recorded in the shards
  std::string tokenizer_kind;  // "byte" | "spm" | "hf" | "ids"
  int64_t vocab_size = 0, eos_id = -1;
  std::vector<std::string> inputs;
  std::string input_format;
  double val_fraction = 0;
  uint64_t seed = 0, shard_tokens = 0;
};
// Writes DIR/manifest.json atomically: the header, `details` (the fields of one way of preparing,
// an object), the token, document and shard counts of each split and `shards` (one object per
// shard: file, split, tokens, documents, bytes, sha256, xxh3), then removes the unfinished marker.
void write_manifest(const std::string& dir, const ManifestHeader& h, const nlohmann::ordered_json& details,
                    const std::vector<nlohmann::ordered_json>& shards);

// paths: expand_shard_list(glob_or_list); infos[i]: the opened shard paths[i].
void check_shards_against_manifests(const std::string& glob_or_list, const std::vector<std::string>& paths,
                                    const std::vector<ShardInfo>& infos, const ShardCheckOptions& opt);

}  // namespace bt
