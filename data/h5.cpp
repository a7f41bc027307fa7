// HDF5 helpers: error-stack capture and scalar attributes.
#include "data/h5.h"

#include <mutex>
#include <vector>

#include "core/error.h"

namespace bt::h5 {

void init() {
  static std::once_flag once;
  std::call_once(once, [] {
    // No library shutdown at exit: after a failed H5Fclose (a flush on a full disk) HDF5 keeps a
    // half-closed file id, and its atexit handler crashes on it (exit 139 after our error message).
    // Every file we write is closed explicitly; the process's exit releases the rest.
    H5dont_atexit();
    BT_CHECK(H5open() >= 0, "cannot initialize the HDF5 library");
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  });
}

std::mutex& mutex() {
  static std::mutex m;
  return m;
}

namespace {
herr_t walk_cb(unsigned n, const H5E_error2_t* err, void* client) {
  auto* out = static_cast<std::string*>(client);
  if (err && err->desc && err->desc[0]) *out = err->desc;  // downward walk: last = innermost
  return 0;
}
}  // namespace

std::string last_error() {
  std::string msg;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, walk_cb, &msg);
  H5Eclear2(H5E_DEFAULT);
  for (char& c : msg)
    if (c == '\n' || c == '\r') c = ' ';
  // The sec2 driver's I/O errors carry a long record ("file write failed: time = ..., filename =
  // ..., errno = 28, error message = 'No space left on device', buf = ..."): keep what matters.
  const size_t em = msg.find("error message = '");
  if (em != std::string::npos) {
    const size_t b = em + 17, e = msg.find('\'', b);
    const size_t colon = msg.find(':');
    if (e != std::string::npos && colon != std::string::npos && colon < em)
      msg = msg.substr(0, colon) + ": " + msg.substr(b, e - b);
  }
  return msg;
}

void write_string_attr(hid_t obj, const char* name, const std::string& value, const std::string& what) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  BT_CHECK(type.valid() && H5Tset_size(type.get(), H5T_VARIABLE) >= 0 &&
               H5Tset_cset(type.get(), H5T_CSET_UTF8) >= 0,
           what, ": cannot make a string type (", last_error(), ")");
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  BT_CHECK(space.valid(), what, ": H5Screate failed (", last_error(), ")");
  Handle attr(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  BT_CHECK(attr.valid(), what, ": cannot create attribute ", name, " (", last_error(), ")");
  const char* p = value.c_str();
  BT_CHECK(H5Awrite(attr.get(), type.get(), &p) >= 0, what, ": cannot write attribute ", name, " (",
           last_error(), ")");
}

void write_int_attr(hid_t obj, const char* name, int64_t value, const std::string& what) {
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  BT_CHECK(space.valid(), what, ": H5Screate failed (", last_error(), ")");
  Handle attr(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  BT_CHECK(attr.valid(), what, ": cannot create attribute ", name, " (", last_error(), ")");
  BT_CHECK(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value) >= 0, what, ": cannot write attribute ",
           name, " (", last_error(), ")");
}

namespace {
// Opens attribute `name` if present and scalar (or a 1-element array, as some writers make).
bool open_attr(hid_t obj, const char* name, Handle& attr, const std::string& what) {
  htri_t exists = H5Aexists(obj, name);
  BT_CHECK(exists >= 0, what, ": cannot look up attribute ", name, " (", last_error(), ")");
  if (exists == 0) return false;
  attr = Handle(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  BT_CHECK(attr.valid(), what, ": cannot open attribute ", name, " (", last_error(), ")");
  Handle space(H5Aget_space(attr.get()), H5Sclose);
  BT_CHECK(space.valid(), what, ": cannot read attribute ", name, " (", last_error(), ")");
  hssize_t npoints = H5Sget_simple_extent_npoints(space.get());
  BT_CHECK(npoints == 1, what, ": attribute ", name, " has ", npoints, " elements, expected one");
  return true;
}
}  // namespace

bool read_string_attr(hid_t obj, const char* name, std::string& value, const std::string& what) {
  Handle attr;
  if (!open_attr(obj, name, attr, what)) return false;
  Handle ftype(H5Aget_type(attr.get()), H5Tclose);
  BT_CHECK(ftype.valid(), what, ": cannot read the type of attribute ", name, " (", last_error(), ")");
  BT_CHECK(H5Tget_class(ftype.get()) == H5T_STRING, what, ": attribute ", name, " is not a string");
  htri_t is_var = H5Tis_variable_str(ftype.get());
  BT_CHECK(is_var >= 0, what, ": cannot inspect attribute ", name, " (", last_error(), ")");
  Handle mtype(H5Tcopy(H5T_C_S1), H5Tclose);
  BT_CHECK(mtype.valid(), what, ": H5Tcopy failed (", last_error(), ")");
  BT_CHECK(H5Tset_cset(mtype.get(), H5Tget_cset(ftype.get())) >= 0, what,
           ": cannot read the character set of attribute ", name, " (", last_error(), ")");
  if (is_var > 0) {
    BT_CHECK(H5Tset_size(mtype.get(), H5T_VARIABLE) >= 0, what, ": H5Tset_size failed");
    char* p = nullptr;
    BT_CHECK(H5Aread(attr.get(), mtype.get(), &p) >= 0, what, ": cannot read attribute ", name, " (",
             last_error(), ")");
    value = p ? p : "";
    if (p) H5free_memory(p);
  } else {
    size_t size = H5Tget_size(ftype.get());
    BT_CHECK(size > 0, what, ": attribute ", name, " has an invalid string size");
    // One byte more than the file's size: the memory type is null-terminated, and a
    // null-padded string that fills its size (h5py's np.bytes_) would otherwise lose its last
    // character in the conversion.
    BT_CHECK(H5Tset_size(mtype.get(), size + 1) >= 0, what, ": H5Tset_size failed");
    std::vector<char> buf(size + 2, '\0');
    BT_CHECK(H5Aread(attr.get(), mtype.get(), buf.data()) >= 0, what, ": cannot read attribute ",
             name, " (", last_error(), ")");
    value.assign(buf.data());  // stops at the first NUL (null-padded fixed strings)
  }
  return true;
}

bool read_int_attr(hid_t obj, const char* name, int64_t& value, const std::string& what) {
  Handle attr;
  if (!open_attr(obj, name, attr, what)) return false;
  Handle ftype(H5Aget_type(attr.get()), H5Tclose);
  BT_CHECK(ftype.valid(), what, ": cannot read the type of attribute ", name, " (", last_error(), ")");
  BT_CHECK(H5Tget_class(ftype.get()) == H5T_INTEGER, what, ": attribute ", name,
           " is not an integer");
  BT_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &value) >= 0, what, ": cannot read attribute ",
           name, " (", last_error(), ")");
  return true;
}

}  // namespace bt::h5
