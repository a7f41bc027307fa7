// HDF5 shard writer and reader (format in shard.h and docs/data.md).
#include "data/shard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "data/h5.h"

namespace bt {
namespace fs = std::filesystem;
using h5::Handle;
using h5::last_error;

// ---- small file helpers ------------------------------------------------------------------------

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  BT_CHECK(fd >= 0, "cannot open '", path, "' to fsync it: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some file systems refuse fsync on directories (EINVAL); the data itself is what matters.
  BT_CHECK(rc == 0 || err == EINVAL, "fsync of '", path, "' failed: ", std::strerror(err));
}

namespace {
std::string parent_dir(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

void rename_into_place(const std::string& tmp, const std::string& path) {
  fsync_path(tmp);
  BT_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename '", tmp, "' to '", path,
           "': ", std::strerror(errno));
  fsync_path(parent_dir(path));
}
}  // namespace

void write_file_atomic(const std::string& path, const std::string& contents) {
  const std::string tmp = path + ".tmp";
  FILE* f = std::fopen(tmp.c_str(), "wb");
  BT_CHECK(f, "cannot create '", tmp, "': ", std::strerror(errno));
  size_t wrote = std::fwrite(contents.data(), 1, contents.size(), f);
  bool ok = wrote == contents.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    BT_FAIL("cannot write '", tmp, "' (disk full?)");
  }
  rename_into_place(tmp, path);
}

// ---- writer ------------------------------------------------------------------------------------

namespace {
std::string shard_what(const std::string& path) { return "shard '" + path + "'"; }

template <class T>
void write_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type, const T* data,
                   uint64_t n, const std::string& what) {
  hsize_t dims[1] = {n};
  hsize_t maxdims[1] = {H5S_UNLIMITED};
  hsize_t chunk[1] = {std::max<hsize_t>(1, std::min<hsize_t>(n, kShardChunkElems))};
  Handle space(H5Screate_simple(1, dims, maxdims), H5Sclose);
  BT_CHECK(space.valid(), what, ": cannot create a dataspace for /", name, " (", last_error(), ")");
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  // No modification times in the object headers: the same input gives byte-identical shards,
  // so manifest checksums are reproducible.
  BT_CHECK(dcpl.valid() && H5Pset_chunk(dcpl.get(), 1, chunk) >= 0 &&
               H5Pset_obj_track_times(dcpl.get(), false) >= 0,
           what, ": cannot set the creation properties of /", name, " (", last_error(), ")");
  Handle ds(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
            H5Dclose);
  BT_CHECK(ds.valid(), what, ": cannot create /", name, " (", last_error(), ")");
  if (n > 0)
    BT_CHECK(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0, what,
             ": cannot write /", name, " (disk full?) (", last_error(), ")");
  BT_CHECK(ds.reset() >= 0, what, ": cannot close /", name, " (", last_error(), ")");
}

