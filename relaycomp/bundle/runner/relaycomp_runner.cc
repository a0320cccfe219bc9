// relaycomp-runner: run a model compiled by relaycomp with TVM's C++ runtime, without Python.
//
//   relaycomp-runner MODEL.so SIGNATURE INPUTS OUTPUT_DIR [--repeat N] [--warmup N]
//
// MODEL.so   the library `relaycomp compile` wrote (a Relax VM executable)
// SIGNATURE  signature.txt of the bundle: one line per tensor, "input|output NAME DTYPE D0,D1,.."
// INPUTS     a .npz keyed by input name (np.savez), or a folder holding NAME.npy per input
// OUTPUT_DIR where NAME.npy is written per output (created if missing)
//
// Prints one line per output and the latency of `main` (median of N timed runs after the
// warm-up runs; inputs are already in memory, so no file reading is timed). Threads: TVM's pool
// takes TVM_NUM_THREADS (default: the number of cores).
#include <dlpack/dlpack.h>
#include <sys/stat.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "npy.h"

namespace ffi = tvm::ffi;

namespace {

struct TensorSpec {
  std::string name, dtype;
  std::vector<int64_t> shape;  // -1 for a symbolic output dimension
};

struct CpuAlloc {
  void AllocData(DLTensor* tensor) {
    // 64-byte aligned, as TVM's kernels may assume for their vector loads.
    size_t size = std::max<size_t>(ffi::GetDataSize(*tensor), 1);
    tensor->data = std::aligned_alloc(64, (size + 63) / 64 * 64);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

void ReadSignature(const std::string& path, std::vector<TensorSpec>* inputs,
                   std::vector<TensorSpec>* outputs) {
  std::ifstream file(path);
  if (!file) throw std::runtime_error("cannot read the signature " + path);
  std::string line;
  while (std::getline(file, line)) {
    std::istringstream fields(line);
    std::string role, dims;
    TensorSpec spec;
    if (!(fields >> role >> spec.name >> spec.dtype)) continue;
    fields >> dims;
    if (dims == "-") dims.clear();  // a scalar
    std::stringstream stream(dims);
    std::string dim;
    while (std::getline(stream, dim, ',')) {
      spec.shape.push_back(dim.find_first_not_of("0123456789") == std::string::npos
                               ? std::stoll(dim) : -1);
    }
    (role == "input" ? inputs : outputs)->push_back(spec);
  }
  if (outputs->empty()) throw std::runtime_error(path + " names no output");
}

bool IsFolder(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

std::vector<npy::Array> ReadInputs(const std::string& source,
                                   const std::vector<TensorSpec>& specs) {
  std::map<std::string, npy::Array> found;
  if (IsFolder(source)) {
    for (const auto& spec : specs) found[spec.name] = npy::Load(source + "/" + spec.name + ".npy");
  } else {
    found = npy::LoadNpz(source);
  }
  std::vector<npy::Array> arrays;
  for (const auto& spec : specs) {
    auto it = found.find(spec.name);
    if (it == found.end()) throw std::runtime_error(source + " has no input '" + spec.name + "'");
    if (it->second.dtype != spec.dtype || it->second.shape != spec.shape) {
      throw std::runtime_error("input '" + spec.name + "' is " + it->second.dtype +
                               ShapeText(it->second.shape) + ", the model takes " + spec.dtype +
                               ShapeText(spec.shape));
    }
    arrays.push_back(it->second);
  }
  return arrays;
}

DLDataType ToDLDataType(const std::string& name) {
  static const std::map<std::string, DLDataType> kTypes = {
      {"float32", {kDLFloat, 32, 1}}, {"float64", {kDLFloat, 64, 1}},
      {"float16", {kDLFloat, 16, 1}}, {"int64", {kDLInt, 64, 1}},
      {"int32", {kDLInt, 32, 1}},     {"int16", {kDLInt, 16, 1}},
      {"int8", {kDLInt, 8, 1}},       {"uint64", {kDLUInt, 64, 1}},
      {"uint32", {kDLUInt, 32, 1}},   {"uint16", {kDLUInt, 16, 1}},
      {"uint8", {kDLUInt, 8, 1}},     {"bool", {kDLBool, 8, 1}}};
  return kTypes.at(name);
}

std::string FromDLDataType(DLDataType type) {
  for (const auto& info : npy::kDtypes) {
    DLDataType known = ToDLDataType(info.name);
    if (known.code == type.code && known.bits == type.bits && type.lanes == 1) return info.name;
  }
  throw std::runtime_error("the model returned a tensor of an unsupported dtype");
}

ffi::Tensor ToTensor(const npy::Array& array) {
  DLDevice cpu{kDLCPU, 0};
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(
      CpuAlloc(), ffi::ShapeView(array.shape.data(), array.shape.size()),
      ToDLDataType(array.dtype), cpu);
  std::memcpy(tensor.data_ptr(), array.data.data(), array.data.size());
  return tensor;
}

// The VM returns a tensor or a (nested) tuple of them: flatten in order, as relaycomp does.
void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* tensors) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    tensors->push_back(*tensor);
  } else if (auto items = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) Flatten(item, tensors);
  } else {
    throw std::runtime_error("the model returned " + value.GetTypeKey() + ", not tensors");
  }
}

