// PLACEHOLDER: replaced by the real command.
#include <CLI/CLI.hpp>
#include "core/commands.h"
namespace bt {
void add_generate_command(CLI::App&) {}
}  // namespace bt
