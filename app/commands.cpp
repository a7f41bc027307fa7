// The command table (commands.h).
#include "app/commands.h"

#include <initializer_list>

#include "bench/commands.h"
#include "data/commands.h"
#include "infer/commands.h"
#include "train/commands.h"

namespace bt {

void add_commands(CLI::App& app) {
  for (void (*add)(CLI::App&) : {add_train_command, add_prepare_command, add_tokenize_command, add_generate_command,
                                 add_eval_command, add_bench_command, add_sweep_command})
    add(app);
}

}  // namespace bt
