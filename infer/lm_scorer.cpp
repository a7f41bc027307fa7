// Batched scoring of loglikelihood requests: see lm_scorer.h.
#include "infer/lm_scorer.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "core/error.h"
#include "model/transformer.h"

namespace bt {

BlockContext parse_block_context(const std::string& s) {
  if (s == "pad") return BlockContext::pad;
  if (s == "nopad" || s == "no-pad" || s == "no_pad") return BlockContext::nopad;
  BT_FAIL("--context-mode ", s, ": expected pad or nopad");
}

const char* to_string(BlockContext c) { return c == BlockContext::pad ? "pad" : "nopad"; }

namespace {

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// log softmax(row)[t] in double, and whether t is the first maximum (torch.argmax).
std::pair<double, bool> host_logprob(const float* row, int V, int t) {
  int arg = 0;
  for (int v = 1; v < V; ++v)
    if (row[v] > row[arg]) arg = v;
  double s = 0;
  for (int v = 0; v < V; ++v) s += std::exp(double(row[v]) - double(row[arg]));
  return {double(row[t]) - double(row[arg]) - std::log(s), arg == t};
}

}  // namespace

int scorer_window(const ModelConfig& m, int max_length, BlockContext c) {
  if (!m.is_block()) return max_length + 1;
  const int LB = m.block_length;
  const int n = (c == BlockContext::pad ? LB - 1 : 0) + max_length + 1;
  return static_cast<int>(std::max<int64_t>(2 * LB, round_up(n, LB)));
}

// One request after truncation: `full` = the last max_length + 1 tokens of context +
// continuation; positions [first, full.size()) are scored.
struct Prepared {
  std::vector<int32_t> full;
  int first = 0;
};

struct LMScorer::Row {
  std::vector<int32_t> tokens;  // offset pads + full
  struct Use {
    size_t request;
    int q0, q1;  // scored positions [q0, q1) in row coordinates
  };
  std::vector<Use> uses;
};

struct LMScorer::Impl {
  Model& model;
  Backend& be;
  const ModelConfig& cfg;
  ScorerOptions o;
  int LB = 1, offset = 0, W = 0;
  int64_t budget = 0;  // token positions per forward
  std::vector<float> h_rows;

  // Vanilla shared-context path (lazily built).
  std::unique_ptr<TransformerStack> dec;
  std::vector<Tensor> slot;  // fixed-size device buffers, see cached_setup
  int64_t chunk_rows = 0;

  Impl(Model& m, const ScorerOptions& opt) : model(m), be(m.backend()), cfg(m.config()), o(opt) {
    BT_CHECK(model.max_batch() >= 1, "LMScorer: the model needs a micro batch (built with max_batch >= 1)");
    LB = cfg.is_block() ? cfg.block_length : 1;
    offset = cfg.is_block() && o.block_context == BlockContext::pad ? LB - 1 : 0;
    W = cfg.context_length;
    if (o.max_length <= 0) o.max_length = W - offset - 1;
    BT_CHECK(scorer_window(cfg, o.max_length, o.block_context) <= W, "LMScorer: max length ", o.max_length,
             " needs windows of ", scorer_window(cfg, o.max_length, o.block_context), " tokens; the model holds ", W);
    BT_CHECK(o.pad_id >= 0 && o.pad_id < cfg.vocab_size, "LMScorer: pad id ", o.pad_id,
             " is out of range for model.vocab_size ", cfg.vocab_size);
    budget = int64_t(model.max_batch()) * W;
  }

