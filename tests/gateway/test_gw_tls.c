/* The gateway with tls.cert and tls.key speaks wss://: a TLS client
 * upgrades and completes Hello/Welcome, a plain-text client is refused.
 * The certificate is a throwaway self-signed one made with the openssl
 * command; without that command the test is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <parley/error.h>

#include "gwharness.h"

static int tcp_connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    close(fd);
    return -1;
  }
  struct timeval tv = {3, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

static const char upgrade[] =
    "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Protocol: parley.v1\r\nAuthorization: Bearer carol-token\r\n\r\n";

/* Reads until the blank line that ends the response head. */
static int read_head(SSL *ssl, char *buf, size_t size) {
  size_t n = 0;
  while (n + 1 < size) {
    int r = SSL_read(ssl, buf + n, 1);
    if (r <= 0) return -1;
    n++;
    if (n >= 4 && !memcmp(buf + n - 4, "\r\n\r\n", 4)) break;
  }
  buf[n] = '\0';
  return (int)n;
}

static void test_tls(void **state) {
  (void)state;
  if (system("openssl version > /dev/null 2>&1") != 0) skip();
  char *dir = gwh_tmpdir();
  char cmd[1024];
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
           "-keyout %s/key.pem -out %s/cert.pem > /dev/null 2>&1",
           dir, dir);
  assert_int_equal(system(cmd), 0);
  char extra[1024];
  snprintf(extra, sizeof extra, "tls:\n  cert: %s/cert.pem\n  key: %s/key.pem\n", dir, dir);
  gwh *h = gwh_start(dir, NULL, extra);
  assert_non_null(h);

  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  assert_non_null(ctx);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL); /* throwaway self-signed certificate */
  int fd = tcp_connect(gwh_port(h));
  assert_true(fd >= 0);
  SSL *ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  assert_int_equal(SSL_connect(ssl), 1);
  assert_int_equal(SSL_write(ssl, upgrade, (int)strlen(upgrade)), (int)strlen(upgrade));
  char head[2048];
  assert_true(read_head(ssl, head, sizeof head) > 0);
  assert_memory_equal(head, "HTTP/1.1 101", 12);
  /* Hello in a masked binary frame; Welcome comes back. */
  Parley__V1__Hello he = PARLEY__V1__HELLO__INIT;
  he.min_version = 1;
  he.max_version = 1;
  he.principal = "carol";
  he.role = R_CUSTOMER;
  pw_frame f = PARLEY__V1__FRAME__INIT;
  f.body_case = PARLEY__V1__FRAME__BODY_HELLO;
  f.hello = &he;
  uint8_t *enc;
  size_t len;
  assert_int_equal(pw_encode(&f, 6, &enc, &len), 0);
  assert_true(len < 126);
  enc[0] = 0x82;
  enc[1] = (uint8_t)(0x80 | len);
  memset(enc + 2, 0, 4); /* a zero mask leaves the payload as it is */
  assert_int_equal(SSL_write(ssl, enc, (int)(len + 6)), (int)(len + 6));
  free(enc);
  uint8_t hdr[2];
  assert_int_equal(SSL_read(ssl, hdr, 2), 2);
  assert_int_equal(hdr[0], 0x82);
  size_t plen = hdr[1] & 0x7f;
  assert_true(plen < 126);
  uint8_t body[128];
  size_t got = 0;
  while (got < plen) {
    int r = SSL_read(ssl, body + got, (int)(plen - got));
    assert_true(r > 0);
    got += (size_t)r;
  }
  pw_frame *w = NULL;
  assert_int_equal(pw_decode(body, plen, 0, &w, NULL), 0);
  assert_int_equal(w->body_case, PARLEY__V1__FRAME__BODY_WELCOME);
  pw_frame_free(w);
  SSL_free(ssl);
  close(fd);
  SSL_CTX_free(ctx);

  /* Plain text on the TLS port gets no upgrade. */
  wsc *plain = wsc_connect("127.0.0.1", gwh_port(h), "Bearer carol-token", 1000);
  assert_null(plain);
  gwh_stop(h);
  gwh_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tls)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
