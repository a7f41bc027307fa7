// libFuzzer target: the experiment config (model/config.cpp), YAML text and `section.key=value`
// overrides. Input: the YAML text, then optionally a NUL byte and NUL-separated overrides.
// Beyond the common oracle (fuzz_common.h): a config that loads must survive its own
// round trip, parse_config(to_yaml(c)) == c, as `--print-config` and checkpoints rely on it.
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t nul = in.find('\0');
  const std::string yaml = in.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string::npos)
    for (size_t at = nul + 1; at <= in.size();) {
      size_t end = in.find('\0', at);
      if (end == std::string::npos) end = in.size();
      overrides.push_back(in.substr(at, end - at));
      at = end + 1;
    }

  bt::Config c;
  if (!bt::fuzz::accepts([&] { c = bt::parse_config(yaml, "fuzz.yaml", overrides); })) return 0;
  const std::string text = bt::to_yaml(c);
  bt::Config back;
  try {
    back = bt::parse_config(text, "fuzz.yaml");
  } catch (const std::exception& e) {
    bt::fuzz::fail("to_yaml output does not load back (" + std::string(e.what()) + "):\n" + text);
  }
  if (!(back == c)) bt::fuzz::fail("to_yaml output loads back as another config:\n" + text + "\nvs\n" + bt::to_yaml(back));
  if (bt::config_hash(back) != bt::config_hash(c)) bt::fuzz::fail("config_hash differs after the round trip");
  try {
    bt::validate(c);
  } catch (const std::exception& e) {
    bt::fuzz::fail("a loaded config fails validate(): " + std::string(e.what()));
  }
  return 0;
}
