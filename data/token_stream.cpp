// read_shards and synthetic_stream.
#include "data/token_stream.h"

#include <glob.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "data/shard.h"

namespace bt {

std::vector<std::string> split_shard_list(const std::string& glob_or_list) {
  std::vector<std::string> items;
  size_t at = 0;
  while (at <= glob_or_list.size()) {
    size_t comma = glob_or_list.find(',', at);
    if (comma == std::string::npos) comma = glob_or_list.size();
    std::string item = glob_or_list.substr(at, comma - at);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) items.push_back(item);
    at = comma + 1;
  }
  return items;
}

std::vector<std::string> expand_shard_list(const std::string& glob_or_list) {
  const std::vector<std::string> items = split_shard_list(glob_or_list);
  BT_CHECK(!items.empty(), "no shards given (expected a path, a glob such as data/c/train-*.h5, "
                           "or a comma-separated list)");
  std::vector<std::string> paths;
  for (const auto& item : items) {
    if (item.find_first_of("*?[") == std::string::npos) {
      struct stat st;
      BT_CHECK(::stat(item.c_str(), &st) == 0, "shard '", item, "': no such file");
      BT_CHECK(!S_ISDIR(st.st_mode), "shard '", item, "' is a directory; give a pattern such as ",
               item, "/train-*.h5");
      paths.push_back(item);
      continue;
    }
    glob_t g{};
    int rc = ::glob(item.c_str(), 0, nullptr, &g);
    if (rc == GLOB_NOMATCH) {
      globfree(&g);
      BT_FAIL("no shard matches '", item, "' (run `bt prepare` first, or fix the path)");
    }
    if (rc != 0) {
      globfree(&g);
      BT_FAIL("cannot expand the shard pattern '", item, "'");
    }
    for (size_t i = 0; i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);  // glob sorts
    globfree(&g);
  }
  std::set<std::string> seen;
  for (const auto& p : paths)
    BT_CHECK(seen.insert(p).second, "shard '", p, "' is listed twice");
  return paths;
}

TokenStream read_shards(const std::string& glob_or_list, int model_vocab_size) {
  const std::vector<std::string> paths = expand_shard_list(glob_or_list);
  // Pass 1: attributes only, so a mismatch fails before gigabytes are read.
  std::vector<ShardInfo> infos;
  uint64_t total = 0, docs = 0;
  for (const auto& p : paths) {
    ShardInfo in = read_shard_info(p);
    check_shard_fits(infos.empty() ? in : infos.front(), in, model_vocab_size);
    total += in.tokens;
    docs += in.documents;
    infos.push_back(std::move(in));
  }
  TokenStream s;
  s.vocab_size = int(infos.front().vocab_size);
  s.eos_id = int(infos.front().eos_id);
  s.tokenizer = infos.front().tokenizer;
  s.tokens.reserve(total);
  s.doc_offsets.reserve(docs);
  for (const auto& p : paths) read_shard(p, s.tokens, s.doc_offsets);
  BT_CHECK(!s.tokens.empty(), "the shards '", glob_or_list, "' hold no tokens");
  return s;
}

TokenStream synthetic_stream(const std::string& spec, int vocab_size, uint64_t seed) {
  BT_CHECK(vocab_size >= 2, "synthetic data '", spec, "': vocab_size must be >= 2");
  auto parse_u64 = [&](const std::string& s) -> uint64_t {
    size_t used = 0;
    unsigned long long v = 0;
    try {
      v = std::stoull(s, &used);
    } catch (...) {
      used = 0;
    }
    BT_CHECK(!s.empty() && used == s.size(), "synthetic data '", spec, "': '", s,
             "' is not a number (expected repeat:<period>[:<tokens>] or random[:<tokens>])");
    return v;
  };
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    size_t c = spec.find(':', at);
    parts.push_back(spec.substr(at, c == std::string::npos ? std::string::npos : c - at));
    if (c == std::string::npos) break;
    at = c + 1;
  }
  TokenStream s;
  s.vocab_size = vocab_size;
  s.eos_id = vocab_size - 1;
  s.tokenizer = "synthetic:" + spec;
  Rng rng(seed, hash_name("synthetic_stream"));
  const uint64_t body_vocab = uint64_t(vocab_size - 1);
  if (parts[0] == "repeat" && (parts.size() == 2 || parts.size() == 3)) {
    const uint64_t period = parse_u64(parts[1]);
    const uint64_t total = parts.size() == 3 ? parse_u64(parts[2]) : (uint64_t(1) << 20);
    BT_CHECK(period >= 2, "synthetic data '", spec, "': period must be >= 2");
    BT_CHECK(total >= period, "synthetic data '", spec, "': fewer tokens than one period");
    std::vector<int32_t> doc(period);
    for (uint64_t i = 0; i + 1 < period; ++i) doc[i] = int32_t(rng.below(body_vocab));
    doc[period - 1] = s.eos_id;
    const uint64_t ndocs = total / period;
    s.tokens.reserve(ndocs * period);
    for (uint64_t d = 0; d < ndocs; ++d) {
      s.doc_offsets.push_back(s.tokens.size());
      s.tokens.insert(s.tokens.end(), doc.begin(), doc.end());
    }
    return s;
  }
  if (parts[0] == "random" && parts.size() <= 2) {
    const uint64_t total = parts.size() == 2 ? parse_u64(parts[1]) : (uint64_t(1) << 20);
    BT_CHECK(total >= 1, "synthetic data '", spec, "': needs at least one token");
    s.tokens.resize(total);
    uint64_t at = 0;
    while (at < total) {
      const uint64_t len = std::min<uint64_t>(total - at, 1 + rng.below(2048));
      s.doc_offsets.push_back(at);
      for (uint64_t i = 0; i + 1 < len; ++i) s.tokens[at + i] = int32_t(rng.below(body_vocab));
      s.tokens[at + len - 1] = s.eos_id;
      at += len;
    }
    return s;
  }
  BT_FAIL("unknown synthetic data '", spec, "': use repeat:<period>[:<tokens>] or random[:<tokens>]");
}

}  // namespace bt
