/* Internals of the runtime shared by its files: runtime.c (conversations,
 * jobs, inbound, lifecycle, reload), commit.c, timers.c, bindings.c (the C
 * primitives runtime.lua calls) and log.c. Not for use outside lua/src.
 */
#ifndef PARLEY_LUA_RT_INT_H
#define PARLEY_LUA_RT_INT_H

#include "vm.h"

#define PLR_BUCKETS 4096
#define PLR_COMMIT_BATCH 256
#define PLR_REPLIES_MAX 100
/* Buttons or quick replies of one reply (runtime.lua's BUTTONS_MAX). */
#define PLR_BUTTONS_MAX 12
/* Bytes of a reply's text (runtime.lua's TEXT_MAX). */
#define PLR_TEXT_MAX (16 * 1024)
#define PLR_TIMERS_MAX 32
#define PLR_TIMER_ORDINAL 0x40000000u
#define PLR_IDEM_ORDINAL 0xFFFFFFFFu
#define PLR_HTTP_HEADERS_MAX 64
/* A commit the client refused to take (not connected) is tried again. */
#define PLR_COMMIT_RETRY_MS 1000
/* A timer that came due while its conversation was elsewhere fires this
 * long after the conversation comes back, so the events that arrive with
 * the assignment are handled first. */
#define PLR_ASSIGN_GRACE_MS 1000

/* JOB_SEND: a proactive message (parley_runtime_send_proactive); it runs no
 * handler and acknowledges no event. */
/* JOB_OPEN: the open of a proactive conversation (proactive.c); never
 * queued on a conversation, only the open's send_ud. */
typedef enum job_kind { JOB_EVENT, JOB_TIMER, JOB_ACK, JOB_SEND, JOB_OPEN } job_kind;

/* The copied content and the callback of a JOB_SEND. */
typedef struct plr_psend {
  parley_content content;
  parley_button *buttons;
  char *strings[6 + 3 * 16]; /* 6 content fields, 3 per button */
  size_t nstrings;
  uint8_t msg_id[PARLEY_MSG_ID_LEN];
  void (*done)(void *ud, int status, uint64_t seq, bool duplicate);
  void *ud;
} plr_psend;

typedef struct plr_conv plr_conv;

typedef struct plr_job {
  struct plr_job *next;
  plr_conv *conv;
  job_kind kind;
  uint64_t seq;        /* inbound seq; for timers the last handled seq */
  uint64_t timer_id;
  int ev_ref;          /* registry ref of the event table */
  lua_State *co;
  int co_ref;
  int64_t budget;
  int64_t cpu_ns;      /* time spent running, across resumes */
  bool exhausted;
  uint32_t ordinal;    /* replies and actions sent so far */
  uint32_t pending_sends;
  bool started, done, failed, finished, waiting_http;
  /* The handler ended leaving nothing for rt.finish to apply (no state, no
   * tag changes, no timers): its end needs no call into Lua. */
  bool quiet;
  void *http_handle;
  int64_t start_ns;    /* when the handler started, for the latency */
  char handler[96];    /* the handler's name for metrics (C.metric), or "" */
  plr_psend *psend;    /* JOB_SEND only */
} plr_job;

typedef struct plr_uvt {
  uv_timer_t h;
  parley_runtime *r;
  plr_conv *conv;
  uint64_t id;
} plr_uvt;

typedef struct plr_ctimer {
  uint64_t id;
  int64_t due;
  plr_uvt *uvt;  /* armed handle, or NULL */
  bool queued;   /* fired; its job waits in the queue */
} plr_ctimer;