  // ---- window path: Model::forward_window over packed rows --------------------------------
  void run_windows(std::vector<Row>& rows, const std::vector<LLRequest>& reqs, std::vector<LLResult>& res,
                   ScorerStats& st, int64_t& done, int64_t total) {
    // Longest first (the harness's order: the first batch shows the worst case), ties by tokens.
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
      if (a.tokens.size() != b.tokens.size()) return a.tokens.size() > b.tokens.size();
      return a.tokens < b.tokens;
    });
    const int V = cfg.vocab_size;
    const bool block = cfg.is_block();
    std::vector<int32_t> grid;
    std::vector<uint8_t> mask;
    for (size_t i = 0; i < rows.size();) {
      const int T = static_cast<int>(std::max<int64_t>(2 * LB, round_up(int64_t(rows[i].tokens.size()), LB)));
      const int B = static_cast<int>(std::min<int64_t>(budget / T, int64_t(rows.size() - i)));
      grid.assign(size_t(B) * T, o.pad_id);
      for (int b = 0; b < B; ++b)
        std::copy(rows[i + b].tokens.begin(), rows[i + b].tokens.end(), grid.begin() + size_t(b) * T);
      if (block) {
        mask.resize(grid.size());
        for (size_t k = 0; k < grid.size(); ++k) mask[k] = grid[k] != o.pad_id;
      }
      model.forward_window(grid.data(), block ? mask.data() : nullptr, B, T);
      const std::vector<double>& losses = model.row_losses();
      ++st.forwards;
      st.rows += B;
      st.positions += int64_t(B) * T;
      Tensor logits = model.logits();
      for (int b = 0; b < B; ++b) {
        for (const Row::Use& u : rows[i + b].uses) {
          LLResult& r = res[u.request];
          r.scored = u.q1 - u.q0;
          const int32_t* tk = grid.data() + size_t(b) * T;
          bool need_rows = reqs[u.request].need_greedy;
          for (int q = u.q0; q < u.q1 && !need_rows; ++q) need_rows = block && tk[q] == o.pad_id;
          const int64_t r0 = model.logit_row(b, u.q0);
          if (need_rows) {
            const int64_t n = u.q1 - u.q0;
            h_rows.resize(size_t(n) * V);
            be.download(h_rows.data(), DType::f32, logits.slice0(r0, r0 + n));
          }
          double lp = 0;
          bool greedy = true;
          for (int q = u.q0; q < u.q1; ++q) {
            const int64_t row = model.logit_row(b, q);
            if (need_rows) {
              auto [l, g] = host_logprob(h_rows.data() + size_t(row - r0) * V, V, tk[q]);
              greedy = greedy && g;
              // The model's own cross-entropy where it has the target (the same value the
              // training forward computes); the host's only for targets that are pads.
              lp += block && tk[q] == o.pad_id ? l : -losses[row];
            } else {
              lp += -losses[row];
            }
          }
          r.logprob = lp;
          r.is_greedy = greedy;
          r.greedy_known = need_rows;
          ++done;
        }
      }
      i += B;
      if (o.progress) o.progress(done, total);
    }
  }

  // ---- vanilla shared-context path --------------------------------------------------------
  enum Slot { kStart, kIds, kEmb, kTargets, kLosses, kLogits, kIndex, kCacheBase };
  int64_t D = 0, H = 0, hd = 0;
  int layers = 0;

  void cached_setup() {
    if (dec) return;
    const ParamTable& tb = model.table();
    dec = std::make_unique<TransformerStack>(be, StackDims::from(cfg.decoder, cfg),
                                             stack_views(tb, model.params(), "gpt_neox.", cfg.decoder.layers),
                                             StackTensors{});
    const StackDims& d = dec->dims();
    D = d.D, H = d.H, hd = d.hd, layers = d.layers;
    dec->reserve_cached(budget);
    const DType act = be.act_dtype();
    const int V = cfg.vocab_size;
    // Logit rows per chunk: about 32M logits, at least one choice's rows, at most a forward's.
    chunk_rows = std::min<int64_t>(budget, std::max<int64_t>(W, std::max<int64_t>(256, (int64_t(1) << 25) / V)));
    slot.resize(kCacheBase + 4 * layers);
    slot[kStart] = be.alloc({budget}, DType::i32);
    slot[kIds] = be.alloc({budget}, DType::i32);
    slot[kEmb] = be.alloc({budget, D}, act);
    slot[kTargets] = be.alloc({chunk_rows}, DType::i32);
    slot[kLosses] = be.alloc({chunk_rows}, be.grad_dtype());
    slot[kLogits] = be.alloc({chunk_rows, int64_t(V)}, act);
    slot[kIndex] = be.alloc({budget}, DType::i32);
    // Two caches (the contexts', then every choice's) of up to `budget` positions per layer.
    for (int i = 0; i < 4 * layers; ++i) slot[kCacheBase + i] = be.alloc({budget * D}, act);
  }

  Tensor view(int s, Shape shape) { return Tensor(slot[s].data, shape, slot[s].dtype, slot[s].device); }
  KVCache cache_view(int which, int64_t B, int64_t Tmax) {
    KVCache c;
    c.B = B;
    c.Tmax = Tmax;
    for (int l = 0; l < layers; ++l) {
      c.k.push_back(view(kCacheBase + which * 2 * layers + 2 * l, {B, H, Tmax, hd}));
      c.v.push_back(view(kCacheBase + which * 2 * layers + 2 * l + 1, {B, H, Tmax, hd}));
    }
    return c;
  }
  void upload_i32(int s, const std::vector<int32_t>& v) {
    be.upload(view(s, {int64_t(v.size())}), v.data(), DType::i32);
  }
  Tensor embed(const std::vector<int32_t>& ids) {
    upload_i32(kIds, ids);
    Tensor x = view(kEmb, {int64_t(ids.size()), D});
    be.embedding_forward(x, view(kIds, {int64_t(ids.size())}), model.param("gpt_neox.embed_in.weight"));
    return x;
  }

  struct Group {
    std::vector<int32_t> context;
    std::vector<size_t> requests;
    int max_cont = 0;
  };

  // One batch of groups: prefill the contexts (all but their last token) once, copy each
  // context's cache to its choices' rows, then run [last context token, continuation[:-1]] of
  // every choice over it.
  void run_cached_batch(const std::vector<Group*>& gs, const std::vector<LLRequest>& reqs, std::vector<LLResult>& res,
                        ScorerStats& st) {
    const int64_t G = static_cast<int64_t>(gs.size());
    int64_t Pm = 0, M = 0, R = 0;
    for (const Group* g : gs) {
      Pm = std::max<int64_t>(Pm, int64_t(g->context.size()) - 1);
      M = std::max<int64_t>(M, g->max_cont);
      R += static_cast<int64_t>(g->requests.size());
    }
    const int64_t Tmax = Pm + M;
    std::vector<int32_t> start_g(G), start_r, index;
    for (int64_t g = 0; g < G; ++g) start_g[g] = static_cast<int32_t>(Pm - (int64_t(gs[g]->context.size()) - 1));
    KVCache cg = cache_view(0, G, Tmax), cr = cache_view(1, R, Tmax);
    if (Pm > 0) {
      std::vector<int32_t> ids(G * Pm, o.pad_id);  // left-padded, the pads hidden by start
      for (int64_t g = 0; g < G; ++g) {
        const auto& c = gs[g]->context;
        std::copy(c.begin(), c.end() - 1, ids.begin() + (g + 1) * Pm - (int64_t(c.size()) - 1));
      }
      upload_i32(kStart, start_g);
      dec->forward_cached(embed(ids).view({G, Pm, D}), G, Pm, 0, cg, view(kStart, {G}));
      st.positions += G * Pm;
    }
    // Row r of the choices' batch: its group's cache (a row gather), start and inputs.
    std::vector<int32_t> ids(R * M, o.pad_id), targets(R * M, -1);
    std::vector<size_t> req_of_row;
    for (int64_t g = 0; g < G; ++g) {
      for (size_t ri : gs[g]->requests) {
        const int64_t r = static_cast<int64_t>(req_of_row.size());
        const auto& cont = reqs[ri].continuation;
        ids[r * M] = gs[g]->context.back();
        for (size_t t = 0; t + 1 < cont.size(); ++t) ids[r * M + 1 + int64_t(t)] = cont[t];
        for (size_t t = 0; t < cont.size(); ++t) targets[r * M + int64_t(t)] = cont[t];
        index.push_back(static_cast<int32_t>(g));
        start_r.push_back(start_g[g]);
        req_of_row.push_back(ri);
      }
    }
    if (Pm > 0) {
      upload_i32(kIndex, index);
      const Tensor idx = view(kIndex, {R});
      for (int l = 0; l < layers; ++l) {
        be.embedding_forward(cr.k[l].view({R, H * Tmax * hd}), idx, cg.k[l].view({G, H * Tmax * hd}));
        be.embedding_forward(cr.v[l].view({R, H * Tmax * hd}), idx, cg.v[l].view({G, H * Tmax * hd}));
      }
    }
    upload_i32(kStart, start_r);
    Tensor h = dec->forward_cached(embed(ids).view({R, M, D}), R, M, Pm, cr, view(kStart, {R}));
    st.positions += R * M;
    ++st.forwards;
    st.rows += R;
    // Logits, losses and (when asked) argmax, a chunk of whole rows at a time.
    const int V = cfg.vocab_size;
    const Tensor head = model.param("embed_out.weight");
    const Tensor hs = h.view({R * M, D});
    std::vector<double> losses;
    const int64_t per_chunk = std::max<int64_t>(1, chunk_rows / M);
    for (int64_t r0 = 0; r0 < R; r0 += per_chunk) {
      const int64_t r1 = std::min(R, r0 + per_chunk), n = (r1 - r0) * M;
      Tensor lg = view(kLogits, {n, int64_t(V)});
      be.matmul_forward(lg, hs.slice0(r0 * M, r1 * M), head, Tensor());
      std::vector<int32_t> tg(targets.begin() + r0 * M, targets.begin() + r1 * M);
      upload_i32(kTargets, tg);
      Tensor loss = view(kLosses, {n});
      be.cross_entropy(loss, Tensor(), lg, view(kTargets, {n}), 1.0);
      losses.resize(size_t(n));
      be.download(losses.data(), DType::f64, loss);
      for (int64_t r = r0; r < r1; ++r) {
        const LLRequest& q = reqs[req_of_row[r]];
        const int64_t m = static_cast<int64_t>(q.continuation.size());
        LLResult& out = res[req_of_row[r]];
        out.scored = static_cast<int>(m);
        double lp = 0;
        for (int64_t t = 0; t < m; ++t) lp -= losses[size_t((r - r0) * M + t)];
        out.logprob = lp;
        if (q.need_greedy) {
          h_rows.resize(size_t(m) * V);
          be.download(h_rows.data(), DType::f32, lg.slice0((r - r0) * M, (r - r0) * M + m));
          bool greedy = true;
          for (int64_t t = 0; t < m && greedy; ++t)
            greedy = host_logprob(h_rows.data() + size_t(t) * V, V, q.continuation[size_t(t)]).second;
          out.is_greedy = greedy;
          out.greedy_known = true;
        }
      }
    }
    st.shared_requests += R;
  }

  void run_cached(std::vector<Group>& groups, const std::vector<LLRequest>& reqs, std::vector<LLResult>& res,
                  ScorerStats& st, int64_t& done, int64_t total) {
    cached_setup();
    // A group with more continuations than one forward holds is split (each part shares the context).
    std::vector<Group> parts;
    for (Group& g : groups) {
      const int64_t per = std::max<int64_t>(1, budget / (int64_t(g.context.size()) - 1 + g.max_cont));
      for (size_t k = 0; k < g.requests.size(); k += size_t(per)) {
        Group p;
        p.context = g.context;
        p.requests.assign(g.requests.begin() + k, g.requests.begin() + std::min(g.requests.size(), k + size_t(per)));
        for (size_t i : p.requests) p.max_cont = std::max(p.max_cont, static_cast<int>(reqs[i].continuation.size()));
        parts.push_back(std::move(p));
      }
    }
    std::sort(parts.begin(), parts.end(), [](const Group& a, const Group& b) {
      const size_t la = a.context.size() + a.max_cont, lb = b.context.size() + b.max_cont;
      if (la != lb) return la > lb;
      return a.context < b.context;
    });
    for (size_t i = 0; i < parts.size();) {
      std::vector<Group*> batch;
      int64_t Pm = 0, M = 0, R = 0;
      for (size_t j = i; j < parts.size(); ++j) {
        const Group& g = parts[j];
        const int64_t pm = std::max<int64_t>(Pm, int64_t(g.context.size()) - 1), m = std::max<int64_t>(M, g.max_cont);
        const int64_t r = R + static_cast<int64_t>(g.requests.size());
        if (!batch.empty() && r * (pm + m) > budget) break;
        batch.push_back(&parts[j]);
        Pm = pm, M = m, R = r;
      }
      run_cached_batch(batch, reqs, res, st);
      i += batch.size();
      done += R;
      if (o.progress) o.progress(done, total);
    }
  }
};

