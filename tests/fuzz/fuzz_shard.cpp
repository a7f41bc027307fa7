// libFuzzer target: the HDF5 token shard reader (data/shard.cpp): read_shard_info, read_shard
// and the lazy loader's ShardFile. Input: the .h5 file. Beyond the common oracle
// (fuzz_common.h): what the reader accepts must satisfy the shard invariants (ids below
// vocab_size, document starts increasing from 0, every document ending with EOS), the two
// readers must agree, and no HDF5 object may stay open afterwards (a leaked id keeps the file
// open and, at exit, crashes HDF5's shutdown).
#include <hdf5.h>

#include <sanitizer/common_interface_defs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "data/shard.h"
#include "fuzz_common.h"

// Debian's HDF5 1.10.8 leaks a metadata cache entry (56 bytes) when H5Fopen fails on some
// damaged object headers (H5F_open -> H5G_mkroot -> H5O_msg_exists -> H5C_protect): a bug
// inside the library, bounded per failed open, that the reader cannot avoid. Leaks allocated
// in libhdf5 itself are therefore not findings; the open-object count below still catches an
// HDF5 id that our code leaves open.
extern "C" const char* __lsan_default_suppressions() { return "leak:libhdf5_serial.so\n"; }
// A damaged file can make HDF5 ask malloc for what its headers claim: exabytes for an object
// header, up to 4 GiB for a variable-length string attribute (which it then touches: 2.3 GB of
// RSS for a 12 kB file). malloc here returns NULL above 256 MiB (max_allocation_size_mb), HDF5
// reports "memory allocation failed" and the reader passes that on, so fuzzing can go on; a C++
// `new` above the limit (our code) still aborts as a finding. hdf5.supp: the memory errors HDF5
// itself makes on damaged files, which ASan's memcpy interceptor sees from inside the library.
// quarantine_size_mb=16 (default 256): a smaller process to fork for every input (below), 1.7x
// the executions per second.
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1:max_allocation_size_mb=256:quarantine_size_mb=16:suppressions=" BT_FUZZ_DIR
         "/hdf5.supp";
}

namespace {
// Debian's HDF5 1.10.8 loops forever (H5HG__cache_heap_deserialize) on a global heap collection
// ("GCOL", where variable-length strings such as the shard's attributes live) holding a
// free-space object (index 0) of size 0: the walk over the collection's objects stops
// advancing. Fixed upstream after 1.10; nothing the reader can do short of parsing HDF5 itself
// (docs/testing.md). Inputs with such a collection are skipped, as the hang is known and would
// otherwise stop every run; the same walk as HDF5's finds them.
bool has_stuck_global_heap(const uint8_t* data, size_t size) {
  auto u16 = [&](size_t at) { return uint16_t(data[at] | data[at + 1] << 8); };
  auto u64 = [&](size_t at) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i) v = v << 8 | data[at + i];
    return v;
  };
  for (size_t at = 0; at + 16 <= size; ++at) {
    if (std::memcmp(data + at, "GCOL", 4) != 0 || data[at + 4] != 1) continue;
    const uint64_t end = std::min<uint64_t>(size - at, u64(at + 8));  // the collection's size
    for (uint64_t p = 16; p < end;) {
      if (p + 16 > end) break;  // a tail too small for an object header: free space
      const uint64_t idx = u16(at + p), obj = u64(at + p + 8);
      const uint64_t need = idx > 0 ? 16 + ((obj + 7) & ~uint64_t(7)) : obj;
      if (need == 0) return true;
      if (need >= end - p) break;
      p += need;
    }
  }
  return false;
}

// Debian's HDF5 1.10.8 also crashes outright on some damaged files, e.g. a segfault in H5HG_read
// when a variable-length string attribute points at a global heap object that is not there.
// Such a crash takes `bt` down too, and only an HDF5 with the fix can prevent it (docs/testing.md).
// So that fuzzing can get past them, every input first runs in a forked child: when the child
// dies with a sanitizer report whose first frame outside the sanitizer runtime and libc lies in
// libhdf5, the input is skipped (and counted); any other death is reproduced here, as a finding.
// The child's memory is a copy of this process's, so HDF5 reads the same garbage in both.
int g_hdf5_crashes = 0;

