# check_exports.cmake -- the public header and iocpsrv.def must list the same functions.
#
#   cmake -DHEADER=dll/include/iocpsrv.h -DDEF=iocpsrv.def -P tests/check_exports.cmake
#
# Header: every function declared with IOCPSRV_API, e.g.
#   IOCPSRV_API int IOCPSRV_CALL iocpsrv_send(
#   IOCPSRV_API const char *IOCPSRV_CALL iocpsrv_strerror(int err);
# (comments and preprocessor lines are stripped first, so the #define of IOCPSRV_API
# and prose mentioning it do not count).
# .def: every name in the EXPORTS section (ordinals, NONAME/DATA/PRIVATE and
# "name=internal" aliases are understood; ';' starts a comment).
# Exits non-zero with the list of differences when the two sets differ.

cmake_minimum_required(VERSION 3.20)

if(NOT DEFINED HEADER OR NOT DEFINED DEF)
  message(FATAL_ERROR "usage: cmake -DHEADER=<iocpsrv.h> -DDEF=<iocpsrv.def> -P check_exports.cmake")
endif()
foreach(f "${HEADER}" "${DEF}")
  if(NOT EXISTS "${f}")
    message(FATAL_ERROR "check_exports: no such file: ${f}")
  endif()
endforeach()

# ---- header ----
file(READ "${HEADER}" hdr)
# ';' would split CMake lists and '[' ']' would protect them: neutralise both.
string(REPLACE ";" " @SEMI@ " hdr "${hdr}")
string(REPLACE "[" "<" hdr "${hdr}")
string(REPLACE "]" ">" hdr "${hdr}")
string(REPLACE "\r" "" hdr "${hdr}")
# Block comments (CMake regexes have no non-greedy match: walk with FIND).
set(clean "")
while(TRUE)
  string(FIND "${hdr}" "/*" open)
  if(open EQUAL -1)
    string(APPEND clean "${hdr}")
    break()
  endif()
  string(SUBSTRING "${hdr}" 0 ${open} before)
  string(APPEND clean "${before} ")
  math(EXPR after_open "${open} + 2")
  string(SUBSTRING "${hdr}" ${after_open} -1 hdr)
  string(FIND "${hdr}" "*/" close)
  if(close EQUAL -1)
    message(FATAL_ERROR "check_exports: unterminated comment in ${HEADER}")
  endif()
  math(EXPR after_close "${close} + 2")
  string(SUBSTRING "${hdr}" ${after_close} -1 hdr)
endwhile()
set(hdr "\n${clean}")
string(REGEX REPLACE "//[^\n]*" "" hdr "${hdr}")
# Preprocessor lines, with their backslash continuations.
string(REGEX REPLACE "\\\\\n" " " hdr "${hdr}")
string(REGEX REPLACE "\n[ \t]*#[^\n]*" "\n" hdr "${hdr}")

string(REGEX MATCHALL
  "IOCPSRV_API[^@(#{}]*[^A-Za-z0-9_@(#{}][A-Za-z_][A-Za-z0-9_]*[ \t\n]*\\("
  decls "${hdr}")
set(header_names "")
foreach(d IN LISTS decls)
  string(REGEX REPLACE ".*[^A-Za-z0-9_]([A-Za-z_][A-Za-z0-9_]*)[ \t\n]*\\($" "\\1" name "${d}")
  list(APPEND header_names "${name}")
endforeach()

# ---- .def ----
file(READ "${DEF}" def)
string(REPLACE "\r" "" def "${def}")
string(REPLACE "[" "<" def "${def}")
string(REPLACE "]" ">" def "${def}")
string(REPLACE ";" "#" def "${def}")      # ';' starts a .def comment
string(REPLACE "\n" ";" def_lines "${def}")
set(def_names "")
set(in_exports FALSE)
foreach(line IN LISTS def_lines)
  string(REGEX REPLACE "#.*" "" line "${line}")
  string(STRIP "${line}" line)
  if(line STREQUAL "")
    continue()
  endif()
  if(line MATCHES "^(LIBRARY|NAME|DESCRIPTION|STACKSIZE|HEAPSIZE|SECTIONS|VERSION|IMPORTS)([ \t]|$)")
    set(in_exports FALSE)
    continue()
  endif()
  if(line MATCHES "^EXPORTS([ \t]+(.*))?$")
    set(in_exports TRUE)
    set(line "${CMAKE_MATCH_2}")
    string(STRIP "${line}" line)
    if(line STREQUAL "")
      continue()
    endif()
  endif()
  if(in_exports)
    string(REGEX MATCH "^[A-Za-z_][A-Za-z0-9_]*" name "${line}")
    if(name STREQUAL "")
      message(FATAL_ERROR "check_exports: cannot parse EXPORTS line in ${DEF}: '${line}'")
    endif()
    list(APPEND def_names "${name}")
  endif()
endforeach()

# ---- compare ----
set(problems "")
foreach(list_var header_names def_names)
  set(seen "")
  foreach(n IN LISTS ${list_var})
    list(FIND seen "${n}" at)
    if(NOT at EQUAL -1)
      string(APPEND problems "  listed twice in ${list_var}: ${n}\n")
    endif()
    list(APPEND seen "${n}")
  endforeach()
endforeach()
list(REMOVE_DUPLICATES header_names)
list(REMOVE_DUPLICATES def_names)
list(LENGTH header_names n_header)
list(LENGTH def_names n_def)
if(n_header EQUAL 0)
  string(APPEND problems "  no IOCPSRV_API declaration found in ${HEADER}\n")
endif()
if(n_def EQUAL 0)
  string(APPEND problems "  no name found under EXPORTS in ${DEF}\n")
endif()
foreach(n IN LISTS header_names)
  list(FIND def_names "${n}" at)
  if(at EQUAL -1)
    string(APPEND problems "  declared in the header but not exported by the .def: ${n}\n")
  endif()
endforeach()
foreach(n IN LISTS def_names)
  list(FIND header_names "${n}" at)
  if(at EQUAL -1)
    string(APPEND problems "  exported by the .def but not declared in the header: ${n}\n")
  endif()
endforeach()

if(NOT problems STREQUAL "")
  message(FATAL_ERROR "check_exports: ${HEADER} and ${DEF} disagree:\n${problems}")
endif()
message(STATUS "check_exports: ${n_header} functions, header and .def agree")
