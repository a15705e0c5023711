// The Python extension module centerloss_ext._C (setup.py only; CMake builds a plain
// library). Importing it loads this shared object, whose static initialisers run the
// op registrations in ops.cpp, cpu/ and cuda/; the ops are then torch.ops.centerloss.*.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
