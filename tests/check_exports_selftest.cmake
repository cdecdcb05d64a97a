# check_exports_selftest.cmake -- proves check_exports.cmake fails when the lists differ.
#
#   cmake -DHEADER=... -DDEF=... -DWORKDIR=<scratch dir> -P check_exports_selftest.cmake
#
# Makes copies of the header and the .def with one bogus name added to each (in turn)
# and expects check_exports.cmake to exit non-zero and name the bogus function.
cmake_minimum_required(VERSION 3.20)
get_filename_component(here "${CMAKE_CURRENT_LIST_FILE}" DIRECTORY)
set(checker "${here}/check_exports.cmake")
file(MAKE_DIRECTORY "${WORKDIR}")

function(expect_failure label header def bogus)
  execute_process(
    COMMAND "${CMAKE_COMMAND}" "-DHEADER=${header}" "-DDEF=${def}" -P "${checker}"
    RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "selftest ${label}: check_exports passed although ${bogus} differs:\n${out}${err}")
  endif()
  string(FIND "${out}${err}" "${bogus}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "selftest ${label}: check_exports failed without naming ${bogus}:\n${out}${err}")
  endif()
  message(STATUS "selftest ${label}: detected ${bogus}")
endfunction()

# The originals must agree, or the checks below prove nothing.
execute_process(
  COMMAND "${CMAKE_COMMAND}" "-DHEADER=${HEADER}" "-DDEF=${DEF}" -P "${checker}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "selftest: the real header and .def already disagree:\n${out}${err}")
endif()

# 1. A name only in the .def.
file(READ "${DEF}" def_text)
file(WRITE "${WORKDIR}/extra.def" "${def_text}\n    iocpsrv_bogus_def_only\n")
expect_failure(def-extra "${HEADER}" "${WORKDIR}/extra.def" iocpsrv_bogus_def_only)

# 2. A declaration only in the header (return type on its own line, as some styles do).
file(READ "${HEADER}" hdr_text)
string(FIND "${hdr_text}" "#ifdef __cplusplus\n}" tail)
if(tail EQUAL -1)
  string(LENGTH "${hdr_text}" tail)
endif()
string(SUBSTRING "${hdr_text}" 0 ${tail} head)
string(SUBSTRING "${hdr_text}" ${tail} -1 rest)
file(WRITE "${WORKDIR}/extra.h"
  "${head}\nIOCPSRV_API int\nIOCPSRV_CALL iocpsrv_bogus_header_only(iocpsrv_t *server);\n${rest}")
expect_failure(header-extra "${WORKDIR}/extra.h" "${DEF}" iocpsrv_bogus_header_only)

# 3. A name missing from the .def.
string(REGEX REPLACE "\n[ \t]*iocpsrv_stats[ \t]*\n" "\n" def_missing "${def_text}")
file(WRITE "${WORKDIR}/missing.def" "${def_missing}")
expect_failure(def-missing "${HEADER}" "${WORKDIR}/missing.def" iocpsrv_stats)
