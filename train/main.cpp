// `bt`: the single executable. Subcommands are registered by their folders (core/commands.h).
#include <CLI/CLI.hpp>
#include <cstdio>

#include "core/commands.h"
#include "core/error.h"
#include "core/version.h"
#include "train/comm.h"

int main(int argc, char** argv) {
  CLI::App app{"blockformer: pretrain, evaluate and serve Block Transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("bt ") + bt::version() + " (git " + bt::git_commit() + ")\n" +
                                        bt::build_info());
  bt::add_train_command(app);
  bt::add_prepare_command(app);
  bt::add_tokenize_command(app);
  bt::add_generate_command(app);
  bt::add_eval_command(app);
  bt::add_bench_command(app);
  bt::add_sweep_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const bt::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    bt::abort_job_after_error();
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    bt::abort_job_after_error();
    return 1;
  }
  return 0;
}
