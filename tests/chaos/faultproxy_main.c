/* parley-faultproxy: the fault proxy of faultproxy.h as a program.
 *
 *   parley-faultproxy --target PORT [--seed N]
 *
 * Prints "faultproxy listening on 127.0.0.1:PORT", then reads commands,
 * one per line, on standard input, and answers each with one line:
 *
 *   cut              reset every connection
 *   cutmid [K]       cut one connection after K bytes of its next
 *                    server->client burst
 *   stall c2s|s2c MS hold one direction for MS milliseconds
 *   slice N          split writes into 1..N byte pieces (0: off)
 *   stats            counters
 *   quit             stop (so does the end of input)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faultproxy.h"

int main(int argc, char **argv) {
  fp_options o = {0};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--target") == 0) o.target_port = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--seed") == 0) o.seed = strtoull(argv[i + 1], NULL, 10);
  }
  if (o.target_port <= 0 || o.target_port > 65535) {
    fprintf(stderr, "usage: %s --target PORT [--seed N]\n", argv[0]);
    return 2;
  }
  fp_proxy *p = NULL;
  if (fp_start(&o, &p) != 0) {
    fprintf(stderr, "faultproxy: cannot listen\n");
    return 1;
  }
  printf("faultproxy listening on 127.0.0.1:%d\n", fp_port(p));
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    char cmd[32] = "", arg[32] = "";
    unsigned long n = 0;
    int got = sscanf(line, "%31s %31s %lu", cmd, arg, &n);
    if (got < 1) continue;
    if (strcmp(cmd, "quit") == 0) break;
    if (strcmp(cmd, "cut") == 0) {
      printf("cut %d\n", fp_cut_all(p));
    } else if (strcmp(cmd, "cutmid") == 0) {
      printf("cutmid %s\n", fp_cut_mid(p, got >= 2 ? strtoul(arg, NULL, 10) : 0) == 0
                                ? "armed" : "no connection");
    } else if (strcmp(cmd, "stall") == 0 && got == 3 &&
               (strcmp(arg, "c2s") == 0 || strcmp(arg, "s2c") == 0)) {
      fp_stall(p, strcmp(arg, "c2s") == 0 ? FP_C2S : FP_S2C, (uint32_t)n);
      printf("stall %s %lu\n", arg, n);
    } else if (strcmp(cmd, "slice") == 0 && got >= 2) {
      fp_slice(p, strtoul(arg, NULL, 10));
      printf("slice %s\n", arg);
    } else if (strcmp(cmd, "stats") == 0) {
      fp_stats s;
      fp_get_stats(p, &s);
      printf("accepted=%llu refused=%llu cut=%llu cut_mid=%llu live=%llu c2s=%llu s2c=%llu\n",
             (unsigned long long)s.accepted, (unsigned long long)s.refused,
             (unsigned long long)s.cut, (unsigned long long)s.cut_mid,
             (unsigned long long)s.live, (unsigned long long)s.bytes_c2s,
             (unsigned long long)s.bytes_s2c);
    } else {
      printf("error: unknown command\n");
    }
    fflush(stdout);
  }
  fp_stop(p);
  return 0;
}
