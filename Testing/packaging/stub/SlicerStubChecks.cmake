# Checks shared by the stub's UseSlicer.cmake, SlicerExtensionGenerateConfig.cmake
# and SlicerExtensionCPack.cmake.

include_guard(GLOBAL)

# Every EXTENSION_* variable a Slicer extension's top-level CMakeLists.txt must set.
set(SLICER_STUB_REQUIRED_EXTENSION_VARS
  EXTENSION_HOMEPAGE
  EXTENSION_CATEGORY
  EXTENSION_CONTRIBUTORS
  EXTENSION_DESCRIPTION
  EXTENSION_ICONURL
  EXTENSION_SCREENSHOTURLS
  EXTENSION_DEPENDS
  )

function(slicer_stub_check_extension_metadata where)
  foreach(var IN LISTS SLICER_STUB_REQUIRED_EXTENSION_VARS)
    if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
      message(FATAL_ERROR "Slicer stub (${where}): ${var} is either NOT defined or empty.")
    endif()
  endforeach()
  foreach(var EXTENSION_HOMEPAGE EXTENSION_ICONURL)
    if(NOT "${${var}}" MATCHES "^https?://[^ ]+$")
      message(FATAL_ERROR "Slicer stub (${where}): ${var} must be one http(s) URL, got '${${var}}'.")
    endif()
  endforeach()
  if(NOT "${EXTENSION_ICONURL}" MATCHES "\\.png$")
    message(FATAL_ERROR "Slicer stub (${where}): EXTENSION_ICONURL must point to a PNG file, got '${EXTENSION_ICONURL}'.")
  endif()
  string(REPLACE " " ";" _urls "${EXTENSION_SCREENSHOTURLS}")
  foreach(url IN LISTS _urls)
    if(NOT "${url}" MATCHES "^https?://")
      message(FATAL_ERROR "Slicer stub (${where}): EXTENSION_SCREENSHOTURLS must be space-separated http(s) URLs, got '${url}'.")
    endif()
  endforeach()
  if("${EXTENSION_DESCRIPTION}" MATCHES "\n")
    message(FATAL_ERROR "Slicer stub (${where}): EXTENSION_DESCRIPTION must be a single line (the .s4ext format has no multi-line values).")
  endif()
  if(DEFINED EXTENSION_ENABLED AND NOT "${EXTENSION_ENABLED}" MATCHES "^[01]$")
    message(FATAL_ERROR "Slicer stub (${where}): EXTENSION_ENABLED must be 0 or 1, got '${EXTENSION_ENABLED}'.")
  endif()
endfunction()

# Fail unless every file of `files` (relative to CMAKE_CURRENT_SOURCE_DIR, or
# absolute) exists; record the absolute paths in the manifest.
function(slicer_stub_check_files caller kind)
  foreach(value IN LISTS ARGN)
    if(IS_ABSOLUTE "${value}")
      set(abs "${value}")
    else()
      set(abs "${CMAKE_CURRENT_SOURCE_DIR}/${value}")
    endif()
    if(NOT EXISTS "${abs}" OR IS_DIRECTORY "${abs}")
      message(FATAL_ERROR "${caller}(${kind}) given nonexistent file '${value}' (looked for ${abs})")
    endif()
    set_property(GLOBAL APPEND PROPERTY SLICER_STUB_MANIFEST "${kind} ${abs}")
  endforeach()
endfunction()