// Writes the file at `tmp` (not renamed). tok16 or tok32 holds the tokens.
void write_h5(const std::string& tmp, const std::string& what, const ShardMeta& meta,
              const uint16_t* tok16, const uint32_t* tok32, uint64_t ntok, const uint64_t* offsets,
              uint64_t ndocs) {
  h5::init();
  std::lock_guard<std::mutex> lock(h5::mutex());
  Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
  BT_CHECK(file.valid(), what, ": cannot create '", tmp, "' (", last_error(), ")");
  h5::write_string_attr(file.get(), "format", kShardFormat, what);
  h5::write_int_attr(file.get(), "version", kShardVersion, what);
  h5::write_int_attr(file.get(), "vocab_size", meta.vocab_size, what);
  h5::write_int_attr(file.get(), "eos_id", meta.eos_id, what);
  h5::write_string_attr(file.get(), "tokenizer", meta.tokenizer, what);
  if (tok16)
    write_dataset(file.get(), "tokens", H5T_STD_U16LE, H5T_NATIVE_UINT16, tok16, ntok, what);
  else
    write_dataset(file.get(), "tokens", H5T_STD_U32LE, H5T_NATIVE_UINT32, tok32, ntok, what);
  write_dataset(file.get(), "doc_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, offsets, ndocs, what);
  BT_CHECK(file.reset() >= 0, what, ": cannot close '", tmp, "' (disk full?) (", last_error(), ")");
}

void check_meta(const ShardMeta& meta, const std::string& what) {
  BT_CHECK(meta.vocab_size > 0 && meta.vocab_size <= (int64_t(1) << 32), what,
           ": invalid vocab_size ", meta.vocab_size);
  BT_CHECK(meta.eos_id >= 0 && meta.eos_id < meta.vocab_size, what, ": eos_id ", meta.eos_id,
           " outside the vocabulary of ", meta.vocab_size);
  BT_CHECK(!meta.tokenizer.empty(), what, ": empty tokenizer name");
}

// Writes tmp then renames; removes tmp on any failure.
void write_atomically(const std::string& path, const ShardMeta& meta, const uint16_t* tok16,
                      const uint32_t* tok32, uint64_t ntok, const uint64_t* offsets,
                      uint64_t ndocs) {
  const std::string what = shard_what(path);
  const std::string tmp = path + ".tmp";
  try {
    write_h5(tmp, what, meta, tok16, tok32, ntok, offsets, ndocs);
    rename_into_place(tmp, path);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}
}  // namespace

ShardWriter::ShardWriter(std::string path, ShardMeta meta)
    : path_(std::move(path)), meta_(std::move(meta)), wide_(meta_.vocab_size > 65536) {
  check_meta(meta_, shard_what(path_));
}

ShardWriter::~ShardWriter() = default;

void ShardWriter::add_document(const int32_t* ids, size_t n) {
  BT_CHECK(!finished_, shard_what(path_), ": add_document after finish");
  doc_offsets_.push_back(tokens());
  const int64_t v = meta_.vocab_size;
  for (size_t i = 0; i < n; ++i)
    BT_CHECK(ids[i] >= 0 && ids[i] < v, shard_what(path_), ": token id ", ids[i],
             " outside the vocabulary of ", v, " (tokenizer bug?)");
  if (wide_) {
    tok32_.insert(tok32_.end(), ids, ids + n);
    tok32_.push_back(uint32_t(meta_.eos_id));
  } else {
    size_t at = tok16_.size();
    tok16_.resize(at + n + 1);
    for (size_t i = 0; i < n; ++i) tok16_[at + i] = uint16_t(ids[i]);
    tok16_[at + n] = uint16_t(meta_.eos_id);
  }
}

void ShardWriter::finish() {
  BT_CHECK(!finished_, shard_what(path_), ": finish called twice");
  write_atomically(path_, meta_, wide_ ? nullptr : tok16_.data(), wide_ ? tok32_.data() : nullptr,
                   tokens(), doc_offsets_.data(), doc_offsets_.size());
  final_tokens_ = tokens();
  finished_ = true;
  std::vector<uint16_t>().swap(tok16_);
  std::vector<uint32_t>().swap(tok32_);
}

void write_shard(const std::string& path, const ShardMeta& meta, const std::vector<int32_t>& tokens,
                 const std::vector<uint64_t>& doc_offsets) {
  const std::string what = shard_what(path);
  check_meta(meta, what);
  BT_CHECK(tokens.empty() || tokens.back() == meta.eos_id, what, ": the last document does not end with EOS");
  for (int32_t t : tokens)
    BT_CHECK(t >= 0 && t < meta.vocab_size, what, ": token id ", t, " outside the vocabulary of ",
             meta.vocab_size);
  if (meta.vocab_size > 65536) {
    std::vector<uint32_t> t32(tokens.begin(), tokens.end());
    write_atomically(path, meta, nullptr, t32.data(), t32.size(), doc_offsets.data(), doc_offsets.size());
  } else {
    std::vector<uint16_t> t16(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) t16[i] = uint16_t(tokens[i]);
    write_atomically(path, meta, t16.data(), nullptr, t16.size(), doc_offsets.data(), doc_offsets.size());
  }
}

// ---- reader ------------------------------------------------------------------------------------

namespace {

struct OpenShard {
  ShardInfo info;
  Handle file, tokens, offsets;
  int fd = -1;       // HDF5's own descriptor of the file (sec2 driver), for fstat
  haddr_t eoa = 0;   // end of the space HDF5 allocated in the file: the file must stay at least this long
};

// HDF5 reads the part of a chunk that lies past the end of the file as zeros, and chunks that were
// never written as the fill value, without an error. So a shard that is truncated while it is
// open (or a copy still being written) would yield zeros: after every read, the file must still
// hold all the space HDF5 allocated when it was opened.
void check_intact(const OpenShard& s, const std::string& what) {
  if (s.fd < 0) return;
  struct stat st {};
  BT_CHECK(::fstat(s.fd, &st) == 0, what, ": cannot stat the open file (", std::strerror(errno), ")");
  BT_CHECK(uint64_t(st.st_size) >= uint64_t(s.eoa), what, ": the file shrank to ", st.st_size, " bytes while open (",
           s.eoa, " expected): it was truncated or is being rewritten; the tokens just read are not trusted");
}

// 1-D dataset `name`, its length; fails naming the shard when absent or not 1-D integer.
Handle open_1d(hid_t file, const char* name, uint64_t& len, const std::string& what) {
  htri_t exists = H5Lexists(file, name, H5P_DEFAULT);
  BT_CHECK(exists >= 0, what, ": cannot look up /", name, " (", last_error(), ")");
  BT_CHECK(exists > 0, what, ": no /", name, " dataset (not a shard written by `bt prepare`?)");
  Handle ds(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose);
  BT_CHECK(ds.valid(), what, ": cannot open /", name, " (truncated or damaged file?) (", last_error(), ")");
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  BT_CHECK(space.valid(), what, ": cannot read the shape of /", name, " (", last_error(), ")");
  int rank = H5Sget_simple_extent_ndims(space.get());
  BT_CHECK(rank == 1, what, ": /", name, " has ", rank, " dimensions, expected 1");
  hsize_t dims[1] = {0};
  BT_CHECK(H5Sget_simple_extent_dims(space.get(), dims, nullptr) >= 0, what,
           ": cannot read the shape of /", name, " (", last_error(), ")");
  len = dims[0];
  return ds;
}

// The largest HDF5 chunk a shard may use: HDF5 allocates a whole chunk to read any part of it,
// so a damaged layout claiming a huge chunk would make a small file allocate gigabytes. The
// writer uses kShardChunkElems x 4 bytes = 4 MiB.
constexpr uint64_t kMaxChunkBytes = uint64_t(64) << 20;

// Checks that the n elements of 1-D dataset `name` (elements of elem_bytes in the file) are
// stored in the file itself, so that no read returns fill values (zeros) for missing data:
// contiguous, chunked or compact layout, no external files; contiguous storage of at least
// n x elem_bytes bytes; for chunks, a sane chunk size and every chunk of the extent allocated
// (an interrupted or foreign writer leaves chunks unwritten). H5Dget_space_status cannot say
// this: it compares byte counts, so a partial last chunk or compression reads as "partly
// allocated".
void check_storage(hid_t ds, uint64_t n, size_t elem_bytes, const char* name, const std::string& what) {
  Handle dcpl(H5Dget_create_plist(ds), H5Pclose);
  BT_CHECK(dcpl.valid(), what, ": cannot read the storage properties of /", name, " (", last_error(), ")");
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  BT_CHECK(layout == H5D_CONTIGUOUS || layout == H5D_CHUNKED || layout == H5D_COMPACT, what, ": /", name,
           " has an unsupported storage layout (", int(layout), "); shards keep their data in the file itself");
  BT_CHECK(H5Pget_external_count(dcpl.get()) == 0, what, ": /", name,
           " keeps its data in external files; shards must hold their own data");
  if (layout == H5D_CONTIGUOUS && n > 0) {
    const uint64_t stored = H5Dget_storage_size(ds);
    BT_CHECK(stored / elem_bytes >= n, what, ": /", name, " has ", n, " elements of ", elem_bytes,
             " bytes but only ", stored, " bytes are stored in the file (truncated or damaged shard)");
  } else if (layout == H5D_CHUNKED) {
    hsize_t chunk[1] = {0};
    BT_CHECK(H5Pget_chunk(dcpl.get(), 1, chunk) == 1 && chunk[0] > 0, what, ": /", name,
             " has a damaged chunk layout (", last_error(), ")");
    BT_CHECK(chunk[0] <= kMaxChunkBytes / elem_bytes, what, ": /", name, " uses chunks of ", chunk[0],
             " elements (", chunk[0] * elem_bytes, " bytes); the largest supported is ", kMaxChunkBytes,
             " bytes (damaged file?)");
    hsize_t allocated = 0;
    Handle space(H5Dget_space(ds), H5Sclose);  // all of the extent selected
    BT_CHECK(space.valid() && H5Dget_num_chunks(ds, space.get(), &allocated) >= 0, what, ": cannot read the chunk index of /", name,
             " (truncated or damaged shard) (", last_error(), ")");
    const uint64_t needed = n / chunk[0] + (n % chunk[0] != 0);
    BT_CHECK(allocated >= needed, what, ": /", name, " has ", n, " elements but only ", allocated, " of its ",
             needed, " chunks are stored in the file (truncated or damaged shard)");
  }
}

OpenShard open_shard(const std::string& path) {
  h5::init();
  const std::string what = shard_what(path);
  OpenShard s;
  s.info.path = path;
  struct stat st;
  BT_CHECK(::stat(path.c_str(), &st) == 0, what, ": no such file");
  BT_CHECK(S_ISREG(st.st_mode), what, ": not a regular file");
  htri_t is_h5 = H5Fis_hdf5(path.c_str());
  if (is_h5 < 0) {
    std::string err = last_error();
    BT_FAIL(what, ": cannot read the file (", err.empty() ? std::strerror(errno) : err, ")");
  }
  BT_CHECK(is_h5 > 0, what, ": not an HDF5 file (", st.st_size,
           " bytes without an HDF5 signature; truncated before its header, or not a shard)");
  s.file = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (!s.file.valid()) {
    std::string err = last_error();
    BT_FAIL(what, ": cannot open, the file is truncated or damaged (HDF5: ", err, ")");
  }
  ShardInfo& in = s.info;
  std::string format;
  BT_CHECK(h5::read_string_attr(s.file.get(), "format", format, what), what,
           ": no 'format' attribute (not a shard written by `bt prepare`)");
  BT_CHECK(format == kShardFormat, what, ": format attribute is '", format, "', expected '",
           kShardFormat, "'");
  int64_t version = 0;
  BT_CHECK(h5::read_int_attr(s.file.get(), "version", version, what), what, ": no 'version' attribute");
  BT_CHECK(version == kShardVersion, what, ": format version ", version,
           " is not supported (this build reads version ", kShardVersion, ")");
  BT_CHECK(h5::read_int_attr(s.file.get(), "vocab_size", in.vocab_size, what), what,
           ": no 'vocab_size' attribute");
  BT_CHECK(h5::read_int_attr(s.file.get(), "eos_id", in.eos_id, what), what, ": no 'eos_id' attribute");
  BT_CHECK(h5::read_string_attr(s.file.get(), "tokenizer", in.tokenizer, what), what,
           ": no 'tokenizer' attribute");
  BT_CHECK(in.vocab_size > 0 && in.vocab_size <= (int64_t(1) << 31), what, ": invalid vocab_size ",
           in.vocab_size);
  BT_CHECK(in.eos_id >= 0 && in.eos_id < in.vocab_size, what, ": eos_id ", in.eos_id,
           " outside the vocabulary of ", in.vocab_size);

  s.tokens = open_1d(s.file.get(), "tokens", in.tokens, what);
  Handle ttype(H5Dget_type(s.tokens.get()), H5Tclose);
  BT_CHECK(ttype.valid(), what, ": cannot read the type of /tokens (", last_error(), ")");
  const size_t tsize = H5Tget_size(ttype.get());
  BT_CHECK(H5Tget_class(ttype.get()) == H5T_INTEGER && H5Tget_sign(ttype.get()) == H5T_SGN_NONE &&
               (tsize == 2 || tsize == 4),
           what, ": /tokens must hold uint16 or uint32 values");
  in.token_bytes = int(tsize);
  BT_CHECK(tsize == 4 || in.vocab_size <= 65536, what, ": /tokens is uint16 but vocab_size is ",
           in.vocab_size);
  s.offsets = open_1d(s.file.get(), "doc_offsets", in.documents, what);
  {
    // With the sec2 (POSIX) driver, HDF5's handle is a pointer to its file descriptor.
    Handle fapl(H5Fget_access_plist(s.file.get()), H5Pclose);
    void* handle = nullptr;
    if (fapl.valid() && H5Pget_driver(fapl.get()) == H5FD_SEC2 &&
        H5Fget_vfd_handle(s.file.get(), H5P_DEFAULT, &handle) >= 0 && handle && H5Fget_eoa(s.file.get(), &s.eoa) >= 0)
      s.fd = *static_cast<int*>(handle);
    else
      last_error();  // another driver: no size check
  }
  Handle otype(H5Dget_type(s.offsets.get()), H5Tclose);
  const size_t osize = otype.valid() ? H5Tget_size(otype.get()) : 0;
  BT_CHECK(otype.valid() && H5Tget_class(otype.get()) == H5T_INTEGER && osize >= 1 && osize <= 8, what,
           ": /doc_offsets must hold integers of at most 64 bits");
  BT_CHECK((in.tokens == 0) == (in.documents == 0), what, ": ", in.tokens, " tokens but ",
           in.documents, " documents");
  BT_CHECK(in.documents <= in.tokens, what, ": more documents (", in.documents, ") than tokens (",
           in.tokens, ")");
  check_storage(s.tokens.get(), in.tokens, tsize, "tokens", what);
  check_storage(s.offsets.get(), in.documents, osize, "doc_offsets", what);
  return s;
}

// Reads elements [start, start + n) of a 1-D dataset into `out` as `mem_type`.
void read_range(hid_t ds, hid_t mem_type, uint64_t start, uint64_t n, void* out, const char* name,
                const std::string& what) {
  Handle fspace(H5Dget_space(ds), H5Sclose);
  hsize_t off[1] = {start}, cnt[1] = {n};
  BT_CHECK(fspace.valid() &&
               H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr) >= 0,
           what, ": cannot select a range of /", name, " (", last_error(), ")");
  Handle mspace(H5Screate_simple(1, cnt, nullptr), H5Sclose);
  BT_CHECK(mspace.valid(), what, ": H5Screate_simple failed (", last_error(), ")");
  if (H5Dread(ds, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, out) < 0) {
    std::string err = last_error();
    BT_FAIL(what, ": cannot read /", name, " at elements ", start, "..", start + n,
            ", the file is truncated or damaged (HDF5: ", err, ")");
  }
}

template <class T>
void read_tokens_as(const OpenShard& s, hid_t mem_type, int32_t* out, const std::string& what) {
  const uint64_t n = s.info.tokens;
  const uint64_t step = 4 * kShardChunkElems;
  std::vector<T> buf(std::min<uint64_t>(n, step));
  const uint64_t vocab = uint64_t(s.info.vocab_size);
  for (uint64_t at = 0; at < n; at += step) {
    const uint64_t cnt = std::min(step, n - at);
    read_range(s.tokens.get(), mem_type, at, cnt, buf.data(), "tokens", what);
    check_intact(s, what);
    T maxv = 0;
    for (uint64_t i = 0; i < cnt; ++i) {
      maxv = std::max(maxv, buf[i]);
      out[at + i] = int32_t(buf[i]);
    }
    if (uint64_t(maxv) >= vocab) {
      uint64_t i = 0;
      while (uint64_t(buf[i]) < vocab) ++i;
      BT_FAIL(what, ": token id ", uint64_t(buf[i]), " at position ", at + i, " >= vocab_size ",
              vocab, " (corrupt shard or wrong vocab_size attribute)");
    }
  }
}
}  // namespace

