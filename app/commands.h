// The command table of `bt`: its subcommands, in the order `bt --help` lists them (train,
// prepare, tokenize, generate, eval, bench). Each folder that owns a command defines its add_*
// function (declared in its commands.h), which adds a CLI11 subcommand with its options and
// callback. Callbacks report bad input by throwing bt::Error; main prints it as one line and
// exits 1.
#pragma once

namespace CLI {
class App;
}

namespace bt {
void add_commands(CLI::App& app);
}  // namespace bt
