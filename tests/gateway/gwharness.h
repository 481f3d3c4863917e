/* Runs a real gateway on its own thread and loop, on 127.0.0.1 with an
 * ephemeral port and a SQLite file in a temporary directory, and offers
 * small helpers to speak to it through the raw test client. */
#ifndef PARLEY_TEST_GWHARNESS_H
#define PARLEY_TEST_GWHARNESS_H

#include <stdbool.h>
#include <stdint.h>

#include "wire/wire.h"
#include "wsclient.h"

typedef struct gwh gwh;

/* The default test configuration; `extra` is appended (YAML lines, may be
 * NULL) and `limits` replaces the limits block body when not NULL. */
/* The durability setting gwh_start writes ("normal" unless changed). */
extern const char *gwh_durability;
gwh *gwh_start(const char *data_dir, const char *limits, const char *extra);
int gwh_port(const gwh *h);
/* The gateway itself, for figures read while the test's clients are quiet. */
struct pg_gateway *gwh_gateway(gwh *h);
void gwh_stop(gwh *h);

/* A fresh directory under /tmp and its recursive removal. */
char *gwh_tmpdir(void);
void gwh_rmdir(char *dir);

/* Connects with "Authorization: Bearer <token>" (token NULL: no header),
 * sends Hello and waits for Welcome (returned in *welcome when not NULL).
 * NULL when the gateway refuses; *err_code then holds the Error code. */
wsc *gwh_login(gwh *h, const char *principal, int role, const char *token,
               const char *device, pw_frame **welcome, int *err_code);

/* The token of a customer principal minted with the test secret. */
int gwh_customer_token(const char *principal, char out[65]);

/* 16-byte client message ids made from a small number. */
void gwh_msgid(uint8_t id[16], uint32_t n);

int gwh_send_text(wsc *c, const char *conv, uint32_t id, const char *text, uint64_t epoch);
int gwh_send_action(wsc *c, const char *conv, uint32_t id, Parley__V1__Action *a,
                    uint64_t epoch);
/* Waits for the SendAck of id (other frames dropped). */
pw_frame *gwh_wait_ack(wsc *c, uint32_t id, int timeout_ms);
/* Collects Deliver events of conv until seq `upto` arrived; returns how
 * many events were collected into seqs/redelivered (bounded by max). */
int gwh_collect(wsc *c, const char *conv, uint64_t upto, int timeout_ms, uint64_t *seqs,
                bool *redelivered, int max);
int gwh_ack(wsc *c, const char *conv, uint64_t upto);

/* Waits for a frame of the given kind, dropping others. */
pw_frame *gwh_wait(wsc *c, Parley__V1__Frame__BodyCase kind, int timeout_ms);

/* A bot's Commit of one conversation up to ack_seq, with one state entry
 * (key and its JSON, when key is not NULL) and one tag added (when tag is
 * not NULL); returns the CommitResult answering request `req`, or NULL. */
pw_frame *gwh_commit(wsc *bot, const char *conv, uint64_t epoch, uint64_t ack_seq,
                     const char *key, const char *json, const char *tag, uint64_t req);

/* The cmocka fixture most gateway tests share: a gateway in a fresh
 * directory, with the default limits (gwh_fx_setup) or with its own
 * limits block set in gwh_fx_limits before the group runs. */
typedef struct gwh_fx {
  char *dir;
  gwh *h;
} gwh_fx;
extern const char *gwh_fx_limits;
int gwh_fx_setup(void **state);
int gwh_fx_teardown(void **state);

#define R_CUSTOMER PARLEY__V1__ROLE__ROLE_CUSTOMER
#define R_AGENT PARLEY__V1__ROLE__ROLE_AGENT
#define R_BOT PARLEY__V1__ROLE__ROLE_BOT

#endif
