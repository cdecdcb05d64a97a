/* Error and reason names, generated from the one table in iocpsrv.h, and the version. */
#include "iocpsrv.h"

#ifndef IOCPSRV_BACKEND_NAME
#  if defined(_WIN32)
#    define IOCPSRV_BACKEND_NAME "iocp"
#  else
#    define IOCPSRV_BACKEND_NAME "epoll"
#  endif
#endif

#define IOCPSRV_STR2_(x) #x
#define IOCPSRV_STR_(x) IOCPSRV_STR2_(x)

unsigned IOCPSRV_CALL iocpsrv_version(void) { return IOCPSRV_VERSION_HEX; }

const char *IOCPSRV_CALL iocpsrv_version_string(void) {
  return IOCPSRV_STR_(IOCPSRV_VERSION_MAJOR) "." IOCPSRV_STR_(IOCPSRV_VERSION_MINOR) "."
      IOCPSRV_STR_(IOCPSRV_VERSION_PATCH) " " IOCPSRV_BACKEND_NAME;
}

const char *IOCPSRV_CALL iocpsrv_strerror(int err) {
  switch (err) {
  case 0: return "success";
#define IOCPSRV_STRERROR_CASE_(name, value, text) case value: return text;
    IOCPSRV_ERRNO_MAP(IOCPSRV_STRERROR_CASE_)
#undef IOCPSRV_STRERROR_CASE_
  default: return "unknown error";
  }
}

const char *IOCPSRV_CALL iocpsrv_err_name(int err) {
  switch (err) {
  case 0: return "IOCPSRV_OK";
#define IOCPSRV_ERR_NAME_CASE_(name, value, text) case value: return "IOCPSRV_E" #name;
    IOCPSRV_ERRNO_MAP(IOCPSRV_ERR_NAME_CASE_)
#undef IOCPSRV_ERR_NAME_CASE_
  default: return "IOCPSRV_EUNKNOWN";
  }
}

const char *IOCPSRV_CALL iocpsrv_reason_name(int reason) {
  switch (reason) {
  case IOCPSRV_REASON_PEER_CLOSED: return "peer-closed";
  case IOCPSRV_REASON_PEER_RESET: return "peer-reset";
  case IOCPSRV_REASON_LOCAL_CLOSE: return "local-close";
  case IOCPSRV_REASON_LOCAL_ABORT: return "local-abort";
  case IOCPSRV_REASON_PROTOCOL_ERROR: return "protocol-error";
  case IOCPSRV_REASON_IDLE_TIMEOUT: return "idle-timeout";
  case IOCPSRV_REASON_SERVER_STOPPED: return "server-stopped";
  case IOCPSRV_REASON_OUT_OF_MEMORY: return "out-of-memory";
  case IOCPSRV_REASON_CONNECT_REFUSED: return "connect-refused";
  case IOCPSRV_REASON_CONNECT_UNREACHABLE: return "connect-unreachable";
  case IOCPSRV_REASON_CONNECT_TIMEOUT: return "connect-timeout";
  case IOCPSRV_REASON_NAME_NOT_RESOLVED: return "name-not-resolved";
  case IOCPSRV_REASON_CONNECT_FAILED: return "connect-failed";
  default: return "unknown";
  }
}
