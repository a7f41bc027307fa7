// The decode engine: KV-cached decoding of a pool of rows (docs/inference.md), shared by
// `bt generate` (one batch from its prompts to its last token, infer/generator.cpp) and `bt serve`
// (sequences that join and leave a running batch, serve/engine.cpp).
//
// A DecodeSession holds, for up to `rows` sequences, every device buffer of decoding (allocated
// once, before any compute, from one list of shapes that plan_session also sums), the KV caches,
// and per-row device state: the pad start, the Philox stream, the stop flag, the sampling
// parameters and three counters (token index s, token-decoder position, block-decoder position).
// Rows are independent: each has its own positions, so a row can be prefilled and armed while
// the others decode, and a row's tokens do not depend on which other rows run beside it.
//
// Life of a row: open (its pad start), prefill (its prompt, chunk by chunk, into its caches), arm (the last prompt
// unit and the counters: ready for its first token), rounds (each gives the next unit() tokens of
// every row of a leading range [0, M): one block of L_B for a block model, one token for the
// vanilla model), park (idle: it computes nothing that matters and writes no cache).
//
// A decoding strategy is a subclass (block: decode_block.cpp, vanilla: decode_vanilla.cpp): it
// lists its buffers, prefills a chunk, and defines the two steps of a round, first_step (the
// round's first token: for a block model the block-decoder step, its prefix expansion and the
// token decoder's prefill) and next_step(j) (token j of the round). Steps are fixed sequences of
// backend ops run through Backend::run_step, so the CUDA backend replays them as graphs.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/backend.h"
#include "model/model.h"
#include "model/transformer.h"

namespace bt {

struct SessionBuffers;  // infer/decode_buffers.h

// Seconds of the decode loop by part (DecodeSession::set_profile).
struct DecodePhases {
  double block_decoder = 0;  // block embedding + block-decoder step
  double token_decoder = 0;  // prefix expansion + token-decoder prefill and steps (vanilla: the decoder)
  double head = 0;           // the logits matmul
  double sampling = 0;       // sample_tokens + the counters
  double host = 0;           // reading the new ids back and appending them
};

// The size of a session.
struct SessionShape {
  int64_t rows = 1;       // R: sequences held at once
  int64_t positions = 1;  // the first stack's cache length: blocks (block model) or tokens (vanilla)
  // Prompt units (blocks or tokens, all rows of the call together) of the largest prefill call.
  int64_t prefill_units = 1;
  bool row_params = false;  // each row has its own sampling parameters (arm); else set_sampling's
};

// What a row needs to decode its first token (DecodeSession::arm). The prompt's units before the
// last one are in the row's caches already (prefill).
struct RowArm {
  int32_t stream = 0;    // Philox stream
  int32_t position = 0;  // the first stack's position of the last prompt unit
  std::vector<int32_t> last_unit;  // its ids: the last prompt block (L_B ids) or token (1 id)
  SampleParams params;             // with SessionShape::row_params
};

// The device memory of a session besides the weights, each allocation rounded up to `align`.
struct DecodePlan {
  size_t kv_cache = 0;  // all layers' keys and values, all rows
  size_t buffers = 0;   // ids, counters, embeddings, prefix vectors, logits
  size_t stacks = 0;    // the stacks' activation scratch (forward_cached) for the largest call
  size_t total() const { return kv_cache + buffers + stacks; }
};
DecodePlan plan_session(const ModelConfig& m, DType act, DType stats, const SessionShape& s, size_t align = 256);

class DecodeSession {
 public:
  // The strategy of the model (block or vanilla). The model's parameters are used in place.
  static std::unique_ptr<DecodeSession> make(Model& model);
  virtual ~DecodeSession();

  int64_t unit() const { return unit_; }  // tokens per round and per prompt unit: L_B or 1
  // Allocates the buffers and caches (grow-only: reused when they are large enough). Rows start
  // parked; with row_params their parameters are set by arm.
  void allocate(const SessionShape& s);
  const SessionShape& shape() const { return shape_; }
  size_t kv_cache_bytes() const;

