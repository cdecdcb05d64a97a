# install(): the library, its header, an exported CMake package (find_package(iocpsrv))
# and a pkg-config file.
include(CMakePackageConfigHelpers)
install(TARGETS iocpsrv EXPORT iocpsrvTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT iocpsrvTargets NAMESPACE iocpsrv::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/iocpsrv)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/iocpsrvConfig.cmake.in
  ${PROJECT_BINARY_DIR}/iocpsrvConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/iocpsrv)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/iocpsrvConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/iocpsrvConfig.cmake
              ${PROJECT_BINARY_DIR}/iocpsrvConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/iocpsrv)
configure_file(${PROJECT_SOURCE_DIR}/cmake/iocpsrv.pc.in ${PROJECT_BINARY_DIR}/iocpsrv.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/iocpsrv.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
