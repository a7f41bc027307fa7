// `bt prepare` (data/cmd_prepare.cpp) and `bt tokenize` (data/cmd_tokenize.cpp), added to the
// executable by app/commands.cpp.
#pragma once

namespace CLI {
class App;
}

namespace bt {
void add_prepare_command(CLI::App& app);
void add_tokenize_command(CLI::App& app);
}  // namespace bt
