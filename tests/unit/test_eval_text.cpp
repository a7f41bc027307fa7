// The pieces of `bt eval --task` that must behave exactly like lm-evaluation-harness (Python):
// the text operations of the task definitions, CPython's random (the bootstrap's), the
// harness's aggregations and standard errors, and its request construction (_encode_pair,
// rolling windows). Every expected value below was produced by Python 3.11 with lm-eval 0.4.3
// (the expressions are in the comments).
#include <gtest/gtest.h>

#include <cmath>

#include "data/tokenizer.h"
#include "infer/lm_requests.h"
#include "infer/tasks/metrics.h"
#include "infer/tasks/text.h"

using namespace bt;

TEST(EvalText, PythonWhitespaceStripAndWords) {
  EXPECT_EQ(text::strip("\xC2\xA0 ab\xE3\x80\x80"), "ab");  // '\u00a0 ab\u3000'.strip()
  EXPECT_EQ(text::lstrip("\n\t x "), "x ");
  EXPECT_EQ(text::rstrip(" x \x0b"), " x");
  EXPECT_EQ(text::count_words("  a b\n\nc "), 5u);          // len(re.split(r"\s+", ...))
  EXPECT_EQ(text::count_words(""), 1u);
  EXPECT_EQ(text::count_words("abc def @-@ ghi"), 4u);
  EXPECT_EQ(text::length("\xC3\xA9t\xC3\xA9"), 3u);           // len("été")
  EXPECT_EQ(text::trailing_space_bytes("ab \xE2\x80\x83"), 4u);  // " \u2003"
}

TEST(EvalText, Capitalize) {
  EXPECT_EQ(text::capitalize("hELLO wORLD"), "Hello world");
  EXPECT_EQ(text::capitalize("\xC3\xA9lan \xC3\x89" "COLE"), "\xC3\x89lan \xC3\xA9" "cole");  // 'élan ÉCOLE'
  EXPECT_EQ(text::capitalize(""), "");
  EXPECT_EQ(text::capitalize("1abC"), "1abc");
}

TEST(EvalText, HellaswagPreprocess) {
  // preprocess(' A [title] B [step] c  d [x\ny] e   f [z] ')
  EXPECT_EQ(text::hellaswag_preprocess(" A [title] B [step] c  d [x\ny] e   f [z] "), "A. B c d [x\ny] e  f ");
}

TEST(EvalText, WikitextDetokenizer) {
  const std::string page =
      " = Valkyria @-@ Chronicles = \n It's  the player 's ( first ) game , \" quoted  text \" and [ b ] { c } 3 "
      "@.@ 5 s ' x ' = = = = hi = = N 10 \xC2\xB0 C /' 5/ \n ";
  EXPECT_EQ(text::wikitext_detokenize(page),
            " = Valkyria-Chronicles =\nIt's  the player's (first) game, \"quoted  text\" and [b] {c} 3.5 s'x' ==== "
            "hi == 1 10\xC2\xB0" "C /'[0-9]/\n");
}

TEST(EvalText, PythonRandom) {
  PyRandom r0(0);
  EXPECT_EQ(r0.random(), 0.8444218515250481);  // random.Random(0).random(), twice
  EXPECT_EQ(r0.random(), 0.7579544029403025);
  EXPECT_EQ(PyRandom(1).random(), 0.13436424411240122);
  EXPECT_EQ(PyRandom(12345678901ull).random(), 0.9460118159397316);  // a two-word seed
  PyRandom r3(3);  // getrandbits(32) x 3
  EXPECT_EQ(r3.next_u32(), 1022050301u);
  EXPECT_EQ(r3.next_u32(), 2545373330u);
  EXPECT_EQ(r3.next_u32(), 2337446730u);
  PyRandom r7(7);  // random.Random(7).choices(range(10), k=10)
  std::vector<size_t> got;
  for (int i = 0; i < 10; ++i) got.push_back(r7.choice_index(10));
  EXPECT_EQ(got, (std::vector<size_t>{3, 1, 6, 0, 5, 3, 0, 5, 0, 4}));
}

TEST(EvalText, HarnessAggregationsAndStandardErrors) {
  const std::vector<double> xs = {-1.0, -2.5, -0.3, -4.0, -1.7};
  // lm_eval.api.metrics.bootstrap_stderr(perplexity, xs, iters=...)
  EXPECT_NEAR(bootstrap_stderr([](const std::vector<double>& s) { return perplexity(s); }, xs, 2000),
              5.16711200845309, 1e-12);
  EXPECT_NEAR(bootstrap_stderr([](const std::vector<double>& s) { return perplexity(s); }, xs, 100000),
              5.099230210023731, 1e-12);
  EXPECT_NEAR(mean_stderr({1, 0, 0, 1, 1}), 0.24494897427831783, 1e-15);
  EXPECT_NEAR(perplexity(xs), std::exp(1.9), 1e-12);
  EXPECT_NEAR(weighted_perplexity({{-3, 2}, {-5, 6}}), std::exp(1.0), 1e-12);
  EXPECT_NEAR(bits_per_byte({{-3, 2}, {-5, 6}}), 1.0 / std::log(2.0), 1e-12);
  const Aggregate a = aggregate_metric("weighted_perplexity", {}, {{-3, 2}}, 100000);
  EXPECT_FALSE(a.stderr_.has_value());
  EXPECT_FALSE(aggregate_metric("mean", {1, 0}, {}, 0).stderr_.has_value());  // bootstrap_iters 0: no stderr
  EXPECT_FALSE(aggregate_metric("mean", {1}, {}, 1000).stderr_.has_value());   // one document: N/A
}

TEST(EvalText, RequestsAsTheHarnessBuildsThem) {
  auto tok = make_byte_tokenizer();
  // Trailing whitespace of the context moves to the continuation.
  LLRequest r = encode_request(*tok, "ab  ", "c");
  EXPECT_EQ(r.context, (std::vector<int32_t>{'a', 'b'}));
  EXPECT_EQ(r.continuation, (std::vector<int32_t>{' ', ' ', 'c'}));
  // An empty context is the end-of-text token.
  r = encode_request(*tok, "", "xy");
  EXPECT_EQ(r.context, (std::vector<int32_t>{tok->eos_id()}));
  EXPECT_EQ(r.continuation, (std::vector<int32_t>{'x', 'y'}));
  // utils.get_rolling_token_windows(range(11), -1, 4, 1) + make_disjoint_window:
  // [([-1], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]), ([6, 7], [8, 9, 10])]
  std::vector<int32_t> t(11);
  for (int i = 0; i < 11; ++i) t[i] = i;
  const auto w = rolling_windows(t, -1, 4);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].context, (std::vector<int32_t>{-1}));
  EXPECT_EQ(w[0].continuation, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(w[1].context, (std::vector<int32_t>{3}));
  EXPECT_EQ(w[1].continuation, (std::vector<int32_t>{4, 5, 6, 7}));
  EXPECT_EQ(w[2].context, (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(w[2].continuation, (std::vector<int32_t>{8, 9, 10}));
  EXPECT_TRUE(rolling_windows({}, -1, 4).empty());
}
