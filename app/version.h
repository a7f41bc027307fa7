// What `bt --version` prints: the project version (CMakeLists.txt's project VERSION), the git
// commit the binary was built from, and how it was built. Defined in a source that
// cmake/bt_version.cmake writes at every build (linked into the bt executables only).
#pragma once

namespace bt {
const char* version();     // "0.1.0"
const char* git_commit();  // "3f11ecf1a2b3", "3f11ecf1a2b3-dirty" (uncommitted changes), or "unknown"
const char* build_info();  // "Release, GNU 12.2.0, CUDA 13.0 (sm 80 90), MPI, NCCL"
}  // namespace bt
