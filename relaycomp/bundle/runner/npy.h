// Reading and writing NumPy's .npy format, and reading the arrays of an uncompressed .npz
// (what numpy.savez writes: a zip archive of NAME.npy members, stored, possibly zip64).
// Only what the runner needs: little-endian, C-order arrays of plain numeric dtypes.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::string dtype;            // numpy name: float32, int64, uint8, bool, ...
  std::vector<int64_t> shape;
  std::vector<char> data;       // C-order bytes
};

struct DtypeInfo {
  const char* descr;  // the .npy descr of a little-endian machine
  const char* name;
  int bytes;
};

// The dtypes a compiled model can take or return (relaycomp's manifest dtypes).
static const DtypeInfo kDtypes[] = {
    {"<f4", "float32", 4}, {"<f8", "float64", 8}, {"<f2", "float16", 2},
    {"<i8", "int64", 8},   {"<i4", "int32", 4},   {"<i2", "int16", 2},
    {"|i1", "int8", 1},    {"<u8", "uint64", 8},  {"<u4", "uint32", 4},
    {"<u2", "uint16", 2},  {"|u1", "uint8", 1},   {"|b1", "bool", 1},
};

inline const DtypeInfo& FindByName(const std::string& name) {
  for (const auto& info : kDtypes) {
    if (name == info.name) return info;
  }
  throw std::runtime_error("unsupported dtype " + name);
}

inline int64_t Count(const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (int64_t dim : shape) count *= dim;
  return count;
}

// The value of 'key' in the header dict: "{'descr': '<f4', 'fortran_order': False, ...}".
inline std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) throw std::runtime_error("npy header has no '" + key + "'");
  at = header.find(':', at) + 1;
  while (header[at] == ' ') ++at;
  char close = header[at] == '\'' ? '\'' : header[at] == '(' ? ')' : ',';
  size_t end = header.find(close, at + 1);
  return header.substr(at, end - at + 1);
}

// Parse one .npy document starting at 'bytes' (of which 'size' are available).
inline Array Parse(const char* bytes, size_t size, const std::string& what) {
  if (size < 10 || std::memcmp(bytes, "\x93NUMPY", 6) != 0) {
    throw std::runtime_error(what + " is not a .npy array");
  }
  int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    offset = 10;
  } else {
    uint32_t len;
    std::memcpy(&len, bytes + 8, 4);
    header_len = len;
    offset = 12;
  }
  if (offset + header_len > size) throw std::runtime_error(what + ": truncated .npy header");
  std::string header(bytes + offset, header_len);
  std::string descr = HeaderValue(header, "descr");
  descr = descr.substr(1, descr.size() - 2);
  if (descr[0] == '=') descr[0] = '<';
  if (HeaderValue(header, "fortran_order").rfind("True", 0) == 0) {
    throw std::runtime_error(what + " is Fortran-ordered; save it with np.ascontiguousarray");
  }
  Array array;
  for (const auto& info : kDtypes) {
    if (descr == info.descr) array.dtype = info.name;
  }
  if (array.dtype.empty()) throw std::runtime_error(what + ": unsupported dtype " + descr);
  std::string dims = HeaderValue(header, "shape");
  std::stringstream stream(dims.substr(1, dims.size() - 2));
  std::string dim;
  while (std::getline(stream, dim, ',')) {
    if (dim.find_first_of("0123456789") != std::string::npos) array.shape.push_back(std::stoll(dim));
  }
  size_t nbytes = Count(array.shape) * FindByName(array.dtype).bytes;
  offset += header_len;
  if (offset + nbytes > size) throw std::runtime_error(what + ": truncated .npy data");
  array.data.assign(bytes + offset, bytes + offset + nbytes);
  return array;
}

