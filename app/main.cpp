// `bt`: the single executable. The subcommands come from the command table (app/commands.h).
#include <CLI/CLI.hpp>
#include <cstdio>

#include "app/commands.h"
#include "app/version.h"
#include "core/error.h"
#include "train/comm.h"

int main(int argc, char** argv) {
  CLI::App app{"blockformer: pretrain, evaluate and serve Block Transformers"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("bt ") + bt::version() + " (git " + bt::git_commit() + ")\n" +
                                        bt::build_info());
  bt::add_commands(app);
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
