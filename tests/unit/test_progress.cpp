// The one progress bar and the one set of count / duration formatters (core/progress.h,
// core/format.h) that prepare, import, eval and train share.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/format.h"
#include "core/progress.h"

namespace bt {
namespace {

TEST(Format, CountsWithSiPrefixes) {
  EXPECT_EQ(format_count(0), "0");
  EXPECT_EQ(format_count(999), "999");
  EXPECT_EQ(format_count(1234), "1.2k");
  EXPECT_EQ(format_count(999949), "999.9k");
  EXPECT_EQ(format_count(1.5e6), "1.50M");
  EXPECT_EQ(format_count(1.5e9), "1.50G");
  EXPECT_EQ(format_count(2e12), "2.00T");
  // A fraction (a rate) keeps a decimal instead of reading as 0.
  EXPECT_EQ(format_count(0.4), "0.4");
  EXPECT_EQ(format_count(312.04), "312.0");
}

TEST(Format, DurationsAsAClock) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(0.4), "0:00");
  EXPECT_EQ(format_duration(59.6), "1:00");
  EXPECT_EQ(format_duration(75), "1:15");
  EXPECT_EQ(format_duration(3599), "59:59");
  EXPECT_EQ(format_duration(3725), "1:02:05");
  EXPECT_EQ(format_duration(100 * 3600), "100:00:00");
  // An ETA that means nothing.
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::infinity()), "?");
  EXPECT_EQ(format_duration(1e9), "?");
}

TEST(Progress, LineShowsFractionCountRateAndEta) {
  ProgressBar bar("prepare", "tokens", 2000000, {.enabled = false, .done_before = 1000000});
  const std::string plain = bar.line(1500000, false);
  EXPECT_EQ(plain.rfind("prepare:  75.0% 1.50M/2.00M tokens, ", 0), 0u) << plain;
  EXPECT_NE(plain.find("tokens/s, ETA "), std::string::npos) << plain;
  const std::string tty = bar.line(2000000, true);
  EXPECT_NE(tty.find("prepare [####"), std::string::npos) << tty;
  EXPECT_NE(tty.find("100.0%"), std::string::npos) << tty;
  EXPECT_NE(tty.find("took "), std::string::npos) << tty;
  // Nothing done since the start (a resumed run at its first line): no rate, no ETA.
  EXPECT_NE(bar.line(1000000, false).find(" 0 tokens/s, ETA ?"), std::string::npos) << bar.line(1000000, false);
}

TEST(Progress, UnknownTotalShowsCountRateAndTime) {
  ProgressBar bar("prepare", "tokens", 0, {.enabled = false});
  const std::string l = bar.line(3400000, true, "1.2k docs, 5.60MB read");
  EXPECT_EQ(l.rfind("prepare: 3.40M tokens (1.2k docs, 5.60MB read), ", 0), 0u) << l;
  EXPECT_NE(l.find(" tokens/s, 0:0"), std::string::npos) << l;
  EXPECT_EQ(l.find('['), std::string::npos) << "no bar without a total: " << l;
  EXPECT_EQ(l.find('%'), std::string::npos) << l;
}

TEST(Progress, TotalCanGrow) {
  ProgressBar bar("piqa", "req", 0, {.enabled = false});
  bar.set_total(6);
  const std::string l = bar.line(3, true);
  EXPECT_NE(l.find("piqa ["), std::string::npos) << l;
  EXPECT_NE(l.find(" 50.0% 3/6 req, "), std::string::npos) << l;
  EXPECT_NE(l.find("req/s, ETA "), std::string::npos) << l;
}

}  // namespace
}  // namespace bt
