/*
 * iocpsrv-consumer -- the smallest program built against an installed iocpsrv.
 *
 * Creates a server with an echo callback, listens on 127.0.0.1 port 0, prints the
 * library version and the port, sends one packet to itself over a plain socket and
 * checks the echo, then stops and destroys the server. Exits 0 when all of that worked.
 */
#include <iocpsrv.h>

#include <stdio.h>
#include <string.h>

#ifdef _WIN32
#  include <winsock2.h>
#  include <ws2tcpip.h>
typedef SOCKET sock_t;
#  define sock_close closesocket
#else
#  include <arpa/inet.h>
#  include <netinet/in.h>
#  include <sys/socket.h>
#  include <unistd.h>
typedef int sock_t;
#  define INVALID_SOCKET (-1)
#  define sock_close close
#endif

static int IOCPSRV_CALL on_packet(iocpsrv_t *server, iocpsrv_conn_id_t conn, void *user,
                                  const uint8_t *data, size_t len) {
  return iocpsrv_send(server, conn, data, len) == 0 ? 0 : 1;
}

/* Send one framed packet to 127.0.0.1:port and read its echo; 0 when it matches. */
static int round_trip(int port, const char *text) {
  unsigned char out[64], in[64];
  size_t len = strlen(text), got = 0;
  struct sockaddr_in sa;
  sock_t fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd == INVALID_SOCKET) return -1;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  out[0] = (unsigned char)len; /* 4-byte little-endian length, then the payload */
  out[1] = out[2] = out[3] = 0;
  memcpy(out + 4, text, len);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      send(fd, (const char *)out, (int)(4 + len), 0) != (int)(4 + len)) {
    sock_close(fd);
    return -1;
  }
  while (got < 4 + len) {
    int n = (int)recv(fd, (char *)in + got, (int)(sizeof in - got), 0);
    if (n <= 0) break;
    got += (size_t)n;
  }
  sock_close(fd);
  return got == 4 + len && memcmp(in, out, got) == 0 ? 0 : -1;
}

int main(void) {
  iocpsrv_t *server = NULL;
  int rc, port;
#ifdef _WIN32
  WSADATA wsa;
  WSAStartup(MAKEWORD(2, 2), &wsa);
#endif
  if ((iocpsrv_version() >> 16) != IOCPSRV_VERSION_MAJOR) {
    fprintf(stderr, "header and library disagree: header %d.x, library %s\n",
            IOCPSRV_VERSION_MAJOR, iocpsrv_version_string());
    return 1;
  }
  printf("iocpsrv %s\n", iocpsrv_version_string());

  if ((rc = iocpsrv_create(&server, NULL)) < 0) {
    fprintf(stderr, "create: %s\n", iocpsrv_strerror(rc));
    return 1;
  }
  iocpsrv_set_option(server, IOCPSRV_OPT_WORKER_THREADS, 2);
  iocpsrv_set_packet_cb(server, on_packet);
  if ((rc = iocpsrv_listen(server, "127.0.0.1", 0)) < 0) {
    fprintf(stderr, "listen: %s\n", iocpsrv_strerror(rc));
    iocpsrv_destroy(server);
    return 1;
  }
  port = iocpsrv_port(server);
  printf("listening on 127.0.0.1:%d\n", port);

  rc = round_trip(port, "hello from the consumer");
  printf("round trip: %s\n", rc == 0 ? "ok" : "FAILED");

  if (iocpsrv_stop(server, 1000) < 0 || iocpsrv_destroy(server) < 0) {
    fprintf(stderr, "stop/destroy failed\n");
    return 1;
  }
  printf("stopped\n");
  return rc == 0 ? 0 : 1;
}
