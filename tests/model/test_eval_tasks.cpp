// Zero-shot task evaluation (infer/tasks, infer/lm_scorer) against answers computed by hand.
//
// The models are bigram models by construction, so every log-probability is known:
//   - every transformer layer has zero matrices and biases, so each position's output is the
//     final LayerNorm of its input; token t is embedded as +1 / -1 in the two dimensions of its
//     class (a..z, space, EOS, anything else), so that LayerNorm output identifies the class;
//   - the head maps class c to logits ln(768) for one successor token succ(c) and 0 for the
//     other 256 tokens: P(succ) = 768 / 1024 = 3/4 (S = ln 3/4), P(other) = 1/1024 (O = -10 ln 2).
//     succ: a->b, ..., y->z, z->' ', ' '->a, EOS->a, anything else->' '.
//   - the block model carries the same bigram across blocks: the lookup embedder puts the class
//     patterns of the L_B tokens side by side, the block decoder's LayerNorm keeps them, and the
//     expansion layer copies the last token's pattern into the last prefix vector P_R; inside a
//     block the token decoder sees the previous token. So a block model scores every position
//     from position L_B on exactly like the vanilla one (pads in the first block, masked or not,
//     do not change the pattern's direction, and LayerNorm removes its scale).
// The task files under tests/tasks were written for these models; the expected values below
// are counted by hand from their text (comments give the counts). Computed in double (CPU fp64)
// and compared within 1e-9; in float within 1e-5. Batch sizes, prefix sharing and the vanilla
// shared-context path must not change any result.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/rng.h"
#include "data/tokenizer.h"
#include "infer/lm_scorer.h"
#include "infer/tasks/evaluate.h"
#include "model/checkpoint.h"
#include "model/cpu/cpu_backend.h"
#include "model/model.h"

using namespace bt;
namespace fs = std::filesystem;

