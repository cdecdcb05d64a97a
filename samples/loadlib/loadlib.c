/*
 * iocpsrv-loadlib -- a host that loads the library at run time, as a third-party
 * program or a language runtime would: LoadLibraryW/GetProcAddress on Windows,
 * dlopen/dlsym on Linux. No link-time dependency on iocpsrv; the header is used only
 * for its types and constants.
 *
 *   iocpsrv-loadlib [PATH-TO-LIBRARY]
 *
 * Default library name: iocpsrv.dll (next to the program) or libiocpsrv.so.1. It starts
 * a server on 127.0.0.1 port 0, connects to itself, sends one packet, checks the echo,
 * stops, unloads, and prints "loadlib: ok". Exit status 0 on success.
 */
#include <iocpsrv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#  define WIN32_LEAN_AND_MEAN
#  include <winsock2.h>
#  include <ws2tcpip.h>
#  include <windows.h>
typedef HMODULE lib_t;
typedef SOCKET sock_t;
#  define close_sock closesocket
#else
#  include <arpa/inet.h>
#  include <dlfcn.h>
#  include <netinet/in.h>
#  include <sys/socket.h>
#  include <sys/time.h>
#  include <unistd.h>
typedef void *lib_t;
typedef int sock_t;
#  define close_sock close
#endif

/* The functions this host uses, resolved by name. */
typedef struct api_s {
  unsigned(IOCPSRV_CALL *version)(void);
  const char *(IOCPSRV_CALL *version_string)(void);
  const char *(IOCPSRV_CALL *strerror)(int);
  int(IOCPSRV_CALL *create)(iocpsrv_t **, void *);
  int(IOCPSRV_CALL *set_packet_cb)(iocpsrv_t *, iocpsrv_packet_cb);
  int(IOCPSRV_CALL *listen)(iocpsrv_t *, const char *, int);
  int(IOCPSRV_CALL *port)(iocpsrv_t *);
  int(IOCPSRV_CALL *send)(iocpsrv_t *, iocpsrv_conn_id_t, const void *, size_t);
  int(IOCPSRV_CALL *stop)(iocpsrv_t *, int);
  int(IOCPSRV_CALL *destroy)(iocpsrv_t *);
} api_t;

static api_t api;

static int fail(const char *what, const char *detail) {
  fprintf(stderr, "loadlib: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  return 1;
}

static lib_t load(const char *path) {
#ifdef _WIN32
  wchar_t wide[MAX_PATH];
  if (!MultiByteToWideChar(CP_UTF8, 0, path, -1, wide, MAX_PATH)) return NULL;
  return LoadLibraryW(wide);
#else
  return dlopen(path, RTLD_NOW | RTLD_LOCAL);
#endif
}

static void *symbol(lib_t lib, const char *name) {
#ifdef _WIN32
  return (void *)GetProcAddress(lib, name);
#else
  return dlsym(lib, name);
#endif
}

static void unload(lib_t lib) {
#ifdef _WIN32
  FreeLibrary(lib);
#else
  dlclose(lib);
#endif
}

/* Resolve every entry of `api`; returns the first missing name or NULL. */
static const char *resolve(lib_t lib) {
#define RESOLVE(field, name)                                   \
  do {                                                         \
    void *p_ = symbol(lib, name);                              \
    if (!p_) return name;                                      \
    memcpy(&api.field, &p_, sizeof p_); /* object -> function */ \
  } while (0)
  RESOLVE(version, "iocpsrv_version");
  RESOLVE(version_string, "iocpsrv_version_string");
  RESOLVE(strerror, "iocpsrv_strerror");
  RESOLVE(create, "iocpsrv_create");
  RESOLVE(set_packet_cb, "iocpsrv_set_packet_cb");
  RESOLVE(listen, "iocpsrv_listen");
  RESOLVE(port, "iocpsrv_port");
  RESOLVE(send, "iocpsrv_send");
  RESOLVE(stop, "iocpsrv_stop");
  RESOLVE(destroy, "iocpsrv_destroy");
#undef RESOLVE
  return NULL;
}

static int IOCPSRV_CALL on_packet(iocpsrv_t *srv, iocpsrv_conn_id_t conn, void *user,
                                  const uint8_t *data, size_t len) {
  (void)user;
  return api.send(srv, conn, data, len) != 0; /* close the client if the echo fails */
}

/* Connect to 127.0.0.1:port, send one framed packet, read the framed echo back. */
static int round_trip(int port, const char *text) {
  sock_t s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((unsigned short)port);
  a.sin_addr.s_addr = htonl(0x7f000001);
#ifdef _WIN32
  DWORD tmo = 10000;
#else
  struct timeval tmo = {10, 0};
#endif
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, (const char *)&tmo, sizeof tmo);
  if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) {
    close_sock(s);
    return fail("connect", NULL);
  }
  size_t n = strlen(text);
  unsigned char out[256], in[256];
  out[0] = (unsigned char)n; /* 4-byte little-endian length */
  out[1] = out[2] = out[3] = 0;
  memcpy(out + 4, text, n);
  int rc = send(s, (const char *)out, (int)(n + 4), 0) == (int)(n + 4) ? 0 : 1;
  size_t got = 0;
  while (rc == 0 && got < n + 4) {
    int r = recv(s, (char *)in + got, (int)(n + 4 - got), 0);
    if (r <= 0) rc = fail("no echo", NULL);
    else got += (size_t)r;
  }
  close_sock(s);
  if (rc == 0 && memcmp(in, out, n + 4) != 0) rc = fail("echo differs", NULL);
  return rc;
}

int main(int argc, char **argv) {
#ifdef _WIN32
  const char *path = argc > 1 ? argv[1] : "iocpsrv.dll";
  WSADATA wsa;
  WSAStartup(MAKEWORD(2, 2), &wsa);
#else
  const char *path = argc > 1 ? argv[1] : "libiocpsrv.so.1";
#endif
  lib_t lib = load(path);
  if (!lib) return fail("cannot load", path);
  const char *missing = resolve(lib);
  if (missing) return fail("missing export", missing);
  if (api.version() >> 16 != IOCPSRV_VERSION_MAJOR)
    return fail("incompatible major version", api.version_string());
  printf("loaded %s: iocpsrv %s\n", path, api.version_string());

  iocpsrv_t *srv = NULL;
  int rc = api.create(&srv, NULL);
  if (rc == 0) rc = api.set_packet_cb(srv, on_packet);
  if (rc == 0) rc = api.listen(srv, "127.0.0.1", 0);
  if (rc != 0) return fail("start", api.strerror(rc));
  int failed = round_trip(api.port(srv), "hello through a run-time loaded library");
  api.stop(srv, 1000);
  api.destroy(srv);
  unload(lib);
  if (failed) return 1;
  printf("loadlib: ok\n");
  return 0;
}
