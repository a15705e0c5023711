"""The SIMT emulator: a test tool of this repository, not part of the centerloss_ext package
(it is neither in the wheel nor in the sdist). It runs the unchanged csrc/cuda/*.cu kernels
on the CPU as a PyTorch device named "simt", for the tests marked `cuda` without a GPU.

    build.py             builds build/emu/<variant>/libcenterloss_simt.so (make emu-build)
    loader.py            loads that library as the "simt" device; launch, read-back and
                         memory counters for the tests (python_tests/conftest.py uses it)
    rewrite_launches.py, simt.h, simt_runtime.cpp, device.cpp, registration.cpp, include/
                         the emulator itself

See docs/cuda_emulation.md.
"""