bool crashes_inside_hdf5(const std::function<void()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) bt::fuzz::fail("pipe failed");
  const pid_t pid = ::fork();
  if (pid < 0) bt::fuzz::fail("fork failed");
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], 2);                        // the child's reports go to the parent
    __sanitizer_set_death_callback(nullptr);  // and libFuzzer does not save its input as a crash
    // A hang here outlives libFuzzer's -timeout in the parent, which reports it; this alarm only
    // makes sure that the child does not run on after that.
    std::signal(SIGALRM, SIG_DFL);
    ::alarm(30);
    body();
    ::_exit(0);  // no leak check, no atexit handlers
  }
  ::close(fds[1]);
  std::string report;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    report.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return false;
  // "    #0 0x7f.. in H5HG_read (/lib/x86_64-linux-gnu/libhdf5_serial.so.103+0x167b56)"
  std::istringstream lines(report);
  for (std::string line; std::getline(lines, line);) {
    const size_t hash = line.find_first_not_of(' ');
    if (hash == std::string::npos || line.compare(hash, 1, "#") != 0 || line.find(" in ") == std::string::npos) continue;
    // Frames of the sanitizer runtime and of libc (memcpy as HDF5 called it) come first.
    static const char* const runtime[] = {" in __interceptor_", " in __asan", " in __sanitizer", " in malloc ",
                                          " in calloc ", " in realloc ", " in free ", " in operator new",
                                          " in __lsan", " in __ubsan", "sysdeps/", "/libc.so"};
    if (std::any_of(std::begin(runtime), std::end(runtime),
                    [&](const char* r) { return line.find(r) != std::string::npos; }))
      continue;
    return line.find("libhdf5") != std::string::npos;
  }
  return false;
}

void check_no_open_hdf5_objects() {
  const ssize_t open = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
  if (open != 0) bt::fuzz::fail("HDF5 objects left open: " + std::to_string(open));
}
}  // namespace

void run_readers(const std::string& path);

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (has_stuck_global_heap(data, size)) return -1;  // a known HDF5 hang: not added to the corpus
  const std::string path = bt::fuzz::scratch_file("fuzz.h5", data, size);
  if (crashes_inside_hdf5([&] { run_readers(path); })) {
    if (g_hdf5_crashes++ == 0)
      std::atexit([] { std::fprintf(stderr, "fuzz_shard: %d inputs skipped, HDF5 crashed on them\n", g_hdf5_crashes); });
    return -1;
  }
  run_readers(path);
  return 0;
}

void run_readers(const std::string& path) {
  using bt::fuzz::fail;

  bt::ShardInfo info;
  const bool has_info = bt::fuzz::accepts([&] { info = bt::read_shard_info(path); });
  check_no_open_hdf5_objects();
  if (!has_info) return;

  std::vector<int32_t> tokens = {7};  // appended to: the reader shifts offsets by what is there
  std::vector<uint64_t> offsets = {0};
  const bool whole = bt::fuzz::accepts([&] { bt::read_shard(path, tokens, offsets); });
  check_no_open_hdf5_objects();
  if (whole) {
    if (tokens.size() != 1 + info.tokens || offsets.size() != 1 + info.documents)
      fail("read_shard sizes differ from read_shard_info");
    for (size_t i = 1; i < tokens.size(); ++i)
      if (tokens[i] < 0 || tokens[i] >= info.vocab_size) fail("read_shard accepted an id outside the vocabulary");
    if (info.tokens > 0 && (offsets[1] != 1 || tokens.back() != info.eos_id)) fail("read_shard: bad first document");
    for (size_t d = 2; d < offsets.size(); ++d)
      if (offsets[d] <= offsets[d - 1] || offsets[d] >= tokens.size() || tokens[offsets[d] - 1] != info.eos_id)
        fail("read_shard accepted bad document offsets");
  } else if (tokens.size() != 1 || offsets.size() != 1) {
    fail("a failed read_shard changed its output vectors");
  }

  bt::fuzz::accepts([&] {
    bt::ShardFile f(path);
    const uint64_t n = f.info().tokens;
    const bool offs_ok = bt::fuzz::accepts([&] {
      std::vector<uint64_t> o = f.read_doc_offsets();
      if (whole && o.size() != info.documents) fail("ShardFile and read_shard disagree on documents");
    });
    std::vector<int32_t> buf(std::min<uint64_t>(n, 4096));
    const bool head_ok = bt::fuzz::accepts([&] {
      f.read_tokens(0, buf.size(), buf.data());
      for (int32_t t : buf)
        if (t < 0 || t >= info.vocab_size) fail("ShardFile::read_tokens returned an id outside the vocabulary");
      if (whole && !std::equal(buf.begin(), buf.end(), tokens.begin() + 1))
        fail("ShardFile::read_tokens and read_shard disagree");
    });
    if (whole && !(offs_ok && head_ok)) fail("read_shard accepted a shard ShardFile rejects");
    if (bt::fuzz::accepts([&] { f.read_tokens(n, 1, buf.data()); })) fail("a read past the end was accepted");
  });
  check_no_open_hdf5_objects();
}
