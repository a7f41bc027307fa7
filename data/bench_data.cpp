// Data benchmarks: HDF5 shard read throughput, checksum speed and loader throughput.
#include "data/bench_data.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "core/checksum.h"
#include "core/error.h"
#include "core/log.h"
#include "core/timer.h"
#include "data/loader.h"
#include "data/sha256.h"
#include "data/shard.h"

namespace bt {
namespace fs = std::filesystem;

namespace {
// Runs next() for about `seconds`; returns tokens/s of this rank.
template <class Data>
double time_loader(std::shared_ptr<const Data> s, LoaderOptions o, double seconds, uint64_t& steps) {
  Loader loader(std::move(s), o);
  loader.next();  // warm-up (starts the prefetch pipeline)
  Timer t;
  steps = 0;
  uint64_t checksum = 0;
  while (t.seconds() < seconds) {
    StepBatch b = loader.next();
    checksum += uint64_t(b.micro[0].tokens[0]);
    ++steps;
  }
  const double el = t.seconds();
  if (checksum == 42) std::fputc(' ', stderr);  // keep the batches observable
  return double(steps) * o.global_batch * o.context_length / el;
}
}  // namespace

void bench_data(const std::string& shards_glob_or_empty, int L, int global_batch, int seconds) {
  BT_CHECK(L >= 1 && global_batch >= 1 && seconds >= 1, "bench data: L, global batch and seconds must be >= 1");
  std::string glob = shards_glob_or_empty;
  fs::path tmpdir;
  if (glob.empty()) {
    tmpdir = fs::temp_directory_path() / ("bt_bench_data_" + std::to_string(::getpid()));
    fs::create_directories(tmpdir);
    TokenStream syn = synthetic_stream("random:" + std::to_string(64u << 20), 50304, 1);
    Timer tw;
    write_shard((tmpdir / "bench-00000.h5").string(), ShardMeta{syn.vocab_size, syn.eos_id, syn.tokenizer},
                syn.tokens, syn.doc_offsets);
    log_info("bench data: wrote a synthetic shard of {} tokens (vocab 50304) in {:.2f} s: {:.1f} M tokens/s",
             syn.tokens.size(), tw.seconds(), syn.tokens.size() / tw.seconds() / 1e6);
    glob = (tmpdir / "bench-00000.h5").string();
  }
  try {
    Timer tr;
    auto stream = std::make_shared<const TokenStream>(read_shards(glob, 0));
    const double rs = tr.seconds();
    log_info("bench data: read {} tokens, {} documents ({}) in {:.2f} s: {:.1f} M tokens/s",
             stream->tokens.size(), stream->doc_offsets.size(), glob, rs,
             stream->tokens.size() / rs / 1e6);
    // The checksums that verify shards (manifest.json) and checkpoints (checksums.json), over the
    // same files, now in the page cache.
    {
      uint64_t bytes = 0, n = 0;
      Timer tx;
      for (const auto& p : expand_shard_list(glob)) xxh3_file(p, &n), bytes += n;
      const double xs = tx.seconds();
      Timer ts;
      for (const auto& p : expand_shard_list(glob)) sha256_file(p);
      const double ss = ts.seconds();
      log_info("bench data: checksums of {:.2f} GB of shard files (page cache): XXH3-64 {:.2f} s ({:.2f} GB/s), "
               "SHA-256 {:.2f} s ({:.2f} GB/s)", bytes / 1e9, xs, bytes / 1e9 / xs, ss, bytes / 1e9 / ss);
    }
    LoaderOptions o;
    o.context_length = L;
    o.global_batch = global_batch;
    o.micro_batch = std::min(global_batch, 8);
    while (global_batch % o.micro_batch) --o.micro_batch;
    o.block_length = 4;
    const double secs = std::max(1.0, seconds / 3.0);
    uint64_t steps = 0;
    o.prefetch = true;
    double a = time_loader(stream, o, secs, steps);
    log_info("bench data: loader L={} global_batch={} prefetch: {:.1f} M tokens/s ({} steps)", L,
             global_batch, a / 1e6, steps);
    o.prefetch = false;
    double b = time_loader(stream, o, secs, steps);
    log_info("bench data: loader without prefetch: {:.1f} M tokens/s ({} steps)", b / 1e6, steps);
    o.prefetch = true;
    o.random_pad_first_block = o.pad_to_block_boundary = true;
    if (L % o.block_length == 0) {
      Timer tp;
      double c = time_loader(stream, o, secs, steps);
      log_info("bench data: loader with both padding options (L_B=4), prefetch: {:.1f} M tokens/s", c / 1e6);
    }
    // The trainer's path: windows read lazily from the shards.
    o.random_pad_first_block = o.pad_to_block_boundary = false;
    for (bool pad : {false, true}) {
      if (pad && L % o.block_length != 0) continue;
      o.random_pad_first_block = o.pad_to_block_boundary = pad;
      Timer to;
      std::shared_ptr<const TokenSource> src = open_shard_source(glob, o);
      const double open_s = to.seconds();
      for (bool pf : {true, false}) {
        o.prefetch = pf;
        double c = time_loader(src, o, secs, steps);
        log_info("bench data: lazy shard loader{}{}: {:.1f} M tokens/s ({} steps; open {:.3f} s)",
                 pad ? " with both padding options (L_B=4)" : "", pf ? ", prefetch" : ", no prefetch",
                 c / 1e6, steps, open_s);
      }
    }
  } catch (...) {
    if (!tmpdir.empty()) fs::remove_all(tmpdir);
    throw;
  }
  if (!tmpdir.empty()) fs::remove_all(tmpdir);
}

}  // namespace bt
