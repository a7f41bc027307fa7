// The subcommands of `bt`. Each folder that owns a command defines its add_* function, which
// adds a CLI11 subcommand with its options and callback; train/main.cpp calls them all.
// Callbacks report bad input by throwing bt::Error; main prints it as one line and exits 1.
#pragma once

namespace CLI {
class App;
}

namespace bt {
void add_train_command(CLI::App& app);     // train/cmd_train.cpp
void add_prepare_command(CLI::App& app);   // data/cmd_prepare.cpp
void add_tokenize_command(CLI::App& app);  // data/cmd_tokenize.cpp
void add_generate_command(CLI::App& app);  // infer/cmd_generate.cpp
void add_eval_command(CLI::App& app);      // infer/cmd_eval.cpp
void add_bench_command(CLI::App& app);     // bench/cmd_bench.cpp
void add_sweep_command(CLI::App& app);     // train/cmd_sweep.cpp
}  // namespace bt
