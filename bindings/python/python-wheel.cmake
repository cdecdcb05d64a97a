# python-wheel: the Python package as a platform wheel holding this build's library.
#
#   cmake --build --preset linux --target python-wheel     -> build/linux/python/iocpsrv-*-manylinux_*.whl
#   cmake --build --preset windows --target python-wheel   -> build/windows/python/iocpsrv-*-win_amd64.whl
#
# Built on request only (not part of ALL): the default build and CI do not grow. The
# wheel's tag is read from the library itself (bindings/python/build_backend), so the
# MinGW cross build gives the win_amd64 wheel on a Linux host.
find_program(IOCPSRV_PYTHON NAMES python3 python
  DOC "Python 3.9+ that builds the iocpsrv wheel (standard library only)")
if(IOCPSRV_PYTHON)
  set(iocpsrv_wheel_dir ${CMAKE_BINARY_DIR}/python)
  add_custom_target(python-wheel
    COMMAND ${IOCPSRV_PYTHON} ${CMAKE_CURRENT_LIST_DIR}/build_backend/iocpsrv_build.py
            wheel --native $<TARGET_FILE:iocpsrv> --out ${iocpsrv_wheel_dir}
    DEPENDS iocpsrv
    COMMENT "Python wheel with the iocpsrv library in ${iocpsrv_wheel_dir}"
    VERBATIM)
endif()