namespace {

const double S = std::log(0.75);         // log P(successor)
const double O = -10.0 * std::log(2.0);  // log P(any other token) = log 1/1024
constexpr int V = 257;                   // the byte tokenizer: bytes and EOS = 256
constexpr int K = 32;                    // classes; patterns of width 2K = 64

int cls(int t) {
  if (t >= 'a' && t <= 'z') return t - 'a';
  if (t == ' ') return 26;
  if (t == 256) return 27;
  return 28;
}
int succ(int c) {
  if (c < 25) return 'a' + c + 1;
  if (c == 25) return ' ';
  if (c == 26 || c == 27) return 'a';
  return ' ';
}

std::string src_dir() {
  const char* s = std::getenv("BT_SOURCE_DIR");
  return s ? s : ".";
}
std::string task_dir() { return src_dir() + "/tests/tasks"; }

ModelConfig vanilla_cfg() {
  ModelConfig m;
  m.kind = "vanilla";
  m.vocab_size = V;
  m.context_length = 64;
  m.decoder = {1, 2 * K, 2, 8, 0};
  m.layernorm_eps = 1e-12;
  return m;
}

ModelConfig block_cfg() {
  ModelConfig m;
  m.kind = "block";
  m.vocab_size = V;
  m.context_length = 64;
  m.block_length = 4;
  m.embedder_dim = 2 * K;
  m.block_decoder = {1, 4 * 2 * K, 2, 8, 0};
  m.token_decoder = {1, 2 * K, 2, 8, 2};
  m.layernorm_eps = 1e-12;
  return m;
}

// The bigram weights for a model of either kind, as [total] doubles.
std::vector<double> bigram_params(const ModelConfig& m) {
  ParamTable t(m);
  std::vector<double> w(t.total(), 0.0);
  for (const ParamInfo& p : t.entries())
    if (p.kind == ParamKind::norm_weight)
      for (size_t i = 0; i < p.numel; ++i) w[p.offset + i] = 1.0;
  auto pattern = [&](const std::string& name) {  // [V, 2K] class patterns
    const ParamInfo& p = t.find(name);
    EXPECT_EQ(p.shape, (std::vector<int64_t>{V, 2 * K})) << name;
    for (int v = 0; v < V; ++v) {
      w[p.offset + size_t(v) * 2 * K + 2 * cls(v)] = 1.0;
      w[p.offset + size_t(v) * 2 * K + 2 * cls(v) + 1] = -1.0;
    }
  };
  auto head = [&](const std::string& name) {  // logits ln 768 for succ(class), 0 otherwise
    const ParamInfo& p = t.find(name);
    EXPECT_EQ(p.shape, (std::vector<int64_t>{V, 2 * K})) << name;
    const double a = std::log(768.0) / (2 * std::sqrt(32.0));  // LayerNorm output is pattern x sqrt(32)
    for (int c = 0; c < 29; ++c) {
      const int v = succ(c);
      w[p.offset + size_t(v) * 2 * K + 2 * c] = a;
      w[p.offset + size_t(v) * 2 * K + 2 * c + 1] = -a;
    }
  };
  if (m.is_block()) {
    pattern("embedder.embeddings.weight");
    pattern("token_decoder.gpt_neox.embed_in.weight");
    head("token_decoder.embed_out.weight");
    const ParamInfo& e = t.find("token_decoder.expansion_layer.weight");
    const int64_t R = m.token_decoder.prefix_length, DT = m.token_decoder.dim, DB = m.block_decoder.dim;
    EXPECT_EQ(e.shape, (std::vector<int64_t>{R * DT, DB}));
    for (int64_t i = 0; i < DT; ++i) w[e.offset + size_t((R - 1) * DT + i) * DB + (DB - DT + i)] = 1.0;
  } else {
    pattern("gpt_neox.embed_in.weight");
    head("embed_out.weight");
  }
  return w;
}

struct EvalRun {
  ModelConfig cfg;
  DType dtype = DType::f64;
  int batch = 4;
  int max_length = 64;
  BlockContext mode = BlockContext::pad;
  bool share = true;
};

// Every task through evaluate_task: name -> metric -> value, plus the scorer statistics.
struct Outcome {
  std::map<std::string, std::map<std::string, Aggregate>> metrics;
  std::map<std::string, TaskResult> results;
  ScorerStats stats;
};

Outcome run_tasks(const EvalRun& r, const std::vector<std::string>& tasks) {
  auto be = make_cpu_backend(r.dtype);
  ModelConfig m = r.cfg;
  m.context_length = scorer_window(m, r.max_length, r.mode);
  Model model(m, *be, r.batch);
  std::vector<double> w = bigram_params(m);
  model.set_params(w.data(), DType::f64);
  ScorerOptions so;
  so.max_length = r.max_length;
  so.block_context = r.mode;
  so.pad_id = 256;
  so.share_context = r.share;
  LMScorer scorer(model, so);
  auto tok = make_byte_tokenizer();
  TaskEvalOptions to;
  to.samples = true;
  to.bootstrap_iters = 1000;
  Outcome out;
  for (const auto& name : tasks) {
    TaskResult tr = evaluate_task(name, load_task(name, task_dir()), scorer, *tok, to);
    for (const auto& [metric, agg] : tr.metrics) out.metrics[name][metric] = agg;
    out.results[name] = std::move(tr);
  }
  out.stats = scorer.stats();
  return out;
}

const std::vector<std::string> kMcTasks = {"hellaswag", "piqa", "arc_easy", "arc_challenge", "sciq", "winogrande"};

// Hand-computed multiple-choice results (the same for every model and mode: every context holds at
// least L_B tokens). Per document, the choices' (S, O) counts are in the comments.
void expect_mc(const Outcome& o, double tol) {
  // hellaswag doc 0: context "Ab: cd. Ef gh"; " ab " 2S+2O, " zz" 3O, " xyzz" 2S+3O -> raw and
  // normalized (lengths 3, 2, 4) pick 0 = gold. doc 1: "Home: Xy. ab Cd"; " def" 2S+2O (len 3),
  // " efgh..yzz" 21S+3O (len 23) -> raw picks 0, normalized 1 = gold.
  EXPECT_NEAR(o.metrics.at("hellaswag").at("acc").value, 0.5, tol);
  EXPECT_NEAR(o.metrics.at("hellaswag").at("acc_norm").value, 1.0, tol);
  // piqa doc 0: " x" S+O (len 1), " abc..zq" 27S+O (len 27), gold 1: raw 0, normalized 1.
  // doc 1: " abc" 4S, " zz" S+2O, gold 0: both 0. doc 2: " x" S+O (len 1), " \u00e9" S+2O (two
  // UTF-8 bytes, each an "other" token: len 1 character), gold 0: both right; normalized by
  // bytes (-7.08 per byte against -7.22) it would pick the second.
  EXPECT_NEAR(o.metrics.at("piqa").at("acc").value, 2.0 / 3, tol);
  EXPECT_NEAR(o.metrics.at("piqa").at("acc_norm").value, 1.0, tol);
  // arc_easy doc 0: "ab" 3S, "b" S+O, "zz" S+2O, gold A: both right. doc 1: "y" S+O,
  // "abc..zq" 27S+O, gold "2": raw wrong, normalized right. doc 2: "x" S+O (len 1), "zz" S+2O
  // (len 2), gold B: raw wrong, normalized right (-7.08 > -7.22); normalized by tokens (2 and 3,
  // the leading space included) it would pick "x" (-3.61 > -4.72).
  EXPECT_NEAR(o.metrics.at("arc_easy").at("acc").value, 1.0 / 3, tol);
  EXPECT_NEAR(o.metrics.at("arc_easy").at("acc_norm").value, 1.0, tol);
  // arc_challenge (AI2's nested layout) doc 0: "zz" S+2O (gold), "abc" 4S: both wrong.
  // doc 1: "a" 2S (gold), "q" S+O: both right.
  EXPECT_NEAR(o.metrics.at("arc_challenge").at("acc").value, 0.5, tol);
  EXPECT_NEAR(o.metrics.at("arc_challenge").at("acc_norm").value, 0.5, tol);
  // sciq doc 0: zz, x, qq, abc (gold): 4S wins both. doc 1: abc..zq 27S+O, zzz S+3O, qqq S+3O,
  // y (gold) S+O: raw right, normalized picks abc..zq.
  EXPECT_NEAR(o.metrics.at("sciq").at("acc").value, 1.0, tol);
  EXPECT_NEAR(o.metrics.at("sciq").at("acc_norm").value, 0.5, tol);
  // winogrande doc 0: "ab x" + " cd ef." 2S+5O, "ab xyz" + " cd ef." 3S+4O (gold): right.
  // doc 1: "Mm qz" + " ab." 3S+O, "Mm q" + " ab." 2S+2O (gold): wrong.
  EXPECT_NEAR(o.metrics.at("winogrande").at("acc").value, 0.5, tol);
  // Standard errors: sample stddev / sqrt(n) of the per-document values.
  EXPECT_NEAR(*o.metrics.at("piqa").at("acc").stderr_, 1.0 / 3, tol);   // [0, 0, 1]: sqrt(1/3) / sqrt(3)
  EXPECT_NEAR(*o.metrics.at("piqa").at("acc_norm").stderr_, 0.0, tol);  // [1, 1, 1]
  // The per-choice loglikelihoods themselves (doc 1 of hellaswag).
  const auto& resps = o.results.at("hellaswag").samples[1]["resps"];
  EXPECT_NEAR(resps[0][0].get<double>(), 2 * S + 2 * O, tol);
  EXPECT_NEAR(resps[1][0].get<double>(), 21 * S + 3 * O, tol);
}

// lambada: "xyz abcd" -> " abcd" 5S (greedy); "hello abd" -> " abd" 2S+2O; "the cat sat on the
// mat" -> " mat" 4O. wikitext (max length 8, two windows per page): "abc def-ghi" 7S+4O
// (4 words, 15 bytes); "cd (ef) gh, ij" 6S+8O (7 words, 17 bytes).
void expect_lambada(const Outcome& o, const std::vector<double>& lls, double acc, double tol) {
  double sum = 0;
  for (double x : lls) sum += x;
  EXPECT_NEAR(o.metrics.at("lambada_openai").at("acc").value, acc, tol);
  EXPECT_NEAR(o.metrics.at("lambada_openai").at("perplexity").value, std::exp(-sum / lls.size()),
              tol * std::exp(-sum / lls.size()));
  const auto& samples = o.results.at("lambada_openai").samples;
  for (size_t d = 0; d < lls.size(); ++d) EXPECT_NEAR(samples[d]["resps"][0][0].get<double>(), lls[d], tol) << d;
}

void expect_wikitext(const Outcome& o, double ll, double tol) {
  const auto& m = o.metrics.at("wikitext");
  EXPECT_NEAR(m.at("word_perplexity").value, std::exp(-ll / 11), tol * std::exp(-ll / 11));
  EXPECT_NEAR(m.at("byte_perplexity").value, std::exp(-ll / 32), tol * std::exp(-ll / 32));
  EXPECT_NEAR(m.at("bits_per_byte").value, -ll / 32 / std::log(2.0), tol);
  EXPECT_FALSE(m.at("word_perplexity").stderr_.has_value());  // the harness has none: "N/A"
}

TEST(EvalTasks, VanillaBigramMatchesHandComputedAnswers) {
  EvalRun r;
  r.cfg = vanilla_cfg();
  Outcome o = run_tasks(r, {"lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "sciq", "winogrande"});
  expect_lambada(o, {5 * S, 2 * S + 2 * O, 4 * O}, 1.0 / 3, 1e-9);
  EXPECT_NEAR(*o.metrics.at("lambada_openai").at("acc").stderr_, 1.0 / 3, 1e-9);  // [1, 0, 0]
  expect_mc(o, 1e-9);
  EXPECT_GT(o.stats.shared_requests, 0);  // the multiple-choice contexts were prefilled once
  r.max_length = 8;
  Outcome w = run_tasks(r, {"wikitext"});
  expect_wikitext(w, 13 * S + 12 * O, 1e-9);
  EXPECT_EQ(w.results.at("wikitext").samples[0]["windows"].size(), 2u);
  EXPECT_EQ(w.results.at("wikitext").samples[1]["windows"].size(), 2u);
  EXPECT_EQ(w.results.at("wikitext").samples[0]["words"], 4);
  EXPECT_EQ(w.results.at("wikitext").samples[1]["bytes"], 17);
}

TEST(EvalTasks, VanillaFloatAndEverySchedulingGiveTheSameAnswers) {
  // fp32, batch sizes from 1 to many rows per forward, with and without the shared-context path,
  // and left truncation (max length 6: the contexts are cut, the bigram answers are not).
  for (int batch : {1, 3, 16})
    for (bool share : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "batch " << batch << " share " << share);
      EvalRun r;
      r.cfg = vanilla_cfg();
      r.dtype = DType::f32;
      r.batch = batch;
      r.share = share;
      Outcome o =
          run_tasks(r, {"lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "sciq", "winogrande"});
      expect_lambada(o, {5 * S, 2 * S + 2 * O, 4 * O}, 1.0 / 3, 1e-5);
      expect_mc(o, 1e-5);
      EXPECT_EQ(o.stats.shared_requests > 0, share);
    }
  EvalRun r;
  r.cfg = vanilla_cfg();
  r.max_length = 6;
  expect_lambada(run_tasks(r, {"lambada_openai"}), {5 * S, 2 * S + 2 * O, 4 * O}, 1.0 / 3, 1e-9);
}

TEST(EvalTasks, BlockPadModeScoresEveryTokenLikeTheVanillaModel) {
  for (int batch : {1, 5}) {
    EvalRun r;
    r.cfg = block_cfg();
    r.batch = batch;
    Outcome o =
        run_tasks(r, {"lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "sciq", "winogrande"});
    expect_lambada(o, {5 * S, 2 * S + 2 * O, 4 * O}, 1.0 / 3, 1e-9);
    expect_mc(o, 1e-9);
    EXPECT_EQ(o.stats.dropped_tokens, 0);
    r.max_length = 8;
    expect_wikitext(run_tasks(r, {"wikitext"}), 13 * S + 12 * O, 1e-9);
  }
}

TEST(EvalTasks, BlockNoPadModeDropsTheFirstBlock) {
  EvalRun r;
  r.cfg = block_cfg();
  r.mode = BlockContext::nopad;
  Outcome o = run_tasks(r, {"lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "sciq", "winogrande"});
  // "xyz abcd": the context has 3 tokens, so " " (position 3) is in the first block: 4S left.
  expect_lambada(o, {4 * S, 2 * S + 2 * O, 4 * O}, 1.0 / 3, 1e-9);
  EXPECT_EQ(o.stats.dropped_tokens, 1);
  EXPECT_EQ(o.results.at("lambada_openai").samples[0]["resps"][0][1], true);  // a, b, c, d are all greedy
  expect_mc(o, 1e-9);  // every multiple-choice context has at least L_B = 4 tokens
  // Truncated to the last max_length + 1 = 7 tokens: "yz abcd" drops " " and "a" (3S left),
  // "llo abd" drops " " (a, b, d: 2S+O), "the mat" drops " " (m, a, t: 3O).
  r.max_length = 6;
  expect_lambada(run_tasks(r, {"lambada_openai"}), {3 * S, 2 * S + O, 3 * O}, 1.0 / 3, 1e-9);
  // wikitext, max length 8: windows [EOS, t0..t7] lose t0..t2 (page 1: a, b, c = 3S; page 2: c, d,
  // ' ' = S+2O); the second window of page 2 has a context of 3 tokens and loses "g" (O).
  r.max_length = 8;
  Outcome w = run_tasks(r, {"wikitext"});
  expect_wikitext(w, (7 - 3) * S + 4 * O + (6 - 1) * S + (8 - 3) * O, 1e-9);
  EXPECT_EQ(w.stats.dropped_tokens, 7);
}

TEST(EvalTasks, BlockModelInFloatEveryBatchSize) {
  for (BlockContext mode : {BlockContext::pad, BlockContext::nopad})
    for (int batch : {1, 2, 9}) {
      EvalRun r;
      r.cfg = block_cfg();
      r.dtype = DType::f32;
      r.batch = batch;
      r.mode = mode;
      Outcome o = run_tasks(r, kMcTasks);
      expect_mc(o, 1e-5);
    }
}

TEST(EvalTasks, PromptsAreTheHarnessTemplates) {
  EvalRun r;
  r.cfg = vanilla_cfg();
  Outcome o = run_tasks(r, {"lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "sciq", "winogrande"});
  auto args = [&](const std::string& t, int d) { return o.results.at(t).samples[d]["arguments"]; };
  using nlohmann::json;
  EXPECT_EQ(args("lambada_openai", 2), json::parse(R"([["the cat sat on the", " mat"]])"));
  // hellaswag: " [title]" -> ". ", "[x]" removed, ctx_b capitalized, double spaces collapsed.
  EXPECT_EQ(args("hellaswag", 0), json::parse(R"([["Ab: cd. Ef gh", " ab "], ["Ab: cd. Ef gh", " zz"],
                                                   ["Ab: cd. Ef gh", " xyzz"]])"));
  EXPECT_EQ(args("hellaswag", 1)[0][0], "Home: Xy. ab Cd");
  EXPECT_EQ(args("piqa", 0)[1], json::parse(R"(["Question: ab\nAnswer:", " abcdefghijklmnopqrstuvwxyzq"])"));
  EXPECT_EQ(args("arc_challenge", 0)[0], json::parse(R"(["Question: Q?\nAnswer:", " zz"])"));
  EXPECT_EQ(args("sciq", 0)[3], json::parse(R"(["some support.\nQuestion: Q\nAnswer:", " abc"])"));
  EXPECT_EQ(args("sciq", 1)[0][0], "\nQuestion: R\nAnswer:");
  EXPECT_EQ(args("winogrande", 0), json::parse(R"([["ab x", " cd ef."], ["ab xyz", " cd ef."]])"));
  EXPECT_EQ(o.results.at("winogrande").samples[0]["target"], 1);
}

TEST(EvalTasks, OriginalDatasetLayoutsLoadTheSameDocuments) {
  const fs::path dir = fs::temp_directory_path() / ("bt_eval_layouts_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "piqa");
  fs::create_directories(dir / "sciq");
  fs::create_directories(dir / "ARC-Easy");
  std::ofstream(dir / "piqa" / "valid.jsonl") << R"({"goal": "ab", "sol1": "x", "sol2": "abcdefghijklmnopqrstuvwxyzq"})"
                                              << "\n"
                                              << R"({"goal": "cd", "sol1": "abc", "sol2": "zz"})"
                                              << "\n";
  std::ofstream(dir / "piqa" / "valid-labels.lst") << "1\n0\n";
  std::ofstream(dir / "sciq" / "test.json")
      << R"([{"question": "Q", "distractor3": "qq", "distractor1": "zz", "distractor2": "x", "correct_answer": "abc",
              "support": "  some support."}])";
  std::ofstream(dir / "ARC-Easy" / "ARC-Easy-Test.jsonl")
      << R"({"id": "q1", "question": {"stem": "Why?", "choices": [{"text": "ab", "label": "A"}, {"text": "b", "label": "B"}]}, "answerKey": "A"})"
      << "\n";
  const LoadedTask piqa = load_task("piqa", dir.string()), ref = load_task("piqa", task_dir());
  ASSERT_EQ(piqa.docs.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(piqa.docs[i].contexts, ref.docs[i].contexts);
    EXPECT_EQ(piqa.docs[i].continuations, ref.docs[i].continuations);
    EXPECT_EQ(piqa.docs[i].gold, ref.docs[i].gold);
  }
  const LoadedTask sciq = load_task("sciq", dir.string());
  ASSERT_EQ(sciq.docs.size(), 1u);
  EXPECT_EQ(sciq.docs[0].contexts, load_task("sciq", task_dir()).docs[0].contexts);
  EXPECT_EQ(sciq.docs[0].gold, 3);
  const LoadedTask arc = load_task("arc_easy", dir.string());
  EXPECT_EQ(arc.docs[0].continuations, (std::vector<std::string>{" ab", " b"}));
  // Errors name the file, the line and what is missing.
  std::ofstream(dir / "winogrande.jsonl")
      << R"({"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"})"
      << "\n";
  try {
    load_task("winogrande", dir.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("winogrande.jsonl:1"), std::string::npos) << e.what();
  }
  try {
    load_task("hellaswag", dir.string());
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hellaswag_val.jsonl"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

// ---- a random model: scheduling must not change any loglikelihood -------------------------------

// Random weights (larger than the init so that attention matters) and random requests: questions
// of 2-4 choices sharing contexts of different lengths (so the shared contexts are left-padded
// in a batch), single requests, a context of only the pad id, a continuation holding the pad id,
// and requests longer than max_length + 1.
std::vector<double> random_weights(const ModelConfig& m) {
  ParamTable t(m);
  std::vector<double> w = init_params(t, 7);
  Rng r(3);
  for (const auto& p : t.entries()) {
    const bool vec = p.kind != ParamKind::matrix && p.kind != ParamKind::embedding && p.kind != ParamKind::head;
    for (size_t i = 0; i < p.numel; ++i)
      w[p.offset + i] = vec ? w[p.offset + i] + 0.2 * r.normal() : 5 * w[p.offset + i];
  }
  return w;
}

std::vector<LLRequest> random_requests(int max_len) {
  Rng r(11);
  auto ids = [&](int n) {
    std::vector<int32_t> v(static_cast<size_t>(n), 0);
    for (auto& x : v) x = int32_t(r.below(256));
    return v;
  };
  std::vector<LLRequest> q;
  for (int i = 0; i < 9; ++i) {
    const auto ctx = ids(1 + int(r.below(30)));
    for (int c = 0, n = 2 + int(r.below(3)); c < n; ++c) q.push_back({ctx, ids(1 + int(r.below(8))), c == 1});
  }
  for (int i = 0; i < 5; ++i) q.push_back({ids(1 + int(r.below(12))), ids(1 + int(r.below(9))), true});
  q.push_back({std::vector<int32_t>{256}, ids(9), true});
  q.push_back({ids(6), std::vector<int32_t>{3, 256, 7}, true});
  q.push_back({ids(max_len + 9), ids(5), false});
  return q;
}

std::vector<LLResult> score_random(const ModelConfig& cfg, int batch, bool share, BlockContext mode, int max_len) {
  auto be = make_cpu_backend(DType::f64);
  ModelConfig m = cfg;
  m.context_length = scorer_window(cfg, max_len, mode);
  Model model(m, *be, batch);
  const std::vector<double> w = random_weights(m);
  model.set_params(w.data(), DType::f64);
  ScorerOptions o;
  o.max_length = max_len;
  o.block_context = mode;
  o.pad_id = 256;
  o.share_context = share;
  LMScorer s(model, o);
  return s.score(random_requests(max_len));
}

void expect_same(const std::vector<LLResult>& a, const std::vector<LLResult>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i].logprob, b[i].logprob, 1e-9 * std::abs(b[i].logprob)) << what << ": request " << i;
    EXPECT_EQ(a[i].greedy_known, b[i].greedy_known) << what << ": request " << i;
    if (a[i].greedy_known) {
      EXPECT_EQ(a[i].is_greedy, b[i].is_greedy) << what << ": request " << i;
    }
    EXPECT_EQ(a[i].scored, b[i].scored) << what << ": request " << i;
  }
}

TEST(EvalTasks, RandomVanillaSharedContextEqualsWindows) {
  ModelConfig m = vanilla_cfg();
  m.layernorm_eps = 1e-5;
  m.decoder = {2, 32, 2, 64, 0};
  // Windows one request at a time: the reference.
  const auto ref = score_random(m, 1, false, BlockContext::pad, 40);
  expect_same(score_random(m, 7, false, BlockContext::pad, 40), ref, "windows, batch 7");
  expect_same(score_random(m, 1, true, BlockContext::pad, 40), ref, "shared contexts, batch 1");
  expect_same(score_random(m, 6, true, BlockContext::pad, 40), ref, "shared contexts, batch 6");
}

TEST(EvalTasks, RandomBlockModelBatchesDoNotChangeResults) {
  ModelConfig m = block_cfg();
  m.layernorm_eps = 1e-5;
  m.embedder_dim = 8;
  m.block_decoder = {2, 32, 2, 64, 0};
  m.token_decoder = {2, 32, 2, 48, 2};
  for (BlockContext mode : {BlockContext::pad, BlockContext::nopad})
    expect_same(score_random(m, 9, true, mode, 40), score_random(m, 1, true, mode, 40), to_string(mode));
}

// ---- the command line --------------------------------------------------------------------------

class EvalCli : public testing::Test {
 protected:
  void SetUp() override {
    const char* b = std::getenv("BT_BINARY");
    bt_ = b ? b : "bt";
    dir_ = fs::temp_directory_path() / ("bt_eval_cli_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir_);
  }
  // bt ARGS: (exit code, stdout + stderr)
  std::pair<int, std::string> run(const std::string& args) { return shell(bt_ + " " + args); }
  std::pair<int, std::string> shell(const std::string& cmd) {
    const std::string log = (dir_ / "log.txt").string();
    const int rc = std::system((cmd + " > " + log + " 2>&1").c_str());
    std::ifstream in(log);
    std::stringstream ss;
    ss << in.rdbuf();
    return {rc, ss.str()};
  }
  std::string ok(const std::string& args) {
    auto [rc, out] = run(args);
    EXPECT_EQ(rc, 0) << args << "\n" << out;
    return out;
  }
  // `docs` short documents tokenized with the byte tokenizer into dir_/data (val_fraction of them
  // held out); returns that directory.
  std::string byte_corpus(int docs, double val_fraction) {
    std::ofstream txt(dir_ / "corpus.txt");
    for (int d = 0; d < docs; ++d) txt << "document " << d << ": the quick brown fox jumps over the lazy dog\n\n";
    txt.close();
    ok("prepare --input " + (dir_ / "corpus.txt").string() + " --tokenizer byte --val-fraction " +
       std::to_string(val_fraction) + " --no-progress --out " + (dir_ / "data").string());
    return (dir_ / "data").string();
  }
  // A checkpoint directory holding the bigram weights of `m`.
  std::string checkpoint(const ModelConfig& m, const std::string& name) {
    Config c;
    c.name = name;
    c.model = m;
    c.data.synthetic = "repeat:37";
    c.data.random_pad_first_block = m.is_block();
    ParamTable t(m);
    std::vector<double> w = bigram_params(m);
    std::vector<float> f(w.begin(), w.end());
    CheckpointContents cc;
    cc.step = 1;
    cc.config = &c;
    cc.table = &t;
    cc.params = f.data();
    return save_checkpoint((dir_ / name).string(), cc, 0);
  }
  std::string bt_;
  fs::path dir_;
};

TEST_F(EvalCli, TasksEndToEndInTheHarnessLayout) {
  const std::string ckpt = checkpoint(vanilla_cfg(), "vanilla");
  const fs::path out = dir_ / "out";
  const std::string json_out = ok("eval --ckpt " + ckpt + " --task all --task-data " + task_dir() +
                                  " --tokenizer byte --device cpu --batch-size 2 --output " + out.string() +
                                  " --log-samples --json --bootstrap-iters 1000");
  const auto j = nlohmann::json::parse(json_out.substr(json_out.find('{')));
  std::ifstream in(out / "results.json");
  ASSERT_TRUE(in) << "no results.json";
  EXPECT_EQ(nlohmann::json::parse(in)["results"], j["results"]);
  for (const char* k : {"results", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
                        "config", "timing"})
    EXPECT_TRUE(j.contains(k)) << k;
  const auto& r = j["results"];
  EXPECT_EQ(r["piqa"]["alias"], "piqa");
  EXPECT_NEAR(r["piqa"]["acc,none"].get<double>(), 2.0 / 3, 1e-9);
  EXPECT_NEAR(r["piqa"]["acc_stderr,none"].get<double>(), 1.0 / 3, 1e-9);
  EXPECT_NEAR(r["hellaswag"]["acc_norm,none"].get<double>(), 1.0, 1e-9);
  EXPECT_NEAR(r["lambada_openai"]["acc,none"].get<double>(), 1.0 / 3, 1e-9);
  EXPECT_NEAR(r["lambada_openai"]["perplexity,none"].get<double>(), std::exp(-(7 * S + 6 * O) / 3),
              1e-5 * std::exp(-(7 * S + 6 * O) / 3));
  EXPECT_TRUE(r["lambada_openai"]["perplexity_stderr,none"].is_number());
  EXPECT_EQ(r["wikitext"]["word_perplexity_stderr,none"], "N/A");
  EXPECT_NEAR(r["wikitext"]["bits_per_byte,none"].get<double>(), -(13 * S + 12 * O) / 32 / std::log(2.0), 1e-5);
  EXPECT_EQ(j["n-samples"]["sciq"]["effective"], 2);
  EXPECT_EQ(j["versions"]["wikitext"], 2.0);
  EXPECT_GT(j["timing"]["requests_per_second"].get<double>(), 0);
  EXPECT_TRUE(fs::exists(out / "samples_winogrande.jsonl"));
  // The table and the rate, and --limit.
  const std::string table = ok("eval --ckpt " + ckpt + " --task piqa,arc_easy --task-data " + task_dir() +
                               " --tokenizer byte --device cpu --limit 1");
  EXPECT_NE(table.find("|piqa"), std::string::npos) << table;
  EXPECT_NE(table.find("requests/s"), std::string::npos) << table;
  EXPECT_NE(table.find("1 of 3 documents"), std::string::npos) << table;
}

TEST_F(EvalCli, ProgressBarWithEtaOnATerminal) {
  // script(1) (util-linux, in every Debian) runs bt on a pseudo-terminal: the bar is drawn on it.
  const std::string ckpt = checkpoint(vanilla_cfg(), "vanilla");
  auto [rc, out] = shell("script -qec \"" + bt_ + " eval --ckpt " + ckpt + " --task piqa,arc_easy --task-data " +
                         task_dir() + " --tokenizer byte --device cpu --batch-size 1 --no-share-context\" /dev/null");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("ETA"), std::string::npos) << out;
  EXPECT_NE(out.find("req/s"), std::string::npos) << out;
  EXPECT_NE(out.find("piqa ["), std::string::npos) << out;
  // Not a terminal: no bar.
  const std::string plain = ok("eval --ckpt " + ckpt + " --task piqa --task-data " + task_dir() +
                               " --tokenizer byte --device cpu --batch-size 1");
  EXPECT_EQ(plain.find("ETA"), std::string::npos) << plain;
}

TEST_F(EvalCli, BlockContextModesAndBadInput) {
  const std::string ckpt = checkpoint(block_cfg(), "block");
  auto ppl = [&](const std::string& mode) {
    const std::string o = ok("eval --ckpt " + ckpt + " --task lambada_openai --task-data " + task_dir() +
                             " --tokenizer byte --device cpu --json --context-mode " + mode);
    return nlohmann::json::parse(o.substr(o.find('{')))["results"]["lambada_openai"]["perplexity,none"].get<double>();
  };
  EXPECT_NEAR(ppl("pad"), std::exp(-(7 * S + 6 * O) / 3), 1e-5 * std::exp(-(7 * S + 6 * O) / 3));
  EXPECT_NEAR(ppl("nopad"), std::exp(-(6 * S + 6 * O) / 3), 1e-5 * std::exp(-(6 * S + 6 * O) / 3));
  auto fails = [&](const std::string& args, const std::string& msg) {
    auto [rc, out] = run("eval --ckpt " + ckpt + " --tokenizer byte --device cpu " + args);
    EXPECT_NE(rc, 0) << args;
    EXPECT_NE(out.find(msg), std::string::npos) << args << "\n" << out;
  };
  fails("--task nosuch --task-data " + task_dir(), "unknown task 'nosuch'");
  fails("--task piqa", "--task needs --task-data");
  fails("--task piqa --task-data " + dir_.string(), "no data under");
  fails("--task piqa --task-data " + task_dir() + " --log-samples", "--log-samples needs --output");
  fails("--task piqa --task-data " + task_dir() + " --context-mode half", "expected pad or nopad");
  fails("--task hellaswag --task-data " + task_dir() + " --max-length 16",
        "hellaswag document 2: a continuation of 24 tokens is longer than --max-length 16");
  fails("--task piqa --task-data " + task_dir() + " --limit -1", "--limit must be >= 0");
}

TEST_F(EvalCli, DataLossDoesNotDependOnTheBatchSize) {
  // 40 short documents of the byte tokenizer: many windows of 64 tokens with a partial last batch.
  byte_corpus(40, 0.5);
  const std::string ckpt = checkpoint(vanilla_cfg(), "vanilla");
  double first = 0;
  int64_t windows = 0;
  for (int batch : {1, 3, 8}) {
    const std::string o = ok("eval --ckpt " + ckpt + " --data '" + (dir_ / "data").string() +
                             "/val-*.h5' --device cpu "
                             "--json --batch-size " +
                             std::to_string(batch));
    const auto j = nlohmann::json::parse(o.substr(o.find('{')));
    EXPECT_EQ(j["windows"], j["windows_total"]) << "batch " << batch;
    if (batch == 1) {
      first = j["loss"].get<double>();
      windows = j["windows"].get<int64_t>();
      EXPECT_GT(windows, 8);
      EXPECT_NE(windows % 8, 0);  // a partial last batch of 8
    } else {
      EXPECT_EQ(j["windows"].get<int64_t>(), windows);
      EXPECT_NEAR(j["loss"].get<double>(), first, 1e-6) << "batch " << batch;
    }
  }
}

}  // namespace

namespace {

// bt eval --by-position against losses counted by hand: one document of 138 bytes (two whole
// windows of 64 and a remainder of 10, which is dropped) that follows the bigram's successor chain
// (a -> b .. z -> ' ' -> a) except for a 'Q' at positions 10 and 40 of each window (those and the
// positions after them cost O, every other predicted position S), and one document of 30 bytes,
// shorter than a window (skipped).
class ByPosition : public EvalCli {
 protected:
  std::string prepare_corpus() {
    const std::string cycle = "abcdefghijklmnopqrstuvwxyz ";
    std::string doc;
    for (int i = 0; i < 138; ++i) doc += (i % 64 == 10 || i % 64 == 40) ? 'Q' : cycle[i % 27];
    std::ofstream txt(dir_ / "long.txt");
    txt << doc << "\n" << std::string(30, 'a') << "\n";
    txt.close();
    ok("prepare --input " + (dir_ / "long.txt").string() + " --tokenizer byte --doc-split line --val-fraction 0 " +
       "--no-progress --out " + (dir_ / "long").string());
    return "'" + (dir_ / "long").string() + "/train-*.h5'";
  }
  nlohmann::json by_position(const std::string& ckpt, const std::string& data, int batch) {
    const std::string o = ok("eval --ckpt " + ckpt + " --data " + data + " --by-position 16 --device cpu --json " +
                             "--precision fp64 --batch-size " + std::to_string(batch));
    return nlohmann::json::parse(o.substr(o.find('{')));
  }
};

TEST_F(ByPosition, VanillaAndBlockLossPerBucketAsCountedByHand) {
  const std::string data = prepare_corpus();
  for (const bool block : {false, true}) {
    SCOPED_TRACE(block ? "block" : "vanilla");
    const std::string ckpt = checkpoint(block ? block_cfg() : vanilla_cfg(), block ? "block" : "vanilla");
    for (int batch : {1, 3}) {
      const nlohmann::json j = by_position(ckpt, data, batch);
      EXPECT_EQ(j["windows"], 2);
      EXPECT_EQ(j["documents"], 1);
      EXPECT_EQ(j["skipped_documents"], 1);
      ASSERT_EQ(j["buckets"].size(), 4u) << j.dump();
      // Bucket 0: positions 1..15 (vanilla) or 4..15 (block: the first block has no prediction),
      // two of them (10, 11) cost O; buckets 2 (32..47) holds 40 and 41.
      const double first_s = block ? 10 : 13, first_n = block ? 12 : 15;
      const double want[4] = {-(first_s * S + 2 * O) / first_n, -S, -(14 * S + 2 * O) / 16, -S};
      const int64_t targets[4] = {2 * int64_t(first_n), 32, 32, 32};
      for (int k = 0; k < 4; ++k) {
        EXPECT_EQ(j["buckets"][k]["start"], 16 * k);
        EXPECT_EQ(j["buckets"][k]["end"], 16 * k + 16);
        // 1e-6: the checkpoint holds the weights in float (a position counted wrong moves a bucket by > 0.4)
        EXPECT_NEAR(j["buckets"][k]["loss"].get<double>(), want[k], 1e-6) << "bucket " << k;
        EXPECT_EQ(j["buckets"][k]["targets"], targets[k]) << "bucket " << k;
      }
      EXPECT_NEAR(j["loss"].get<double>(), -((first_s + 46) * S + 4 * O) / (first_n + 48), 1e-6);
    }
  }
}

TEST_F(ByPosition, OutputFileAndBadInput) {
  const std::string data = prepare_corpus();
  const std::string ckpt = checkpoint(vanilla_cfg(), "vanilla");
  const fs::path out = dir_ / "out" / "by_position.json";
  const std::string table = ok("eval --ckpt " + ckpt + " --data " + data + " --by-position 32 --device cpu --output " +
                               out.string());
  EXPECT_NE(table.find("2 windows of 64 tokens from 1 documents (1 shorter skipped)"), std::string::npos) << table;
  std::ifstream in(out);
  ASSERT_TRUE(in) << "no " << out;
  EXPECT_EQ(nlohmann::json::parse(in)["buckets"].size(), 2u);
  auto [rc, msg] = run("eval --ckpt " + ckpt + " --data " + data + " --by-position 0 --device cpu");
  EXPECT_NE(rc, 0);
  EXPECT_NE(msg.find("--by-position BUCKET must be >= 1"), std::string::npos) << msg;
  std::tie(rc, msg) = run("eval --ckpt " + ckpt + " --data " + data +
                          " --by-position 8 --device cpu model.context_length=256");
  EXPECT_NE(rc, 0);
  EXPECT_NE(msg.find("no document of"), std::string::npos) << msg;
  EXPECT_NE(msg.find("holds a window of model.context_length = 256 tokens (2 shorter documents skipped)"),
            std::string::npos) << msg;
}

}  // namespace

namespace {

// bt eval --run: every checkpoint of a run in one table, each row equal to bt eval --ckpt of that
// checkpoint; with --task the task metrics join the row.
TEST_F(EvalCli, RunEvaluatesEveryCheckpointIntoOneTable) {
  byte_corpus(60, 0.2);
  const std::string run_dir = (dir_ / "run").string();
  ok("train --config " + src_dir() + "/configs/tiny/vanilla.yaml model.vocab_size=257 model.context_length=32 " +
     "'model.decoder={layers: 1, dim: 32, heads: 2}' train.global_batch=4 train.micro_batch=4 train.steps=4 " +
     "train.checkpoint_every=2 train.keep_checkpoints=0 train.eval_batches=2 train.device=cpu 'data.train=" +
     (dir_ / "data").string() + "/train-*.h5' 'data.val=" + (dir_ / "data").string() + "/val-*.h5' train.out_dir=" +
     run_dir);
  const fs::path csv = dir_ / "run_eval.csv";
  const std::string table = ok("eval --run " + run_dir + " --device cpu --task piqa --task-data " + task_dir() +
                               " --data '" + (dir_ / "data").string() + "/val-*.h5' --output " + csv.string());
  EXPECT_NE(table.find("| step | tokens | val_loss | ppl | piqa/acc | piqa/acc_norm |"), std::string::npos) << table;
  std::ifstream in(csv);
  std::string header, row;
  std::getline(in, header);
  EXPECT_EQ(header, "step,tokens,val_loss,ppl,piqa/acc,piqa/acc_norm");
  for (int step : {2, 4}) {
    ASSERT_TRUE(std::getline(in, row)) << "no row for step " << step;
    EXPECT_EQ(row.substr(0, row.find(',')), std::to_string(step));
    // tokens = steps x global batch x context length
    EXPECT_EQ(row.substr(row.find(',') + 1, row.find(',', row.find(',') + 1) - row.find(',') - 1),
              std::to_string(step * 4 * 32));
    const std::string o = ok("eval --ckpt " + run_dir + "/checkpoints/step_0000000" + std::to_string(step) +
                             " --device cpu --json");
    const double loss = nlohmann::json::parse(o.substr(o.find('{')))["loss"].get<double>();
    const size_t c2 = row.find(',', row.find(',') + 1);
    EXPECT_NEAR(std::stod(row.substr(c2 + 1)), loss, 1e-6) << row;
  }
  EXPECT_FALSE(std::getline(in, row)) << "one row per checkpoint: " << row;
  auto [rc, msg] = run("eval --run " + (dir_ / "nothing").string() + " --device cpu");
  EXPECT_NE(rc, 0);
  EXPECT_NE(msg.find("no complete checkpoint under"), std::string::npos) << msg;
  std::tie(rc, msg) = run("eval --run " + run_dir + " --ckpt " + run_dir + " --device cpu");
  EXPECT_NE(rc, 0);
  EXPECT_NE(msg.find("drop --ckpt"), std::string::npos) << msg;
}

}  // namespace

namespace {

// train.eval_tasks: the tasks scored during training (every train.eval_tasks_every steps and at
// the last) equal bt eval --task on the checkpoint of that step, and go to metrics.jsonl and
// TensorBoard.
TEST_F(EvalCli, TasksDuringTrainingEqualBtEvalOnTheCheckpoints) {
  byte_corpus(60, 0.2);
  const std::string run_dir = (dir_ / "run").string();
  const std::string out = ok(
      "train --config " + src_dir() + "/configs/tiny/block_b4.yaml model.vocab_size=257 model.context_length=32 " +
      "model.embedder.dim=8 'model.block_decoder={layers: 1, dim: 32, heads: 2}' "
      "'model.token_decoder={layers: 1, dim: 32, heads: 2, prefix_length: 2}' train.global_batch=4 "
      "train.micro_batch=4 train.steps=5 train.checkpoint_every=2 train.keep_checkpoints=0 train.eval_batches=1 "
      "train.device=cpu train.eval_tasks=piqa,lambada_openai train.eval_tasks_every=2 data.task_data=" +
      task_dir() + " 'data.train=" + (dir_ / "data").string() + "/train-*.h5' 'data.val=" + (dir_ / "data").string() +
      "/val-*.h5' train.out_dir=" + run_dir);
  EXPECT_NE(out.find("tasks      2 | lambada_openai acc"), std::string::npos) << out;
  std::map<int64_t, nlohmann::json> logged;
  std::ifstream m(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(m, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("eval_tasks")) logged[j["step"].get<int64_t>()] = j["eval_tasks"];
  }
  ASSERT_EQ(logged.size(), 3u) << "steps 2, 4 and the last, 5";
  for (int64_t step : {2, 4, 5}) {
    ASSERT_TRUE(logged.count(step)) << step;
    const std::string o = ok("eval --ckpt " + run_dir + "/checkpoints/step_0000000" + std::to_string(step) +
                             " --task piqa,lambada_openai --task-data " + task_dir() +
                             " --device cpu --bootstrap-iters 0 --json");
    const auto r = nlohmann::json::parse(o.substr(o.find('{')))["results"];
    for (const char* task : {"piqa", "lambada_openai"})
      for (const auto& [k, v] : r[task].items()) {
        if (!v.is_number() || k.find("_stderr") != std::string::npos) continue;
        const std::string metric = k.substr(0, k.find(','));
        ASSERT_TRUE(logged[step][task].contains(metric)) << step << " " << task << " " << metric;
        EXPECT_NEAR(logged[step][task][metric].get<double>(), v.get<double>(), 1e-9 * std::abs(v.get<double>()))
            << "step " << step << " " << task << " " << metric;
      }
  }
  // TensorBoard: one scalar per task metric (the tag's bytes are in the event file).
  std::string events;
  for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "tensorboard")) {
    std::ifstream in(e.path(), std::ios::binary);
    events += std::string(std::istreambuf_iterator<char>(in), {});
  }
  for (const char* tag : {"tasks/piqa/acc", "tasks/piqa/acc_norm", "tasks/lambada_openai/perplexity"})
    EXPECT_NE(events.find(tag), std::string::npos) << tag;
  // A task name that does not exist stops the run before its first step.
  auto [rc, msg] = run("train --config " + run_dir + "/config.yaml train.eval_tasks=piqaa train.out_dir=" +
                       (dir_ / "run2").string());
  EXPECT_NE(rc, 0);
  EXPECT_NE(msg.find("unknown task 'piqaa'"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(dir_ / "run2" / "metrics.jsonl"));
}

}  // namespace
