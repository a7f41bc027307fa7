// `bt generate` (infer/cmd_generate.cpp) and `bt eval` (infer/cmd_eval.cpp), added to the
// executable by app/commands.cpp.
#pragma once

namespace CLI {
class App;
}

namespace bt {
void add_generate_command(CLI::App& app);
void add_eval_command(CLI::App& app);
}  // namespace bt