LMScorer::LMScorer(Model& model, const ScorerOptions& o) : impl_(std::make_unique<Impl>(model, o)) {}
LMScorer::~LMScorer() = default;
int LMScorer::max_length() const { return impl_->o.max_length; }
const ScorerOptions& LMScorer::options() const { return impl_->o; }
void LMScorer::set_progress(std::function<void(int64_t, int64_t)> f) { impl_->o.progress = std::move(f); }

std::vector<LLResult> LMScorer::score(const std::vector<LLRequest>& reqs) {
  Impl& I = *impl_;
  const int max_len = I.o.max_length;
  const int V = I.cfg.vocab_size;
  std::vector<LLResult> res(reqs.size());
  int64_t done = 0;
  const int64_t total = static_cast<int64_t>(reqs.size());
  stats_.requests += total;

  // Truncate and place every request; group shared contexts (vanilla) or build rows.
  std::map<std::vector<int32_t>, std::vector<size_t>> by_context;
  std::vector<Prepared> prep(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const LLRequest& q = reqs[i];
    BT_CHECK(!q.context.empty(), "request ", i, ": empty context (an empty context is the EOT token)");
    BT_CHECK(static_cast<int>(q.continuation.size()) <= max_len, "request ", i, ": a continuation of ",
             q.continuation.size(), " tokens is longer than the max length ", max_len);
    for (const auto* part : {&q.context, &q.continuation})
      for (int32_t t : *part)
        BT_CHECK(t >= 0 && t < V, "request ", i, ": token id ", t, " is out of range for model.vocab_size ", V,
                 " (was it encoded with another tokenizer?)");
    Prepared& p = prep[i];
    p.full = q.context;
    p.full.insert(p.full.end(), q.continuation.begin(), q.continuation.end());
    if (static_cast<int>(p.full.size()) > max_len + 1) p.full.erase(p.full.begin(), p.full.end() - (max_len + 1));
    p.first = static_cast<int>(p.full.size() - q.continuation.size());
    stats_.tokens += static_cast<int64_t>(p.full.size());
    if (!I.cfg.is_block() && I.o.share_context && !q.continuation.empty() &&
        p.full.size() == q.context.size() + q.continuation.size())
      by_context[q.context].push_back(i);
  }

  std::vector<Impl::Group> groups;
  std::vector<bool> grouped(reqs.size(), false);
  for (auto& [ctx, idx] : by_context) {
    if (idx.size() < 2) continue;
    Impl::Group g;
    g.context = ctx;
    g.requests = idx;
    for (size_t i : idx) {
      g.max_cont = std::max(g.max_cont, static_cast<int>(reqs[i].continuation.size()));
      grouped[i] = true;
    }
    groups.push_back(std::move(g));
  }

  // Rows for the window path; a row that is a prefix of another is scored from that one.
  std::vector<Row> rows;
  {
    std::vector<size_t> order;
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (grouped[i]) continue;
      const Prepared& p = prep[i];
      if (reqs[i].continuation.empty()) {
        res[i] = LLResult{0.0, true, true, 0};
        ++done;
        continue;
      }
      // First scorable position in row coordinates: >= L_B for a block model (position 0 of a
      // vanilla row has nothing before it; the context holds at least one token).
      int q0 = p.first + I.offset;
      const int q1 = static_cast<int>(p.full.size()) + I.offset;
      if (I.cfg.is_block() && q0 < I.LB) {
        const int dropped = std::min(I.LB, q1) - q0;
        stats_.dropped_tokens += dropped;
        q0 = std::min(I.LB, q1);
        if (q0 >= q1) ++stats_.unscorable;
      }
      if (q0 >= q1) {
        res[i] = LLResult{0.0, true, true, 0};
        ++done;
        continue;
      }
      order.push_back(i);
    }
    auto row_tokens = [&](size_t i) {
      std::vector<int32_t> t(I.offset, I.o.pad_id);
      t.insert(t.end(), prep[i].full.begin(), prep[i].full.end());
      return t;
    };
    std::vector<std::vector<int32_t>> toks(order.size());
    for (size_t k = 0; k < order.size(); ++k) toks[k] = row_tokens(order[k]);
    std::vector<size_t> lex(order.size());
    std::iota(lex.begin(), lex.end(), 0);
    std::sort(lex.begin(), lex.end(), [&](size_t a, size_t b) { return toks[a] < toks[b]; });
    std::vector<size_t> host(lex.size());
    for (size_t k = lex.size(); k-- > 0;) {
      const auto& a = toks[lex[k]];
      const bool prefix = k + 1 < lex.size() && toks[lex[k + 1]].size() >= a.size() &&
                          std::equal(a.begin(), a.end(), toks[lex[k + 1]].begin());
      host[k] = prefix ? host[k + 1] : k;
    }
    std::map<size_t, size_t> row_of_host;
    for (size_t k = 0; k < lex.size(); ++k) {
      const size_t h = host[k];
      auto it = row_of_host.find(h);
      if (it == row_of_host.end()) {
        it = row_of_host.emplace(h, rows.size()).first;
        rows.push_back(Row{toks[lex[h]], {}});
      }
      const size_t i = order[lex[k]];
      int q0 = prep[i].first + I.offset;
      if (I.cfg.is_block()) q0 = std::max(q0, I.LB);
      rows[it->second].uses.push_back({i, q0, static_cast<int>(prep[i].full.size()) + I.offset});
    }
  }

  if (!groups.empty()) I.run_cached(groups, reqs, res, stats_, done, total);
  if (!rows.empty()) I.run_windows(rows, reqs, res, stats_, done, total);
  if (I.o.progress && rows.empty() && groups.empty()) I.o.progress(done, total);
  return res;
}

}  // namespace bt