  // The sampling parameters of every row (without SessionShape::row_params).
  void set_sampling(const SampleParams& p) { sp_ = p; }
  // Opens rows [r0, r0 + starts.size()) for a new sequence each: starts[i] is the first visible
  // position of the row's first-stack cache (whole pad units in front are hidden). The rows stay
  // parked until they are armed.
  void open(int64_t r0, const std::vector<int32_t>& starts);
  // Prompt units [first, first + n) of open rows [r0, r0 + nr) into their caches: ids
  // [nr, n * unit()] on the host. n * nr must not exceed SessionShape::prefill_units.
  virtual void prefill(int64_t r0, int64_t nr, int64_t first, int64_t n, const int32_t* ids) = 0;
  // Arms rows [r0, r0 + rows.size()): their first round gives their first tokens.
  void arm(int64_t r0, const std::vector<RowArm>& rows);
  // Parks rows [r0, r0 + n): their caches are left alone and their steps compute nothing that
  // matters (cheaply: no attention, no sampling), until they are armed again.
  void park(int64_t r0, int64_t n);

  // A round over rows [0, M): first_step(M), then next_step(M, j) for j = 1 .. n - 1 (n <= unit()),
  // then read_tokens. The logits of the last step are logits(M) until the next step.
  virtual void first_step(int64_t M) = 0;
  virtual void next_step(int64_t M, int64_t j) = 0;
  // The tokens of the last round, [M, unit()] (column j: token j of the round).
  void read_tokens(int64_t M, int32_t* out);
  Tensor logits(int64_t M) const;

  // Profiling: plain launches (no graphs), and with `phases` the time of each part, measured
  // with a synchronization around it (null: profile off).
  void set_profile(bool plain, DecodePhases* phases) {
    plain_ = plain;
    phases_ = phases;
  }
  // Times host work into phases->host (or just runs it).
  void host_phase(const std::function<void()>& f);

 protected:
  DecodeSession(Model& model, int64_t unit);
  // Takes the views of the strategy's own buffers (get(slot)) after allocate.
  virtual void bind(const SessionBuffers& b, const std::function<Tensor(int)>& get) = 0;
  // The caches and the stacks' scratch for the current shape.
  KVCache cache(const StackDims& d, int64_t T, int base, const std::function<Tensor(int)>& get) const;
  void reserve(TransformerStack& st, int64_t rows);
  // Rows [r0, r0 + n) of a cache.
  static KVCache rows_of(const KVCache& c, int64_t r0, int64_t n);
  // Runs one replayable step; `kind` and j identify it together with the rows and the buffers.
  void run(int kind, int64_t M, int64_t j, const std::function<void()>& f);
  // Runs f, adding its seconds to the phase when profiling.
  void phase(double DecodePhases::*part, const std::function<void()>& f);
  // Rows [0, M) of the state that sample_tokens reads and writes.
  DecodeState state(int64_t M) const;
  // Counter k of rows [0, M) (DecodeCounter). The counters [3, rows] advance together.
  Tensor counter(int k, int64_t M) const;
  // The logits of rows [0, M) from h [M, 1, D] by `head`, then the sampled tokens, then the
  // counters advance (for every row: s, token-decoder position, block-decoder position).
  void head_and_sample(Tensor h, Tensor head, int64_t M, int32_t step, int32_t td_pos, int32_t bd_pos);
  // A newly armed row's positions (token decoder, block decoder), and a parked row's.
  virtual void arm_counters(const RowArm& a, int32_t& td_pos, int32_t& bd_pos) const = 0;
  virtual void park_counters(int32_t& td_pos, int32_t& bd_pos) const = 0;

  Model& model_;
  Backend& be_;
  const int64_t unit_;
  SessionShape shape_;
  SampleParams sp_;
  std::vector<Tensor> slots_;  // grow-only device buffers
  uint64_t id_;                // distinguishes this session's steps from others on the backend
  uint64_t epoch_ = 0;         // bumped when a buffer moves: captured steps are then stale
  bool moved_ = false;
  bool plain_ = false;
  DecodePhases* phases_ = nullptr;
  // Views for the current shape (R rows):
  Tensor start_, seq_, done_, ids_, ctr_, logits_, params_;  // [R] x 4, [3, R], [R, V], [R, kSampleParamWords]
  Tensor hist_;      // block models: [R, L_B] the tokens of the current block
  KVCache c1_, c2_;  // block: block decoder, token decoder; vanilla: c1_
  int64_t T1_ = 0;   // c1_'s length
};

// Counters (each [rows], DecodeSession::counter).
enum DecodeCounter : int { kCtrStep = 0, kCtrTdPos = 1, kCtrBdPos = 2, kDecodeCounters = 3 };

}  // namespace bt
