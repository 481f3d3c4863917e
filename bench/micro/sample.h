/* The inbound message the micro-benchmarks work on: a customer's text
 * message as the gateway delivers it, with a 16-byte message id and about
 * 200 bytes of mixed ASCII, Spanish and Chinese UTF-8 text. Every program
 * of bench/micro uses the same content, so their figures describe the
 * same event.
 */
#ifndef PARLEY_BENCH_MICRO_SAMPLE_H
#define PARLEY_BENCH_MICRO_SAMPLE_H

#include <stdint.h>

#define SAMPLE_CONV "shop-eu:conv-20261128-7f3a9c"
#define SAMPLE_SEQ 1842u
#define SAMPLE_TIME_MS 1795862400123ll
#define SAMPLE_SENDER "cust:maria.garcia@example.es"
/* 202 bytes: ASCII, Spanish accents and Chinese (3 bytes a character). */
#define SAMPLE_TEXT                                                          \
  "Hola, mi pedido #A-20931 no ha llegado todavía y el seguimiento dice " \
  "'en tránsito' desde el lunes. ¿Podéis revisarlo? 谢谢，我的订单还没有到。" \
  " Es urgente, por favor. 请尽快。Gracias!"
#define SAMPLE_TAG0 "shipping"
#define SAMPLE_TAG1 "priority:high"

static const uint8_t sample_msg_id[16] = {0x6b, 0x1f, 0x8e, 0x02, 0x95, 0xc4, 0x4a, 0x7d,
                                          0xb3, 0x10, 0x5e, 0xaa, 0x07, 0xd9, 0x3c, 0x61};

#endif
