// The Python extension module centerloss_ext._C (setup.py only; CMake builds a plain
// library). Importing it loads this shared object, whose static initialisers run the
// op registrations in ops.cpp, cpu/ and cuda/; the ops are then torch.ops.centerloss.*.
// The module itself holds only the settings that are not ops.
#include <Python.h>

#include "center_loss.h"

namespace {

PyObject* set_cuda_label_check(PyObject* /*self*/, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  return PyBool_FromLong(centerloss::set_cuda_label_check(enabled != 0));
}

PyMethodDef methods[] = {
    {"set_cuda_label_check", set_cuda_label_check, METH_O,
     "Sets whether CUDA kernels raise on bad labels (one host sync); returns the previous "
     "setting."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