struct plr_conv {
  plr_conv *hnext;
  plr_conv *rnext;       /* commit-ready list */
  char *id;
  uint64_t epoch;
  bool revoked, ready, pumping, assigning;
  bool leaving;          /* a handler closed it */
  plr_job *head, *tail;  /* queued, not started */
  uint32_t qlen;
  plr_job *job;          /* running */
  uint64_t last_seq;     /* highest seq queued */
  uint64_t handled_seq;  /* highest seq whose changes are in the commit record */
  uint64_t sent_seq;     /* highest ack_seq put in a commit frame */
  uint64_t committed;    /* highest ack_seq the gateway applied */
  /* Commits handed to the client and not yet answered, and how many of
   * those were sent before the last Assign: the answers come back in the
   * order the commits went, and those of the older ones say nothing about
   * the record the Assign rebuilt. */
  uint32_t commits_out, commits_stale;
  /* Whether runtime.lua's record may hold changes that no commit carried
   * yet (pending state keys, tags to add or remove). When it cannot, a
   * commit is only a watermark and is built without calling into Lua; every
   * call that can add changes (finish, fail, assign, a refused commit, a
   * reload) sets it. */
  bool dirty;
  /* Ordinals of the commits handed to the client and of those answered
   * (answers come in the order the commits went), and the ordinal of the
   * newest commit that carried changes: runtime.lua keeps a record of those
   * only, so an answer after that one needs no call into Lua. */
  uint64_t commits_made, commits_answered, changes_upto;
  plr_ctimer *timers;    /* PLR_TIMERS_MAX slots, allocated on first use */
  size_t ntimers;
  bool closed;           /* a CLOSED event was queued */
  bool forgotten;        /* its Lua record was dropped */
};

#define PLR_CO_POOL 32

struct parley_runtime {
  uv_loop_t *loop;
  plr_driver drv;
  plr_vm *vm, *next_vm;
  char *principal;
  char *bot_dir;
  struct plog_logger *log; /* the SDK's logger (ops/log.h), on the embedder's stream */
  void (*on_idle)(void *);
  void *ud;
  void (*on_observe)(void *, parley_runtime_observe, double);
  struct pmet_registry *metrics; /* per-handler metrics (rt_metrics.c), or NULL */
  struct plr_open *opens; /* proactive conversations under way (proactive.c) */
  /* The series of the handlers run last (rt_metrics.c): looking a series
   * up in the registry checks its name and labels and scans the family,
   * which cost more than the rest of the metrics on every event. */
  struct plr_metric_slot {
    char handler[96];
    struct pmet_metric *runs[2]; /* outcome ok, error */
    struct pmet_metric *duration;
  } metric_slots[8];
  unsigned metric_next;
  plr_conv *buckets[PLR_BUCKETS];
  size_t nconvs;
  plr_job *current;
  uint32_t jobs_running;
  uint64_t queued;
  plr_conv *ready_head;
  uint64_t inflight;
  uv_timer_t flush_timer;
  bool flush_armed;
  uv_timer_t drain_timer;
  int handles_open;
  bool stopping, stop_called_driver, stop_done_called, freeing, handles_closed;
  void (*stop_done)(void *);
  void *stop_ud;
  plr_stats stats;
  /* Coroutines whose handler returned normally, kept (with their registry
   * references) for the next handlers: making and collecting a thread per
   * event was about 40% of a handler call's cost (bench/micro). They belong
   * to r->vm's state and are forgotten when it is replaced. */
  lua_State *co_pool[PLR_CO_POOL];
  int co_pool_ref[PLR_CO_POOL];
  int n_co_pool;
};

/* runtime.c */
plr_conv *plr_conv_find(const parley_runtime *r, const char *id);
/* A zeroed job of that kind at the conversation's position seq, with no
 * Lua references yet (calloc; NULL when out of memory). */
plr_job *plr_job_new(job_kind kind, uint64_t seq);
/* Queues j on c, starts what can start and tells the embedder when the
 * runtime went idle: how every job enters a conversation. */
void plr_conv_submit(parley_runtime *r, plr_conv *c, plr_job *j);
/* Starts queued jobs of c until one has to wait. */
void plr_conv_pump(parley_runtime *r, plr_conv *c);
void plr_rt_maybe_idle(parley_runtime *r);
void plr_rt_derive(parley_runtime *r, const char *conv, uint64_t seq, uint32_t ord,
                   uint8_t out[PARLEY_MSG_ID_LEN]);
/* Frees the runtime's memory once its last uv handle is closed. */
void plr_rt_release(parley_runtime *r);
void plr_job_resume(parley_runtime *r, plr_job *j, int nargs);
void plr_job_fail(parley_runtime *r, plr_job *j, const char *why);
void plr_job_maybe_complete(parley_runtime *r, plr_job *j);

/* commit.c */
/* The conversation has handled events to acknowledge: flush soon. */
void plr_commit_ready(parley_runtime *r, plr_conv *c);
void plr_conv_maybe_forget(parley_runtime *r, plr_conv *c);

/* timers.c */
void plr_ctimer_disarm(plr_ctimer *ct);
int plr_l_sync_timers(lua_State *L);

#endif
