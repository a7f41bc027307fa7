// `bt bench` (bench/cmd_bench.cpp), added to the executable by app/commands.cpp.
#pragma once

namespace CLI {
class App;
}

namespace bt {
void add_bench_command(CLI::App& app);
}  // namespace bt
