// `bt train` (train/cmd_train.cpp) and `bt sweep` (train/cmd_sweep.cpp), added to the executable by
// app/commands.cpp.
#pragma once

namespace CLI {
class App;
}

namespace bt {
void add_train_command(CLI::App& app);
void add_sweep_command(CLI::App& app);
}  // namespace bt
