// `bt train --config FILE [section.key=value ...]`: load, validate, print or train.
#include <CLI/CLI.hpp>
#include <iostream>

#include "core/commands.h"
#include "core/log.h"
#include "model/config.h"
#include "train/comm.h"
#include "train/trainer.h"

namespace bt {

void add_train_command(CLI::App& app) {
  struct Args {
    std::string config;
    std::vector<std::string> overrides;
    bool print_config = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand("train", "train a Block Transformer or a vanilla model from a YAML config");
  cmd->add_option("-c,--config", args->config, "YAML config (configs/tiny/block_b4.yaml, configs/paper/...)")
      ->required();
  cmd->add_option("overrides", args->overrides, "overrides: section.key=value (e.g. train.steps=200)");
  cmd->add_flag("--print-config", args->print_config, "print the resolved config and exit");
  cmd->callback([args] {
    Config cfg = load_config(args->config, args->overrides);
    if (args->print_config) {
      std::cout << to_yaml(cfg);
      return;
    }
    auto comm = make_communicator(Device::cpu);
    Trainer trainer(cfg, *comm);
    trainer.run();
  });
}

}  // namespace bt
