// The output directory of `bt prepare`, for text (data/prepare.h) and for token files
// (data/import.h) alike. A run goes through it in three steps:
//   1. open_output_dir: creates DIR, or checks that it is one. A finished corpus (manifest.json)
//      is replaced only with --force: its manifest is removed first, so that it stops looking
//      complete. Our leftovers (shards, tokenizer files, manifest, their *.tmp, the unfinished
//      marker) are removed, except those `keep` names (the train shards of a resumed import);
//      other files are left alone.
//   2. mark_output_unfinished: the marker (data/manifest.h) that makes the readers refuse the
//      directory until the run has finished.
//   3. write_manifest (data/manifest.h): manifest.json, written atomically, is the commit; it
//      removes the marker.
#pragma once
#include <functional>
#include <string>

namespace bt {

void open_output_dir(const std::string& dir, bool force,
                     const std::function<bool(const std::string& name)>& keep = nullptr);
void mark_output_unfinished(const std::string& dir);
// Whether `name` is a file that `bt prepare` writes into its output directory.
bool is_output_file(const std::string& name);

}  // namespace bt
