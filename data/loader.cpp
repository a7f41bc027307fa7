// Loader: windows over the padded stream, a (seed, epoch) permutation, rank slices, prefetch.
#include "data/loader.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/log.h"
#include "core/rng.h"

namespace bt {

// ---- state -------------------------------------------------------------------------------------

nlohmann::json LoaderState::to_json() const {
  nlohmann::json j = {{"epoch", epoch}, {"next_window", next_window}};
  if (windows_per_epoch > 0) j["windows_per_epoch"] = windows_per_epoch;
  return j;
}

LoaderState LoaderState::from_json(const nlohmann::json& j) {
  BT_CHECK(j.is_object() && j.contains("epoch") && j.contains("next_window") &&
               j["epoch"].is_number_unsigned() && j["next_window"].is_number_unsigned(),
           "loader state: expected {\"epoch\": N, \"next_window\": N}, got ", j.dump());
  LoaderState s;
  s.epoch = j["epoch"].get<uint64_t>();
  s.next_window = j["next_window"].get<uint64_t>();
  if (j.contains("windows_per_epoch") && j["windows_per_epoch"].is_number_unsigned())
    s.windows_per_epoch = j["windows_per_epoch"].get<uint64_t>();
  return s;
}

// ---- permutation -------------------------------------------------------------------------------

namespace {
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}
}  // namespace

WindowPermutation::WindowPermutation(uint64_t n, uint64_t seed, uint64_t epoch, bool shuffle)
    : n_(n), identity_(!shuffle || n <= 1) {
  if (identity_) return;
  // The smallest even bit width 2h with 2^(2h) >= n: cycle walking then needs < 4 rounds on
  // average.
  int bits = 2;
  while (bits < 64 && (uint64_t(1) << bits) < n) bits += 2;
  half_bits_ = bits / 2;
  half_mask_ = (uint64_t(1) << half_bits_) - 1;
  uint64_t x = seed ^ mix64(epoch + 0x9e3779b97f4a7c15ull) ^ hash_name("window_permutation");
  for (auto& k : keys_) k = splitmix64(x);
}

uint64_t WindowPermutation::encrypt(uint64_t x) const {
  uint64_t l = (x >> half_bits_) & half_mask_, r = x & half_mask_;
  for (uint64_t k : keys_) {
    const uint64_t f = mix64(r ^ k) & half_mask_;
    const uint64_t nl = r;
    r = l ^ f;
    l = nl;
  }
  return (l << half_bits_) | r;
}

uint64_t WindowPermutation::operator()(uint64_t i) const {
  if (identity_) return i;
  uint64_t x = i;
  do x = encrypt(x);
  while (x >= n_);
  return x;
}

// ---- padding ----------------------------------------------------------------------------------

namespace {
bool has_padding(const LoaderOptions& opt) {
  return opt.block_length > 1 && (opt.random_pad_first_block || opt.pad_to_block_boundary);
}

// The option checks shared by both constructors (before the data is looked at).
void check_options(const LoaderOptions& opt) {
  BT_CHECK(opt.context_length >= 1, "data loader: context_length must be >= 1, got ", opt.context_length);
  BT_CHECK(opt.block_length >= 1, "data loader: block_length must be >= 1, got ", opt.block_length);
  BT_CHECK(opt.global_batch >= 1 && opt.micro_batch >= 1, "data loader: global_batch (",
           opt.global_batch, ") and micro_batch (", opt.micro_batch, ") must be >= 1");
  BT_CHECK(opt.world >= 1 && opt.rank >= 0 && opt.rank < opt.world, "data loader: rank ", opt.rank,
           " outside world size ", opt.world);
  BT_CHECK(opt.global_batch % (opt.micro_batch * opt.world) == 0, "data loader: global_batch ",
           opt.global_batch, " is not divisible by micro_batch ", opt.micro_batch, " x ranks ",
           opt.world, "; change train.global_batch or train.micro_batch");
  if (has_padding(opt))
    BT_CHECK(opt.context_length % opt.block_length == 0, "data loader: context_length ",
             opt.context_length, " is not a multiple of block_length ", opt.block_length);
}
}  // namespace

PadSpec pad_spec(const LoaderOptions& opt) {
  return PadSpec::make(opt.block_length, opt.random_pad_first_block, opt.pad_to_block_boundary,
                       opt.pad_id, opt.seed);
}

