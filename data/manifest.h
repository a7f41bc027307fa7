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
#pragma once
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

// paths: expand_shard_list(glob_or_list); infos[i]: the opened shard paths[i].
void check_shards_against_manifests(const std::string& glob_or_list, const std::vector<std::string>& paths,
                                    const std::vector<ShardInfo>& infos, const ShardCheckOptions& opt);

}  // namespace bt