ShardInfo read_shard_info(const std::string& path) {
  std::lock_guard<std::mutex> lock(h5::mutex());
  return open_shard(path).info;
}

ShardInfo read_shard(const std::string& path, std::vector<int32_t>& tokens,
                     std::vector<uint64_t>& doc_offsets) {
  std::lock_guard<std::mutex> lock(h5::mutex());
  OpenShard s = open_shard(path);
  const std::string what = shard_what(path);
  const ShardInfo& in = s.info;
  const uint64_t base = tokens.size();
  const size_t base_docs = doc_offsets.size();
  try {
    tokens.resize(base + in.tokens);
    if (in.token_bytes == 2)
      read_tokens_as<uint16_t>(s, H5T_NATIVE_UINT16, tokens.data() + base, what);
    else
      read_tokens_as<uint32_t>(s, H5T_NATIVE_UINT32, tokens.data() + base, what);
    doc_offsets.resize(base_docs + in.documents);
    uint64_t* offs = doc_offsets.data() + base_docs;
    if (in.documents > 0)
      read_range(s.offsets.get(), H5T_NATIVE_UINT64, 0, in.documents, offs, "doc_offsets", what);
    check_intact(s, what);
    const int32_t* tok = tokens.data() + base;
    uint64_t prev = 0;
    for (uint64_t d = 0; d < in.documents; ++d) {
      const uint64_t o = offs[d];
      if (d == 0)
        BT_CHECK(o == 0, what, ": /doc_offsets[0] is ", o, ", expected 0");
      else
        BT_CHECK(o > prev && o < in.tokens, what, ": /doc_offsets[", d, "] = ", o,
                 " is not increasing or is past the end (", in.tokens, " tokens)");
      prev = o;
      if (d > 0)
        BT_CHECK(tok[o - 1] == in.eos_id, what, ": document ", d - 1,
                 " does not end with EOS (id ", in.eos_id, ")");
      offs[d] = o + base;
    }
    if (in.tokens > 0)
      BT_CHECK(tok[in.tokens - 1] == in.eos_id, what, ": the last document does not end with EOS (id ",
               in.eos_id, ")");
  } catch (...) {
    tokens.resize(base);
    doc_offsets.resize(base_docs);
    throw;
  }
  return in;
}

