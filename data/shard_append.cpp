// ShardAppender: a shard's datasets grown chunk by chunk (see shard_append.h).
#include "data/shard_append.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "core/error.h"
#include "data/h5.h"

namespace bt {
namespace fs = std::filesystem;
using h5::Handle;
using h5::last_error;

struct ShardAppender::H5 {
  Handle file, tokens, offsets;
};

namespace {
// /doc_offsets grows in smaller chunks: a shard of long documents has few of them.
constexpr uint64_t kOffsetChunk = uint64_t(1) << 16;

Handle create_growing(hid_t file, const char* name, hid_t file_type, hsize_t chunk_elems, const std::string& what) {
  hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED}, chunk[1] = {chunk_elems};
  Handle space(H5Screate_simple(1, dims, maxdims), H5Sclose);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  Handle dapl(H5Pcreate(H5P_DATASET_ACCESS), H5Pclose);
  // Whole chunks are written straight through: no chunk cache.
  BT_CHECK(space.valid() && dcpl.valid() && dapl.valid() && H5Pset_chunk(dcpl.get(), 1, chunk) >= 0 &&
               H5Pset_obj_track_times(dcpl.get(), false) >= 0 &&
               H5Pset_chunk_cache(dapl.get(), 0, 0, H5D_CHUNK_CACHE_W0_DEFAULT) >= 0,
           what, ": cannot set up /", name, " (", last_error(), ")");
  Handle ds(H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, dcpl.get(), dapl.get()), H5Dclose);
  BT_CHECK(ds.valid(), what, ": cannot create /", name, " (", last_error(), ")");
  return ds;
}

void append_to(hid_t ds, hid_t mem_type, uint64_t at, uint64_t n, const void* data, const char* name,
               const std::string& what) {
  hsize_t size[1] = {at + n}, off[1] = {at}, cnt[1] = {n};
  BT_CHECK(H5Dset_extent(ds, size) >= 0, what, ": cannot extend /", name, " (", last_error(), ")");
  Handle fspace(H5Dget_space(ds), H5Sclose);
  Handle mspace(H5Screate_simple(1, cnt, nullptr), H5Sclose);
  BT_CHECK(fspace.valid() && mspace.valid() &&
               H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, off, nullptr, cnt, nullptr) >= 0,
           what, ": cannot select /", name, " (", last_error(), ")");
  BT_CHECK(H5Dwrite(ds, mem_type, mspace.get(), fspace.get(), H5P_DEFAULT, data) >= 0, what,
           ": cannot write /", name, " (disk full?) (", last_error(), ")");
}
}  // namespace

