# The torch that Python imports, asked directly, as torch.utils.cpp_extension builds an
# extension:
#   CONDNUM_TORCH_CUDA     the CUDA version torch was built with ("" for a CPU build)
#   CONDNUM_TORCH_LIB_DIR  torch's library folder (torch/lib)
#   CMAKE_PREFIX_PATH      gains torch's own, so find_package(Torch) finds this torch's config
#   condnum_torch_without_config(target): an INTERFACE target with torch's headers, its C++
#     libraries (c10, torch_cpu, torch) and its C++ ABI flag.
# torch's own CMake config is needed only for the CUDA kernels (the torch_cuda target and
# its CUDA flags). For a CUDA build of torch it demands a CUDA toolkit that suits it (the
# legacy FindCUDA, libnvrtc, and for torch 2.4 nvToolsExt, which CUDA 13 no longer ships),
# which a build of the CPU kernels alone does not need.

set(_condnum_torch_query [=[
import torch
import torch.utils.cpp_extension as ext
print("@condnum-torch@")
print("|".join(ext.include_paths()))
print(ext.library_paths()[0])
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or "none")
print(torch.utils.cmake_prefix_path)
]=])
execute_process(COMMAND "${Python_EXECUTABLE}" -c "${_condnum_torch_query}"
                OUTPUT_VARIABLE _condnum_torch ERROR_VARIABLE _condnum_torch_error
                RESULT_VARIABLE _condnum_torch_rc OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _condnum_torch_rc EQUAL 0)
  message(FATAL_ERROR "condnum: ${Python_EXECUTABLE} cannot import torch (build with "
                      "--no-build-isolation, after installing torch):\n${_condnum_torch_error}")
endif()
# only what follows the marker: importing torch may print lines of its own
string(REGEX REPLACE "^.*@condnum-torch@\n" "" _condnum_torch "${_condnum_torch}")
string(REPLACE "\n" ";" _condnum_torch "${_condnum_torch}")
list(GET _condnum_torch 0 _condnum_torch_includes)
string(REPLACE "|" ";" _condnum_torch_includes "${_condnum_torch_includes}")
list(GET _condnum_torch 1 CONDNUM_TORCH_LIB_DIR)
list(GET _condnum_torch 2 _condnum_torch_cxx11_abi)
list(GET _condnum_torch 3 CONDNUM_TORCH_CUDA)
list(GET _condnum_torch 4 _condnum_torch_prefix)
list(PREPEND CMAKE_PREFIX_PATH "${_condnum_torch_prefix}")
if(CONDNUM_TORCH_CUDA STREQUAL "none")
  set(CONDNUM_TORCH_CUDA "")
endif()

function(condnum_torch_without_config target)
  add_library(${target} INTERFACE)
  target_include_directories(${target} SYSTEM INTERFACE ${_condnum_torch_includes})
  foreach(lib IN ITEMS torch torch_cpu c10)
    find_library(_condnum_lib ${lib} PATHS "${CONDNUM_TORCH_LIB_DIR}" NO_DEFAULT_PATH NO_CACHE)
    if(NOT _condnum_lib)
      message(FATAL_ERROR "condnum: no lib${lib} in ${CONDNUM_TORCH_LIB_DIR}")
    endif()
    target_link_libraries(${target} INTERFACE "${_condnum_lib}")
    unset(_condnum_lib)
  endforeach()
  target_compile_definitions(${target} INTERFACE
                             _GLIBCXX_USE_CXX11_ABI=${_condnum_torch_cxx11_abi})
endfunction()
