// `bt bench data`: shard read and loader throughput (printed, never asserted).
#pragma once
#include <string>

namespace bt {

// shards_glob_or_empty: shards to read; empty = a synthetic 64M-token stream written to a
// temporary shard (so the shard read path is measured too). Prints tokens/s of reading the
// shards and of Loader::next() with prefetch, without prefetch, and with both padding options.
void bench_data(const std::string& shards_glob_or_empty, int L, int global_batch, int seconds);

}  // namespace bt
