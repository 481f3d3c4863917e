/* The fault proxy of `parley test --cut`: a TCP relay on the runner's loop
 * between the clients and the embedded gateway, which cuts every
 * connection at the moments the fault schedule picks. The clients see a
 * dropped connection, reconnect and resume on their own. */
#ifndef PARLEY_CLI_SPEC_FAULTPROXY_H
#define PARLEY_CLI_SPEC_FAULTPROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>


#define WB_PAIRS_MAX 64
#define WB_PROXY_QUEUE_MAX (4u << 20)

typedef struct wb_pair wb_pair;
typedef struct wb_side {
  uv_tcp_t tcp;
  wb_pair *pair;
  bool open;
} wb_side;

struct wb_pair {
  wb_side down, up; /* down: the client; up: the gateway */
  uv_connect_t conn;
  struct wb_proxy *px;
  int closing;
  bool cut;
  uint64_t up_since; /* loop time the upstream connected; 0 before */
};

typedef struct wb_proxy {
  uv_loop_t *loop;
  uv_tcp_t listener;
  struct sockaddr_in target;
  int port;
  wb_pair *pairs[WB_PAIRS_MAX];
  size_t n_pairs;
  unsigned cuts;
} wb_proxy;

/* Listens on an ephemeral loopback port (px->port) and relays to
 * target_port. Returns 0 or PARLEY_EIO. */
int px_start(wb_proxy *px, uv_loop_t *loop, int target_port);
/* Cuts every relayed connection that has been up for a while. */
void px_cut_all(wb_proxy *px);
/* Cuts everything and closes the listener (cb when it is closed). */
void px_stop(wb_proxy *px, uv_close_cb cb);

#endif