npy::Array ToArray(const ffi::Tensor& tensor) {
  npy::Array array;
  array.dtype = FromDLDataType(tensor.dtype());
  for (int64_t dim : tensor.shape()) array.shape.push_back(dim);
  if (!tensor.IsContiguous()) throw std::runtime_error("the model returned a strided tensor");
  const char* data = static_cast<const char*>(tensor.data_ptr()) + tensor.byte_offset();
  array.data.assign(data, data + ffi::GetDataSize(tensor.numel(), tensor.dtype()));
  return array;
}

int Run(int argc, char** argv) {
  std::vector<std::string> positional;
  int repeat = 20, warmup = 3;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "--repeat" || arg == "--warmup") && i + 1 < argc) {
      (arg == "--repeat" ? repeat : warmup) = std::atoi(argv[++i]);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 4 || repeat < 1 || warmup < 0) {
    std::cerr << "usage: " << argv[0]
              << " MODEL.so SIGNATURE INPUTS(.npz|folder) OUTPUT_DIR [--repeat N>=1] "
                 "[--warmup N>=0]\n";
    return 2;
  }
  std::vector<TensorSpec> input_specs, output_specs;
  ReadSignature(positional[1], &input_specs, &output_specs);
  std::vector<ffi::Any> inputs;
  for (const auto& array : ReadInputs(positional[2], input_specs)) inputs.push_back(ToTensor(array));

  // The Relax VM: load the executable from the library, then set up device 0 of the CPU with
  // the pooled allocator (kDLCPU, 0, 2), as tvm.relax.VirtualMachine(lib, tvm.cpu()) does.
  // dlopen searches the library path for a name without a '/': make it a path.
  std::string model = positional[0].find('/') == std::string::npos ? "./" + positional[0]
                                                                     : positional[0];
  ffi::Module library = ffi::Module::LoadFromFile(model);
  ffi::Module vm = library->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_function = vm->GetFunction("main").value();

  std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
  ffi::Any result;
  for (int i = 0; i < warmup; ++i) {
    main_function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  }
  std::vector<double> samples;
  for (int i = 0; i < repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    main_function.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    samples.push_back(std::chrono::duration<double, std::milli>(
        std::chrono::steady_clock::now() - start).count());
  }
  std::vector<ffi::Tensor> outputs;
  Flatten(result, &outputs);
  if (outputs.size() != output_specs.size()) {
    throw std::runtime_error("the model returned " + std::to_string(outputs.size()) +
                             " outputs, its signature names " +
                             std::to_string(output_specs.size()));
  }
  mkdir(positional[3].c_str(), 0755);
  for (size_t i = 0; i < outputs.size(); ++i) {
    npy::Array array = ToArray(outputs[i]);
    std::string path = positional[3] + "/" + output_specs[i].name + ".npy";
    npy::Save(path, array);
    std::printf("output %s: %s%s -> %s\n", output_specs[i].name.c_str(), array.dtype.c_str(),
                ShapeText(array.shape).c_str(), path.c_str());
  }
  std::vector<double> sorted = samples;
  std::sort(sorted.begin(), sorted.end());
  double median = sorted.size() % 2 ? sorted[sorted.size() / 2]
                                    : (sorted[sorted.size() / 2 - 1] + sorted[sorted.size() / 2]) / 2;
  std::printf("latency: median %.3f ms, min %.3f ms over %d runs (after %d warm-up)\n", median,
              sorted.front(), repeat, warmup);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const ffi::Error& err) {
    std::cerr << "relaycomp-runner: error: " << err.kind() << ": " << err.message() << "\n";
  } catch (const std::exception& err) {
    std::cerr << "relaycomp-runner: error: " << err.what() << "\n";
  }
  return 1;
}