inline std::vector<char> ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error("cannot read " + path);
  return std::vector<char>((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
}

inline Array Load(const std::string& path) {
  std::vector<char> bytes = ReadFile(path);
  return Parse(bytes.data(), bytes.size(), path);
}

inline void Save(const std::string& path, const Array& array) {
  std::string shape = "(";
  for (int64_t dim : array.shape) shape += std::to_string(dim) + ", ";
  if (array.shape.size() > 1) shape.erase(shape.size() - 2);
  if (array.shape.size() == 1) shape.erase(shape.size() - 1);
  shape += ")";
  std::string header = std::string("{'descr': '") + FindByName(array.dtype).descr +
                       "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad so that the data starts at a multiple of 64 bytes, ending the header with '\n'.
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream file(path, std::ios::binary);
  uint16_t len = static_cast<uint16_t>(header.size());
  file.write("\x93NUMPY\x01\x00", 8);
  file.put(static_cast<char>(len & 0xff)).put(static_cast<char>(len >> 8));
  file << header;
  file.write(array.data.data(), static_cast<std::streamsize>(array.data.size()));
  if (!file) throw std::runtime_error("cannot write " + path);
}

template <typename T>
T Read(const std::vector<char>& bytes, size_t at) {
  if (at + sizeof(T) > bytes.size()) throw std::runtime_error("truncated zip archive");
  T value;
  std::memcpy(&value, bytes.data() + at, sizeof(T));
  return value;
}

// The arrays of an .npz, by member name without ".npy". Reads the central directory (zip64
// aware, as numpy forces zip64 entries) and refuses compressed members (np.savez_compressed).
inline std::map<std::string, Array> LoadNpz(const std::string& path) {
  std::vector<char> bytes = ReadFile(path);
  if (bytes.size() < 22) throw std::runtime_error(path + " is not a zip archive");
  size_t eocd = bytes.size() - 22;
  while (eocd > 0 && Read<uint32_t>(bytes, eocd) != 0x06054b50) --eocd;
  if (Read<uint32_t>(bytes, eocd) != 0x06054b50) {
    throw std::runtime_error(path + " is not a zip archive (.npz)");
  }
  uint64_t entries = Read<uint16_t>(bytes, eocd + 10);
  uint64_t directory = Read<uint32_t>(bytes, eocd + 16);
  if (directory == 0xffffffffu || entries == 0xffffu) {  // zip64 end of central directory
    uint64_t record = Read<uint64_t>(bytes, eocd - 20 + 8);
    entries = Read<uint64_t>(bytes, record + 32);
    directory = Read<uint64_t>(bytes, record + 48);
  }
  std::map<std::string, Array> arrays;
  size_t at = directory;
  for (uint64_t i = 0; i < entries; ++i) {
    if (Read<uint32_t>(bytes, at) != 0x02014b50) throw std::runtime_error(path + ": bad zip");
    uint16_t method = Read<uint16_t>(bytes, at + 10);
    uint64_t compressed = Read<uint32_t>(bytes, at + 20);
    uint64_t uncompressed = Read<uint32_t>(bytes, at + 24);
    uint16_t name_len = Read<uint16_t>(bytes, at + 28), extra_len = Read<uint16_t>(bytes, at + 30);
    uint16_t comment_len = Read<uint16_t>(bytes, at + 32);
    uint64_t local = Read<uint32_t>(bytes, at + 42);
    std::string name(bytes.data() + at + 46, name_len);
    // zip64 extra field: the 64-bit values of exactly the fields saturated above, in order.
    for (size_t extra = at + 46 + name_len; extra + 4 <= at + 46 + name_len + extra_len;) {
      uint16_t id = Read<uint16_t>(bytes, extra), len = Read<uint16_t>(bytes, extra + 2);
      if (id == 0x0001) {
        size_t field = extra + 4;
        for (uint64_t* value : {&uncompressed, &compressed, &local}) {
          if (*value == 0xffffffffu) {
            *value = Read<uint64_t>(bytes, field);
            field += 8;
          }
        }
      }
      extra += 4 + len;
    }
    if (method != 0) {
      throw std::runtime_error(path + " is compressed (np.savez_compressed); save it with "
                               "np.savez or as one .npy per input");
    }
    size_t data = local + 30 + Read<uint16_t>(bytes, local + 26) + Read<uint16_t>(bytes, local + 28);
    if (data + uncompressed > bytes.size()) throw std::runtime_error(path + ": truncated zip");
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
    arrays[name] = Parse(bytes.data() + data, uncompressed, path + ":" + name);
    at += 46 + name_len + extra_len + comment_len;
  }
  return arrays;
}

}  // namespace npy
