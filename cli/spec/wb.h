/* `parley test`: the shared state of the runner over the gateway. One
 * runner per process (struct wb); its parts live in files of their own:
 *   runner.c   the cases, the settle loop, the fault schedule, the setup;
 *   steps.c    what each step does over the wire;
 *   driver.c   the bot runtime on a driver of its own (simulated clock,
 *              HTTP stubs, kills and rebirths);
 *   clients.c  the customer's and the agents' clients and what they saw;
 *   report.c   the PASS/FAIL lines and the side-by-side transcript;
 *   faultproxy.c the connection cutter of --cut.
 * What a step means and whether an expectation holds is decided by the
 * runtime's one spec interpreter (lua/src/spec.h).
 */
#ifndef PARLEY_CLI_SPEC_WB_H
#define PARLEY_CLI_SPEC_WB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include <parley/client.h>

#include "config/config.h"
#include "faultproxy.h"
#include "gateway.h"
#include "rt.h"
#include <parley/runtime.h>
#include "spec.h"
#include "util/clock.h"
#include "util/rand.h"

#define WB_ITEMS_MAX 512
#define WB_KEYS_MAX 128
#define WB_IDS_MAX 4096
#define WB_HTTP_MAX 32
#define WB_FILES_MAX 64
#define WB_AGENTS_MAX 8
#define WB_STEP_TIMEOUT_MS 15000
#define WB_TICK_MS 20
#define WB_SETTLE_ROUNDS 3
#define WB_COL 58
/* A freed client's transport closes some of its descriptors twice, the
 * second time a few loop turns later; a descriptor opened in between (by
 * a new connection) would be closed under its new owner. So nothing new
 * connects until this long after a client was freed. */
#define WB_FREE_QUIET_MS 150

typedef struct wb wb;


/* One thing the customer saw in the conversation. */
typedef struct wb_item {
  uint64_t seq;
  int kind;          /* parley_event_kind */
  char *sender;
  bool from_bot;
  int ctype;         /* parley_content_kind of a message */
  char *text, *title, *image, *labels; /* labels: "\n"-joined */
  size_t n_labels;
  uint64_t quote_seq;
  char *quote_excerpt;
  char *queue, *note, *assignee, *tags, *locale;
  uint8_t id[PARLEY_MSG_ID_LEN];
  bool has_id;
  int step;
} wb_item;

/* An HTTP request answered from a stub on the next loop turn. */
typedef struct wb_http {
  uv_timer_t t;
  wb *w;
  plr_http_done done;
  void *cb_ud;
  int status;
  char *body, *error;
  bool active;
} wb_http;

/* The bot side: a runtime on the real driver with the runner's hooks
 * (driver.c). */
typedef struct wb_bot {
  wb *w;
  parley_runtime *rt;
} wb_bot;

/* An event of the conversation held back from the bot during an `open`
 * step, deep-copied because the client's pointers are borrowed. */
#define WB_HELD_MAX 64
#define WB_HELD_ALLOCS 256
typedef struct wb_held {
  parley_event ev;
  parley_button buttons[16];
  const char *tags[32], *tags_add[32], *tags_remove[32], *state_keys[32];
  void *allocs[WB_HELD_ALLOCS];
  size_t n_allocs;
} wb_held;

typedef struct wb_agent {
  char name[64];
  parley_client *client;
} wb_agent;

struct wb {
  uv_loop_t *loop;
  uv_timer_t tick;
  pg_gateway *gw;
  pg_config *gw_cfg;
  char url[128], token[33], data_dir[256], bot_dir[1024], principal[128];
  wb_bot *bot;
  wb_agent agents[WB_AGENTS_MAX];
  size_t n_agents;
  /* Simulated clock: wall time at start plus what `wait:` added. */
  int64_t clock_base, clock_offset;
  /* msg id -> inbound seq of the handler that sent it (derive hook). */
  uint8_t ids[WB_IDS_MAX][PARLEY_MSG_ID_LEN];
  uint64_t id_seqs[WB_IDS_MAX];
  size_t n_ids;
  /* Current case. */
  const pc_node *stubs;
  char conv[96];
  char locale[64], default_locale[64];
  parley_client *cust;
  unsigned cust_pending, cust_failures;
  uint64_t cust_last_seq, cust_seen, need_seq;
  wb_item items[WB_ITEMS_MAX];
  size_t n_items;
  int step;
  bool with_bot;
  char *cur_tags, *step_start_tags;
  char *state_keys[WB_KEYS_MAX], *state_vals[WB_KEYS_MAX];
  size_t n_state;
  unsigned bot_pending;
  uint64_t bot_max_acked;
  char last_taker[64];
  uint64_t handoff_need;  /* customer events before the last handoff */
  bool bot_has_conv;      /* the current runtime was assigned the conversation */
  char notes[1024]; /* problems seen on the wire during the step */
  bool dup_reply;
  /* Open step: the customer's opening message and what follows it wait
   * until the bot is done with the opening events. */
  bool gate;
  wb_held *held[WB_HELD_MAX];
  size_t n_held;
  /* Faults. */
  bool faults;
  pu_rng rng;
  uv_timer_t kill_timer, cut_timer, rebirth_timer;
  bool kill_armed, cut_armed, rebirth_armed;
  unsigned kills, reconnects;
  wb_proxy proxy;
  bool proxy_on;
  char proxy_url[128];
  bool verbose;
};


static inline char *wb_xdup(const char *s) { return strdup(s ? s : ""); }

/* runner.c */
void wb_note(wb *w, const char *fmt, ...);
uint64_t wb_rnd(wb *w);
typedef bool (*wb_cond)(wb *w);
bool wb_pump_until(wb *w, wb_cond cond, uint32_t timeout_ms);
bool wb_cond_cust_ready(wb *w);
bool wb_cond_no_kill(wb *w);
bool wb_cond_cust_answered(wb *w);
void wb_quiet_after_free(wb *w);

/* driver.c */
extern wb *wb_derive_owner;
void wb_state_clear(wb *w);
const char *wb_state_get(wb *w, const char *key);
void wb_held_drop_all(wb *w);
uint64_t wb_inbound_of(wb *w, const uint8_t id[PARLEY_MSG_ID_LEN]);
const char *wb_client_url(wb *w);
int wb_bot_new(wb *w, char *err, size_t errlen);
void wb_bot_kill(wb *w);
/* Frees the bot (its runtime, driver and client) if there is one. */
void wb_bot_free(wb *w);
void wb_kill_fire(uv_timer_t *t);

/* clients.c */
int wb_cust_new(wb *w);
parley_client *wb_agent_get(wb *w, const char *name);
void wb_agent_on_send_result(parley_client *c, const parley_send_result *r, void *send_ud,
                             void *ud);

/* steps.c */
/* Starts what a step does. Returns false with why filled when the step
 * cannot run; *skip when it cannot run over the gateway at all. */
bool wb_step_start(wb *w, const plr_spec_step *st, bool *skip, char *why, size_t whylen);
const char *wb_step_title(const pc_node *st, char *buf, size_t size);

/* report.c */
typedef struct wb_lines {
  char *buf[256];
  size_t n;
} wb_lines;
void wb_add_line(wb_lines *l, const char *fmt, ...);
void wb_free_lines(wb_lines *l);
void wb_render_item(wb_lines *l, const wb_item *it);
void wb_side_by_side_header(FILE *out);
void wb_side_by_side_rows(FILE *out, const wb_lines *left, const wb_lines *right);

#endif