// ---- ShardFile ---------------------------------------------------------------------------------

struct ShardFile::Impl {
  OpenShard s;
  std::string what;
  Handle fspace;                // /tokens' dataspace, reused for every selection
  std::vector<uint16_t> buf16;  // conversion buffers
  std::vector<uint32_t> buf32;
};

ShardFile::ShardFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  std::lock_guard<std::mutex> lock(h5::mutex());
  try {
    impl_->s = open_shard(path);
    impl_->what = shard_what(path);
    impl_->fspace = Handle(H5Dget_space(impl_->s.tokens.get()), H5Sclose);
    BT_CHECK(impl_->fspace.valid(), impl_->what, ": cannot read the shape of /tokens (", last_error(), ")");
  } catch (...) {
    impl_.reset();  // close the handles under the lock
    throw;
  }
}

ShardFile::~ShardFile() {
  std::lock_guard<std::mutex> lock(h5::mutex());
  impl_.reset();
}

const ShardInfo& ShardFile::info() const { return impl_->s.info; }

namespace {
template <class T>
void read_converted(hid_t ds, hid_t fspace, hid_t mem_type, uint64_t start, uint64_t n,
                    std::vector<T>& buf, int32_t* out, uint64_t vocab, const std::string& what) {
  if (buf.size() < n) buf.resize(n);
  hsize_t off[1] = {start}, cnt[1] = {n};
  BT_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, off, nullptr, cnt, nullptr) >= 0, what,
           ": cannot select a range of /tokens (", last_error(), ")");
  Handle mspace(H5Screate_simple(1, cnt, nullptr), H5Sclose);
  BT_CHECK(mspace.valid(), what, ": H5Screate_simple failed (", last_error(), ")");
  if (H5Dread(ds, mem_type, mspace.get(), fspace, H5P_DEFAULT, buf.data()) < 0) {
    std::string err = last_error();
    BT_FAIL(what, ": cannot read /tokens at elements ", start, "..", start + n,
            ", the file is truncated or damaged (HDF5: ", err, ")");
  }
  T maxv = 0;
  for (uint64_t i = 0; i < n; ++i) {
    maxv = std::max(maxv, buf[i]);
    out[i] = int32_t(buf[i]);
  }
  if (uint64_t(maxv) >= vocab) {
    uint64_t i = 0;
    while (uint64_t(buf[i]) < vocab) ++i;
    BT_FAIL(what, ": token id ", uint64_t(buf[i]), " at position ", start + i, " >= vocab_size ",
            vocab, " (corrupt shard or wrong vocab_size attribute)");
  }
}
}  // namespace

