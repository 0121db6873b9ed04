// A minimal Relax VM runner used by tests/slow/test_aarch64_qemu.py.
//
// Cross-compiled for aarch64 and run under qemu-user, it checks that a TVM artifact built for
// linux-aarch64 loads in the aarch64 TVM runtime and computes what the x86_64 build computes,
// without needing an arm64 Python. It links only against libtvm_ffi and libtvm_runtime.
//
// usage: tvm_vm_harness LIB.so OUTDIR INPUT...
//   INPUT is PATH:DTYPE:D0xD1x...  (raw little-endian bytes, e.g. in0.bin:float32:1x1x8x8)
// For every output i it writes OUTDIR/out<i>.bin and prints "out<i> DTYPE D0xD1x..." on stdout.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct CPUAlloc {
  void AllocData(DLTensor* tensor) {
    tensor->data = std::aligned_alloc(64, ((ffi::GetDataSize(*tensor) + 63) / 64) * 64 + 64);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

std::vector<std::string> Split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, sep)) parts.push_back(part);
  return parts;
}

ffi::Tensor ReadInput(const std::string& spec) {
  std::vector<std::string> parts = Split(spec, ':');
  if (parts.size() != 3) throw std::runtime_error("bad input spec " + spec);
  std::vector<int64_t> shape;
  for (const std::string& dim : Split(parts[2], 'x')) shape.push_back(std::stoll(dim));
  DLDevice cpu{kDLCPU, 0};
  ffi::Tensor tensor = ffi::Tensor::FromNDAlloc(
      CPUAlloc(), ffi::ShapeView(shape.data(), shape.size()), ffi::StringToDLDataType(parts[1]), cpu);
  size_t size = ffi::GetDataSize(tensor);
  std::ifstream file(parts[0], std::ios::binary);
  file.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(size));
  if (static_cast<size_t>(file.gcount()) != size) throw std::runtime_error("short read " + parts[0]);
  return tensor;
}

void WriteOutput(const ffi::Tensor& tensor, const std::string& outdir, size_t index) {
  std::string name = "out" + std::to_string(index);
  std::ofstream file(outdir + "/" + name + ".bin", std::ios::binary);
  file.write(static_cast<const char*>(tensor.data_ptr()),
             static_cast<std::streamsize>(ffi::GetDataSize(tensor)));
  std::cout << name << " " << ffi::DLDataTypeToString(tensor.dtype()) << " ";
  for (int i = 0; i < tensor.ndim(); ++i) std::cout << (i ? "x" : "") << tensor.size(i);
  std::cout << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: tvm_vm_harness LIB.so OUTDIR PATH:DTYPE:SHAPE...\n";
    return 2;
  }
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // device type, device id, allocator (2 = pooled), as tvm.runtime.vm.VirtualMachine does.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function main_fn = vm->GetFunction("main").value();
    std::vector<ffi::Any> inputs;
    for (int i = 3; i < argc; ++i) inputs.emplace_back(ReadInput(argv[i]));
    std::vector<ffi::AnyView> views(inputs.begin(), inputs.end());
    ffi::Any result;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    if (auto tensor = result.try_cast<ffi::Tensor>()) {
      WriteOutput(*tensor, argv[2], 0);
    } else {
      ffi::Array<ffi::Any> outputs = result.cast<ffi::Array<ffi::Any>>();
      for (size_t i = 0; i < outputs.size(); ++i) WriteOutput(outputs[i].cast<ffi::Tensor>(), argv[2], i);
    }
  } catch (const std::exception& exc) {
    std::cerr << "tvm_vm_harness: " << exc.what() << "\n";
    return 1;
  }
  return 0;
}
