# Minimal stand-in for a Slicer build tree's SlicerConfig.cmake, owned by this
# project (see DESIGN.md §5.3). It lets `cmake -DSlicer_DIR=<this folder>`
# configure the extension without Slicer and makes the configure step fail on:
#   - any file listed in slicerMacroBuildScriptedModule(SCRIPTS/RESOURCES) or
#     slicer_add_python_unittest(SCRIPT) that does not exist;
#   - unknown keywords given to those macros;
#   - any EXTENSION_* metadata variable that is missing or malformed;
#   - a missing EXTENSION_LICENSE_FILE / EXTENSION_README_FILE.
# It also installs the listed files the way Slicer lays them out, and writes
#   <build>/SlicerStubManifest.txt   every listed file and test, one a line
#   <build>/<EXTENSION_NAME>.s4ext   the description generated from EXTENSION_*
# so tests can compare them with the repository.

set(Slicer_FOUND TRUE)
set(Slicer_IS_PACKAGING_STUB TRUE)

set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 9)
set(Slicer_VERSION_PATCH 0)
set(Slicer_VERSION "${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}.${Slicer_VERSION_PATCH}")
set(Slicer_REVISION "0")
set(Slicer_OS "linux")
set(Slicer_ARCHITECTURE "amd64")

set(Slicer_USE_PYTHONQT ON)
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
set(Slicer_SHARE_DIR "share/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")

set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake")

set(Slicer_LICENSE_FILE "${CMAKE_CURRENT_LIST_DIR}/SlicerConfig.cmake")
set(Slicer_README_FILE "${CMAKE_CURRENT_LIST_DIR}/SlicerConfig.cmake")