PaddedStream pad_stream(const TokenStream& s, const LoaderOptions& opt) {
  MemorySource src(std::make_shared<const TokenStream>(s), pad_spec(opt), 0);
  PaddedStream p;
  p.tokens.resize(src.size());
  p.mask.resize(src.size());
  src.read(0, src.size(), p.tokens.data(), p.mask.data());
  return p;
}

std::shared_ptr<TokenSource> open_shard_source(const std::string& glob_or_list, const LoaderOptions& opt) {
  ShardCheckOptions check;
  check.verify_checksums = opt.verify_checksums;
  check.rank = opt.rank;
  check.world = opt.world;
  return std::make_shared<ShardSource>(glob_or_list, opt.vocab_size, pad_spec(opt), 0, check);
}

// ---- loader ------------------------------------------------------------------------------------

struct Loader::Impl {
  std::shared_ptr<const TokenSource> src;
  LoaderOptions opt;
  uint64_t ntok = 0;     // padded stream length
  uint64_t windows = 0;  // W
  uint64_t global = 0;   // G
  int accum = 0;
  LoaderState pos;       // after the last batch returned

  // Prefetch: one outstanding request (req_start, req_gen) served by the worker.
  std::thread worker;
  mutable std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  bool has_req = false;
  uint64_t req_gen = 0;
  LoaderState req_start;
  bool ready = false;
  StepBatch ready_batch;
  LoaderState ready_after;
  std::exception_ptr ready_error;

  // Rolls over to the next epoch when fewer than G windows are left in this one.
  LoaderState normalize(LoaderState s) const {
    if (s.next_window + global > windows) {
      s.epoch += 1;
      s.next_window = 0;
    }
    return s;
  }

  StepBatch build(LoaderState start, LoaderState* after) const {
    const LoaderState s = normalize(start);
    const WindowPermutation perm(windows, opt.seed, s.epoch, opt.shuffle);
    const uint64_t L = uint64_t(opt.context_length);
    const uint64_t per_rank = global / uint64_t(opt.world);
    const uint64_t first = s.next_window + uint64_t(opt.rank) * per_rank;
    StepBatch b;
    b.micro.resize(size_t(accum));
    for (int m = 0; m < accum; ++m) {
      MicroBatch& mb = b.micro[size_t(m)];
      mb.rows = opt.micro_batch;
      mb.tokens.resize(size_t(opt.micro_batch) * L);  // [micro_batch, L]
      mb.mask.resize(size_t(opt.micro_batch) * L);    // [micro_batch, L]
      for (int row = 0; row < opt.micro_batch; ++row) {
        const uint64_t w = perm(first + uint64_t(m) * uint64_t(opt.micro_batch) + uint64_t(row));
        const size_t dst = size_t(row) * L;
        src->read(w * L, L, mb.tokens.data() + dst, mb.mask.data() + dst);
      }
    }
    *after = normalize(LoaderState{s.epoch, s.next_window + global});
    return b;
  }

