# Stub of Slicer's UseSlicer.cmake: checks the extension metadata and defines
# checking versions of the macros a scripted-module extension calls.

include("${CMAKE_CURRENT_LIST_DIR}/SlicerStubChecks.cmake")

if(NOT DEFINED EXTENSION_NAME)
  set(EXTENSION_NAME "${PROJECT_NAME}")
endif()
if(NOT DEFINED EXTENSION_LICENSE_FILE)
  set(EXTENSION_LICENSE_FILE "${Slicer_LICENSE_FILE}")
endif()
if(NOT DEFINED EXTENSION_README_FILE)
  set(EXTENSION_README_FILE "${Slicer_README_FILE}")
endif()
slicer_stub_check_extension_metadata("UseSlicer")

if(NOT DEFINED BUILD_TESTING)
  set(BUILD_TESTING ON)
endif()
set_property(GLOBAL PROPERTY SLICER_STUB_MANIFEST "")

# Same signature as Slicer's slicerMacroBuildScriptedModule.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER
    "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE"
    "NAME"
    "SCRIPTS;RESOURCES"
    ${ARGN}
    )
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT DEFINED MY_SLICER_NAME OR "${MY_SLICER_NAME}" STREQUAL "")
    message(FATAL_ERROR "slicerMacroBuildScriptedModule(): NAME is mandatory")
  endif()
  if(NOT MY_SLICER_SCRIPTS)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule(${MY_SLICER_NAME}): SCRIPTS is empty")
  endif()
  message(STATUS "Configuring Scripted module: ${MY_SLICER_NAME} (Slicer packaging stub)")

  foreach(_script IN LISTS MY_SLICER_SCRIPTS)
    if(NOT "${_script}" MATCHES "\\.py$")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule(${MY_SLICER_NAME}): SCRIPTS entry '${_script}' is not a .py file")
    endif()
  endforeach()
  set(_dups ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
  list(LENGTH _dups _n_all)
  list(REMOVE_DUPLICATES _dups)
  list(LENGTH _dups _n_unique)
  if(NOT _n_all EQUAL _n_unique)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule(${MY_SLICER_NAME}): a file is listed twice")
  endif()
  slicer_stub_check_files(slicerMacroBuildScriptedModule SCRIPTS ${MY_SLICER_SCRIPTS})
  slicer_stub_check_files(slicerMacroBuildScriptedModule RESOURCES ${MY_SLICER_RESOURCES})
  if(NOT MY_SLICER_WITH_SUBDIR)
    # A module (not a package shipped WITH_SUBDIR) needs its module file.
    list(FIND MY_SLICER_SCRIPTS "${MY_SLICER_NAME}.py" _module_file_index)
    if(_module_file_index EQUAL -1)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule(${MY_SLICER_NAME}): SCRIPTS must list ${MY_SLICER_NAME}.py")
    endif()
  endif()

  # Install like ctkMacroCompilePythonScript: relative paths kept, under a
  # folder named after the source folder when WITH_SUBDIR is given.
  set(_destination "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}")
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_subdir "${CMAKE_CURRENT_SOURCE_DIR}" NAME)
    set(_destination "${_destination}/${_subdir}")
  endif()
  foreach(_file IN LISTS MY_SLICER_SCRIPTS MY_SLICER_RESOURCES)
    get_filename_component(_file_dir "${_file}" DIRECTORY)
    install(FILES "${_file}" DESTINATION "${_destination}/${_file_dir}")
  endforeach()
  set_property(GLOBAL APPEND PROPERTY SLICER_STUB_MANIFEST "MODULE ${MY_SLICER_NAME} ${_destination}")
endmacro()

# Same signature as Slicer's slicer_add_python_unittest.
macro(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SCRIPT" "SLICER_ARGS" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicer_add_python_unittest(): \"${MY_UNPARSED_ARGUMENTS}\"")
  endif()
  if(NOT MY_SCRIPT)
    message(FATAL_ERROR "slicer_add_python_unittest(): SCRIPT is mandatory")
  endif()
  if(IS_ABSOLUTE "${MY_SCRIPT}" OR "${MY_SCRIPT}" MATCHES "/")
    # Slicer imports the test module by name from CMAKE_CURRENT_SOURCE_DIR.
    message(FATAL_ERROR "slicer_add_python_unittest(SCRIPT ${MY_SCRIPT}): the script must be in the calling directory (${CMAKE_CURRENT_SOURCE_DIR}); register it from there")
  endif()
  slicer_stub_check_files(slicer_add_python_unittest SCRIPT "${MY_SCRIPT}")
endmacro()

macro(slicer_add_python_test)
  cmake_parse_arguments(MY "" "TESTNAME_PREFIX;SLICER_ARGS;SCRIPT" "SCRIPT_ARGS" ${ARGN})
  if(NOT MY_SCRIPT)
    message(FATAL_ERROR "slicer_add_python_test(): SCRIPT is mandatory")
  endif()
  slicer_stub_check_files(slicer_add_python_test SCRIPT "${MY_SCRIPT}")
endmacro()
