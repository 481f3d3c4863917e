/* A recording fake of the runtime's driver, for tests without a network.
 * It stands in for the client layer only: sends, actions and commits are
 * recorded and answered when the test says so (fd_pump), HTTP requests wait
 * until the test completes them, and the wall clock is the test's.
 */
#ifndef PARLEY_TESTS_LUA_FAKE_DRIVER_H
#define PARLEY_TESTS_LUA_FAKE_DRIVER_H

#include "rt.h"

#include <uv.h>

#define FD_MAX 256

typedef struct fd_send {
  char conv[130];
  int kind;            /* parley_content_kind, or 100 + parley_action_kind */
  char text[4096];
  char fallback[4096];
  char title[256];
  char buttons[1024];  /* "label|payload|url;..." */
  char queue[64], note[256], locale[32];
  uint64_t quote_seq;
  char quote_excerpt[512], quote_sender[64];
  uint8_t msg_id[PARLEY_MSG_ID_LEN];
  uint64_t epoch;
  void *send_ud;
  bool answered;
} fd_send;

typedef struct fd_commit {
  char conv[130];
  uint64_t epoch, ack_seq;
  char state[4096];    /* "key=json;key=<deleted>;" sorted as given */
  char tags[512];      /* "+a +b -c " */
  bool answered;
} fd_commit;

typedef struct fd_http {
  char url[512], method[16], body[1024], headers[1024];
  uint32_t timeout_ms;
  plr_http_done done;
  void *cb_ud;
  bool completed, cancelled;
} fd_http;

typedef struct fd {
  parley_runtime *r;
  uv_loop_t loop;
  fd_send sends[FD_MAX];
  size_t nsends;
  fd_commit commits[FD_MAX];
  size_t ncommits;
  size_t ncommit_calls;
  fd_http http[16];
  size_t nhttp;
  int64_t now;
  int send_status;     /* status answered for sends */
  int commit_fail;     /* refuse this many commit calls (not connected) */
  bool hold_commits;   /* fd_pump leaves commits unanswered */
  char log[65536];
  FILE *logf;
} fd;

/* Writes a bot folder under a fresh temp dir; files is NULL-terminated
 * pairs of (relative path, content). Returns the dir (static buffer). */
const char *fd_bot_dir(const char *const *files);
void fd_rm_rf(const char *dir);

/* Creates a runtime on the fake driver. Returns 0 or the status; err gets
 * the message. */
int fd_open(fd *f, const char *dir, char *err, size_t errlen);
void fd_close(fd *f);
/* Log format of the runtimes fd_open creates from now on (0 text). */
void fd_set_log_format(int format);

/* Assigns a conversation (epoch 1, no state). */
void fd_assign(fd *f, const char *conv, const char *locale);
void fd_assign_state(fd *f, const char *conv, const char *locale, uint64_t epoch,
                     uint64_t acked, const parley_state_entry *st, size_t n);
/* Delivers a text message from "cust". */
void fd_message(fd *f, const char *conv, uint64_t seq, const char *text);
void fd_event(fd *f, const parley_event *ev);
/* Answers sends and commits and runs the loop until nothing moves. */
void fd_pump(fd *f);
/* The last send of a conversation, or NULL. */
const fd_send *fd_last_send(const fd *f, const char *conv);
const fd_commit *fd_last_commit(const fd *f, const char *conv);
size_t fd_count_sends(const fd *f, const char *conv);
void fd_http_complete(fd *f, size_t i, int status, const char *body);

#endif
