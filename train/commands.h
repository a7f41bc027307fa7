// `bt train` (train/cmd_train.cpp), added to the executable by app/commands.cpp.
#pragma once

namespace CLI {
class App;
}

namespace bt {
void add_train_command(CLI::App& app);
}  // namespace bt