void ShardFile::read_tokens(uint64_t start, uint64_t n, int32_t* out) {
  std::lock_guard<std::mutex> lock(h5::mutex());
  Impl& d = *impl_;
  const ShardInfo& in = d.s.info;
  BT_CHECK(start <= in.tokens && n <= in.tokens - start, d.what, ": read of tokens ", start, "..",
           start + n, " past the end (", in.tokens, " tokens)");
  if (n == 0) return;
  if (in.token_bytes == 2)
    read_converted(d.s.tokens.get(), d.fspace.get(), H5T_NATIVE_UINT16, start, n, d.buf16, out,
                   uint64_t(in.vocab_size), d.what);
  else
    read_converted(d.s.tokens.get(), d.fspace.get(), H5T_NATIVE_UINT32, start, n, d.buf32, out,
                   uint64_t(in.vocab_size), d.what);
  check_intact(d.s, d.what);
}

std::vector<uint64_t> ShardFile::read_doc_offsets() {
  std::lock_guard<std::mutex> lock(h5::mutex());
  Impl& d = *impl_;
  const ShardInfo& in = d.s.info;
  std::vector<uint64_t> offs(in.documents);
  if (in.documents > 0)
    read_range(d.s.offsets.get(), H5T_NATIVE_UINT64, 0, in.documents, offs.data(), "doc_offsets", d.what);
  check_intact(d.s, d.what);
  for (uint64_t i = 0; i < in.documents; ++i) {
    if (i == 0)
      BT_CHECK(offs[0] == 0, d.what, ": /doc_offsets[0] is ", offs[0], ", expected 0");
    else
      BT_CHECK(offs[i] > offs[i - 1] && offs[i] < in.tokens, d.what, ": /doc_offsets[", i, "] = ",
               offs[i], " is not increasing or is past the end (", in.tokens, " tokens)");
  }
  return offs;
}

void check_shard_fits(const ShardInfo& a, const ShardInfo& in, int model_vocab_size) {
  BT_CHECK(in.tokenizer == a.tokenizer, "mixed tokenizers: shard '", a.path, "' was made with ", a.tokenizer, " but '",
           in.path, "' with ", in.tokenizer, "; train on shards of one tokenizer");
  BT_CHECK(in.vocab_size == a.vocab_size && in.eos_id == a.eos_id, "shards '", a.path, "' and '", in.path,
           "' disagree on vocab_size/eos_id (", a.vocab_size, "/", a.eos_id, " vs ", in.vocab_size, "/", in.eos_id,
           ")");
  if (model_vocab_size > 0)
    BT_CHECK(in.vocab_size <= model_vocab_size, "shard '", in.path, "': tokenizer ", in.tokenizer, " has vocab_size ",
             in.vocab_size, " > model.vocab_size ", model_vocab_size,
             "; raise model.vocab_size or prepare the data with a smaller tokenizer");
}

}  // namespace bt