  void worker_loop() {
    std::unique_lock<std::mutex> lk(mu);
    uint64_t taken = 0;
    for (;;) {
      cv.wait(lk, [&] { return stop || (has_req && req_gen != taken); });
      if (stop) return;
      taken = req_gen;
      const LoaderState start = req_start;
      lk.unlock();
      StepBatch b;
      LoaderState after;
      std::exception_ptr err;
      try {
        b = build(start, &after);
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      if (taken == req_gen && has_req) {
        ready = true;
        ready_batch = std::move(b);
        ready_after = after;
        ready_error = err;
        cv.notify_all();
      }
    }
  }

  // Caller holds mu.
  void request(const LoaderState& start) {
    if (!opt.prefetch) return;
    ++req_gen;
    req_start = start;
    has_req = true;
    ready = false;
    ready_error = nullptr;
    cv.notify_all();
  }
};

Loader::Loader(std::shared_ptr<const TokenStream> stream, LoaderOptions opt)
    : impl_(std::make_unique<Impl>()) {
  check_options(opt);
  BT_CHECK(stream, "data loader: no token stream");
  init(std::make_shared<const MemorySource>(std::move(stream), pad_spec(opt), opt.vocab_size), opt);
}

Loader::Loader(std::shared_ptr<const TokenSource> source, LoaderOptions opt)
    : impl_(std::make_unique<Impl>()) {
  check_options(opt);
  BT_CHECK(source, "data loader: no token source");
  BT_CHECK(source->padding() == pad_spec(opt), "data loader: the token source was opened with other "
           "padding options than the loader's (open it with the loader's options)");
  if (opt.vocab_size > 0)
    BT_CHECK(source->vocab_size() <= opt.vocab_size, "data: tokenizer ", source->tokenizer(),
             " has vocab_size ", source->vocab_size(), " > model.vocab_size ", opt.vocab_size,
             "; raise model.vocab_size or prepare the data with a smaller tokenizer");
  init(std::move(source), opt);
}

void Loader::init(std::shared_ptr<const TokenSource> source, const LoaderOptions& opt) {
  Impl& d = *impl_;
  const int64_t vocab = opt.vocab_size > 0 ? opt.vocab_size : source->vocab_size();
  BT_CHECK(source->size() > 0, "data: the token stream is empty");
  BT_CHECK(source->eos_id() >= 0, "data: the token stream has no EOS id");
  if (has_padding(opt)) {
    const int pad = source->pad_id();
    BT_CHECK(pad >= 0 && pad < vocab, "data loader: pad_id ", pad, " outside the vocabulary of ", vocab);
  }
  d.src = std::move(source);
  d.opt = opt;
  d.ntok = d.src->size();
  const uint64_t L = uint64_t(opt.context_length);
  d.windows = d.ntok / L;
  d.global = uint64_t(opt.global_batch);
  d.accum = opt.global_batch / (opt.micro_batch * opt.world);
  BT_CHECK(d.windows >= 1, "data: the stream has ", d.ntok, " tokens", has_padding(opt) ? " after padding" : "",
           ", less than one window of context_length ", L, "; use more data or a shorter context");
  BT_CHECK(d.windows >= d.global, "data: ", d.ntok, " tokens make ", d.windows, " windows of ", L,
           " tokens, fewer than one global batch of ", d.global,
           " sequences; use more data or a smaller global batch");
  d.pos = d.normalize(LoaderState{});
  if (opt.prefetch) {
    d.worker = std::thread([p = &d] { p->worker_loop(); });
    std::lock_guard<std::mutex> lk(d.mu);
    d.request(d.pos);
  }
}

Loader::~Loader() {
  if (impl_ && impl_->worker.joinable()) {
    {
      std::lock_guard<std::mutex> lk(impl_->mu);
      impl_->stop = true;
    }
    impl_->cv.notify_all();
    impl_->worker.join();
  }
}

StepBatch Loader::next() {
  Impl& d = *impl_;
  std::unique_lock<std::mutex> lk(d.mu);
  StepBatch b;
  LoaderState after;
  if (d.opt.prefetch && d.has_req && d.req_start == d.pos) {
    d.cv.wait(lk, [&] { return d.ready; });
    if (d.ready_error) {
      std::exception_ptr e = d.ready_error;
      d.has_req = false;
      d.ready = false;
      d.ready_error = nullptr;
      std::rethrow_exception(e);
    }
    b = std::move(d.ready_batch);
    after = d.ready_after;
    d.ready = false;
  } else {
    const LoaderState start = d.pos;
    lk.unlock();
    b = d.build(start, &after);
    lk.lock();
  }
  d.pos = after;
  d.request(d.pos);
  return b;
}

LoaderState Loader::state() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  LoaderState s = impl_->pos;
  s.windows_per_epoch = impl_->windows;
  return s;
}

void Loader::set_state(const LoaderState& st) {
  Impl& d = *impl_;
  if (st.windows_per_epoch != 0 && st.windows_per_epoch != d.windows)
    log_warn("data loader: resuming a state saved with {} windows per epoch, but the data now has {}; "
             "the data or context length changed, so the sample order differs from the original run",
             st.windows_per_epoch, d.windows);
  BT_CHECK(st.next_window <= d.windows, "data loader: saved position ", st.next_window,
           " is past the ", d.windows, " windows of an epoch (was the data changed?)");
  std::lock_guard<std::mutex> lk(d.mu);
  d.pos = d.normalize(LoaderState{st.epoch, st.next_window});
  d.has_req = false;
  d.ready = false;
  d.request(d.pos);
}

uint64_t Loader::windows_per_epoch() const { return impl_->windows; }
uint64_t Loader::steps_per_epoch() const { return impl_->windows / impl_->global; }
int Loader::accum() const { return impl_->accum; }
uint64_t Loader::padded_tokens() const { return impl_->ntok; }
uint64_t Loader::stream_tokens() const { return impl_->src->raw_tokens(); }
const TokenSource& Loader::source() const { return *impl_->src; }
const LoaderOptions& Loader::options() const { return impl_->opt; }

}  // namespace bt
