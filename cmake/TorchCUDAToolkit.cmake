# Prepares what a CUDA build of torch's CMake config (Caffe2's legacy FindCUDA) needs, before
# find_package(Torch): the toolkit folder, libnvrtc, and architectures nvcc supports.
# Included only for a CUDA build of torch, after TorchFromPython.cmake.
#
# Toolkit folder, found as torch.utils.cpp_extension finds CUDA_HOME:
#   CUDA_TOOLKIT_ROOT_DIR if given, else $CUDA_HOME or $CUDA_PATH, else the folder of the
#   nvcc on PATH (the folder nvcc itself reports, so a wrapper script elsewhere resolves),
#   else /usr/local/cuda.
# libnvrtc: from the toolkit, else from the nvidia/*/lib folders of torch's pip wheels.
# Architectures: TORCH_CUDA_ARCH_LIST (variable or environment, torch's "8.0;9.0" form), else
#   CMAKE_CUDA_ARCHITECTURES (CMake's "80;90" form, default 80;90: A100, H100/H200). torch turns
#   its list into the -gencode flags; without one it adds architectures nvcc 13 rejects. (torch
#   then warns that it ignores CMAKE_CUDA_ARCHITECTURES: it reads the list translated here.)

function(_condnum_cuda_home out)
  if(DEFINED ENV{CUDA_HOME})
    set(home "$ENV{CUDA_HOME}")
  elseif(DEFINED ENV{CUDA_PATH})
    set(home "$ENV{CUDA_PATH}")
  else()
    find_program(_condnum_nvcc nvcc NO_CACHE)
    if(_condnum_nvcc)
      # nvcc prints the folder it really runs from (_HERE_=<toolkit>/bin).
      execute_process(COMMAND "${_condnum_nvcc}" --dryrun -x cu -c /dev/null -o /dev/null
                      ERROR_VARIABLE dryrun OUTPUT_QUIET RESULT_VARIABLE rc)
      if(rc EQUAL 0 AND dryrun MATCHES "_HERE_=([^\r\n]*)")
        get_filename_component(home "${CMAKE_MATCH_1}/.." ABSOLUTE)
      endif()
    elseif(EXISTS /usr/local/cuda)
      set(home /usr/local/cuda)
    endif()
  endif()
  set(${out} "${home}" PARENT_SCOPE)
endfunction()

function(_condnum_torch_arch_list out)
  if(DEFINED TORCH_CUDA_ARCH_LIST)
    set(archs "${TORCH_CUDA_ARCH_LIST}")
  elseif(DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(archs "$ENV{TORCH_CUDA_ARCH_LIST}")
  else()
    # CMake's "90a-real" -> torch's "9.0a" (SASS for that architecture).
    set(archs "")
    foreach(arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
      if(NOT arch MATCHES "^([0-9]+)([0-9])([a-z]?)(-real|-virtual)?$")
        message(FATAL_ERROR "CMAKE_CUDA_ARCHITECTURES: cannot read '${arch}' (expected e.g. 80 or 90a)")
      endif()
      list(APPEND archs "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}${CMAKE_MATCH_3}")
    endforeach()
  endif()
  set(${out} "${archs}" PARENT_SCOPE)
endfunction()

if(NOT CUDA_TOOLKIT_ROOT_DIR)
  _condnum_cuda_home(_condnum_cuda_home)
  if(_condnum_cuda_home)
    set(CUDA_TOOLKIT_ROOT_DIR "${_condnum_cuda_home}" CACHE PATH "CUDA toolkit folder")
  endif()
endif()
if(CUDA_TOOLKIT_ROOT_DIR)
  # One nvcc for CMake's CUDA language and torch's FindCUDA (torch checks they agree).
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX}
     AND EXISTS "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc")
    set(CMAKE_CUDA_COMPILER "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc")
  endif()
  find_library(CUDA_nvrtc_LIBRARY nvrtc PATHS "${CUDA_TOOLKIT_ROOT_DIR}"
               PATH_SUFFIXES lib64 lib lib/x64 NO_DEFAULT_PATH)
  if(NOT CUDA_nvrtc_LIBRARY)
    # the wheels' nvidia/ folder lies beside torch/ (CONDNUM_TORCH_LIB_DIR is torch/lib)
    file(GLOB _condnum_nvrtc "${CONDNUM_TORCH_LIB_DIR}/../../nvidia/*/lib/libnvrtc.so.[0-9]*")
    if(_condnum_nvrtc)
      list(GET _condnum_nvrtc 0 _condnum_nvrtc)
      get_filename_component(_condnum_nvrtc "${_condnum_nvrtc}" ABSOLUTE)
      set(CUDA_nvrtc_LIBRARY "${_condnum_nvrtc}" CACHE FILEPATH "libnvrtc (torch's wheel)" FORCE)
    endif()
  endif()
  message(STATUS "condnum: CUDA toolkit ${CUDA_TOOLKIT_ROOT_DIR}, nvrtc ${CUDA_nvrtc_LIBRARY}")
endif()

# Cached before CMake's CUDA detection would cache its own default (75).
set(CMAKE_CUDA_ARCHITECTURES "80;90" CACHE STRING "CUDA architectures of the condnum kernels")
_condnum_torch_arch_list(TORCH_CUDA_ARCH_LIST)