ShardAppender::ShardAppender(std::string path, ShardMeta meta)
    : path_(std::move(path)), tmp_(path_ + ".tmp"), what_("shard '" + path_ + "'"), meta_(std::move(meta)),
      wide_(meta_.vocab_size > 65536), h5_(std::make_unique<H5>()) {
  BT_CHECK(meta_.vocab_size > 0 && meta_.vocab_size <= (int64_t(1) << 32) && meta_.eos_id >= 0 &&
               meta_.eos_id < meta_.vocab_size && !meta_.tokenizer.empty(),
           what_, ": invalid vocab_size ", meta_.vocab_size, " / eos_id ", meta_.eos_id, " / tokenizer");
  h5::init();
  std::lock_guard<std::mutex> lock(h5::mutex());
  try {
    h5_->file = Handle(H5Fcreate(tmp_.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    BT_CHECK(h5_->file.valid(), what_, ": cannot create '", tmp_, "' (", last_error(), ")");
    const hid_t f = h5_->file.get();
    h5::write_string_attr(f, "format", kShardFormat, what_);
    h5::write_int_attr(f, "version", kShardVersion, what_);
    h5::write_int_attr(f, "vocab_size", meta_.vocab_size, what_);
    h5::write_int_attr(f, "eos_id", meta_.eos_id, what_);
    h5::write_string_attr(f, "tokenizer", meta_.tokenizer, what_);
    h5_->tokens = create_growing(f, "tokens", wide_ ? H5T_STD_U32LE : H5T_STD_U16LE, kShardChunkElems, what_);
    h5_->offsets = create_growing(f, "doc_offsets", H5T_STD_U64LE, kOffsetChunk, what_);
  } catch (...) {
    h5_.reset();
    std::remove(tmp_.c_str());
    throw;
  }
}

ShardAppender::~ShardAppender() {
  if (finished_) return;
  {
    std::lock_guard<std::mutex> lock(h5::mutex());
    h5_.reset();
  }
  std::remove(tmp_.c_str());
}

template <class T>
T* ShardAppender::reserve(uint64_t n) {
  BT_CHECK(!finished_ && sizeof(T) == (wide_ ? 4u : 2u), what_, ": reserve of the wrong token width");
  if (buf_tokens_ >= kShardChunkElems) flush(false);
  reserved_ = n;
  const uint64_t need = (buf_tokens_ + n) * sizeof(T);
  if (need > cap_) {
    const uint64_t cap = std::max<uint64_t>(need, std::max<uint64_t>(2 * cap_, (kShardChunkElems + 4096) * sizeof(T)));
    auto nb = std::make_unique_for_overwrite<uint8_t[]>(cap);
    if (buf_tokens_ > 0) std::memcpy(nb.get(), buf_.get(), buf_tokens_ * sizeof(T));
    buf_ = std::move(nb);
    cap_ = cap;
  }
  return reinterpret_cast<T*>(buf_.get()) + buf_tokens_;
}
template uint16_t* ShardAppender::reserve<uint16_t>(uint64_t);
template uint32_t* ShardAppender::reserve<uint32_t>(uint64_t);

void ShardAppender::start_doc() {
  offsets_.push_back(tokens_);
  ++docs_;
  if (offsets_.size() >= kOffsetChunk) flush_offsets(false);
}

void ShardAppender::commit_tokens(uint64_t n) {
  BT_CHECK(n <= reserved_, what_, ": commit of more tokens than reserved");
  buf_tokens_ += n;
  tokens_ += n;
  reserved_ = 0;
}

void ShardAppender::commit_doc(uint64_t n) {
  start_doc();
  commit_tokens(n);
}

void ShardAppender::cancel() { reserved_ = 0; }

// Writes the whole chunks of the buffer (all of it with `all`) and keeps the rest.
void ShardAppender::flush(bool all) {
  const uint64_t n = all ? buf_tokens_ : buf_tokens_ / kShardChunkElems * kShardChunkElems;
  if (n == 0) return;
  const size_t w = wide_ ? 4 : 2;
  {
    std::lock_guard<std::mutex> lock(h5::mutex());
    append_to(h5_->tokens.get(), wide_ ? H5T_NATIVE_UINT32 : H5T_NATIVE_UINT16, written_tokens_, n, buf_.get(),
              "tokens", what_);
  }
  written_tokens_ += n;
  std::memmove(buf_.get(), buf_.get() + n * w, (buf_tokens_ - n) * w);
  buf_tokens_ -= n;
}

void ShardAppender::flush_offsets(bool all) {
  const uint64_t n = all ? offsets_.size() : offsets_.size() / kOffsetChunk * kOffsetChunk;
  if (n == 0) return;
  {
    std::lock_guard<std::mutex> lock(h5::mutex());
    append_to(h5_->offsets.get(), H5T_NATIVE_UINT64, written_offsets_, n, offsets_.data(), "doc_offsets", what_);
  }
  written_offsets_ += n;
  offsets_.erase(offsets_.begin(), offsets_.begin() + int64_t(n));
}

uint64_t ShardAppender::finish() {
  BT_CHECK(!finished_, what_, ": finish called twice");
  try {
    flush(true);
    flush_offsets(true);
    {
      std::lock_guard<std::mutex> lock(h5::mutex());
      BT_CHECK(h5_->tokens.reset() >= 0 && h5_->offsets.reset() >= 0 && h5_->file.reset() >= 0, what_,
               ": cannot close '", tmp_, "' (disk full?) (", last_error(), ")");
    }
    fsync_path(tmp_);
    BT_CHECK(std::rename(tmp_.c_str(), path_.c_str()) == 0, "cannot rename '", tmp_, "' to '", path_, "': ",
             std::strerror(errno));
    const fs::path dir = fs::path(path_).parent_path();
    fsync_path(dir.empty() ? "." : dir.string());
  } catch (...) {
    {
      std::lock_guard<std::mutex> lock(h5::mutex());
      h5_.reset();
    }
    std::remove(tmp_.c_str());
    finished_ = true;
    throw;
  }
  finished_ = true;
  buf_.reset();
  cap_ = 0;
  return uint64_t(fs::file_size(path_));
}

}  // namespace bt
