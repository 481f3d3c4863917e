/* `parley new bot NAME [--dir DIR]`: writes a starting bot that passes
 * `parley lint` and `parley test` as written: bot.yaml with a typed
 * setting, bot.lua with a greeting, a command, a middleware and a dialog,
 * English templates, a spec that covers each, and a sidecar.yaml for
 * `parley run --config`. Nothing existing is overwritten. */
#include "cli.h"

#include <parley/error.h>

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char BOT_YAML[] =
    "# %s: a Parley bot. Keys: docs/lua-api.md (\"bot.yaml\").\n"
    "name: %s\n"
    "description: A starting bot; edit bot.lua, templates/ and spec/.\n"
    "default_locale: en\n"
    "fallback_reply: error\n"
    "# What settings must hold, checked by `parley lint` and at start-up.\n"
    "settings_schema:\n"
    "  support_hours: {type: string, default: \"9:00-17:00\", pattern: \"^[0-9:]+-[0-9:]+$\"}\n"
    "settings:\n"
    "  support_hours: \"9:00-18:00\"\n";

static const char BOT_LUA[] =
    "-- The bot's handlers: docs/lua-api.md describes every call.\n"
    "local bot = parley.bot()\n"
    "local settings = parley.config.settings\n"
    "\n"
    "-- Middleware runs before every handler: here it counts the customer's\n"
    "-- messages in the conversation's state.\n"
    "bot:use(function(ctx, ev, next)\n"
    "  if ev.kind == \"message\" then ctx.state.messages = (ctx.state.messages or 0) + 1 end\n"
    "  return next()\n"
    "end)\n"
    "\n"
    "-- A dialog: asks its steps in order, checks the answers, and keeps its\n"
    "-- progress in ctx.state, so a restart resumes at the same step.\n"
    "bot:dialog(\"contact\", {\n"
    "  { save = \"name\", ask = \"ask_name\" },\n"
    "  { save = \"email\", ask = \"ask_email\", check = \"^[^@%s]+@[^@%s]+$\", retry = \"bad_email\" },\n"
    "  start = \"^contact$\", cancelled = \"cancelled\",\n"
    "  done = function(ctx, contact)\n"
    "    ctx.state.contact = contact\n"
    "    ctx:reply(ctx:t(\"thanks\", contact))\n"
    "  end,\n"
    "})\n"
    "\n"
    "bot:on_open(function(ctx) ctx:reply(ctx:t(\"greeting\")) end)\n"
    "\n"
    "bot:command(\"/hours\", function(ctx)\n"
    "  ctx:reply(ctx:t(\"hours\", { hours = settings.support_hours }))\n"
    "end)\n"
    "\n"
    "bot:on_message(function(ctx, msg)\n"
    "  ctx:reply({ quick_replies = { text = ctx:t(\"menu\"), options = { \"contact\", \"/hours\" } } })\n"
    "end)\n";

static const char TEMPLATES[] =
    "greeting: \"Hello! Type 'contact' to leave your details, or /hours.\"\n"
    "menu: \"I can take your contact details or tell you our hours.\"\n"
    "hours: \"We answer from {hours}.\"\n"
    "ask_name: \"What is your name?\"\n"
    "ask_email: \"Thanks, {name}. Your email address?\"\n"
    "bad_email: \"That does not look like an email address. Your email address?\"\n"
    "thanks: \"Thank you, {name}: we will write to {email}.\"\n"
    "cancelled: \"No problem. Type 'contact' to start again.\"\n"
    "error: \"Sorry, something went wrong on our side.\"\n";

static const char SPEC[] =
    "# `parley test .` runs these cases over a real gateway; add --faults to\n"
    "# run them again with the bot killed and reconnected at random moments.\n"
    "- name: greeting and hours\n"
    "  steps:\n"
    "    - open: {}\n"
    "      expect:\n"
    "        - reply: \"Hello! Type 'contact' to leave your details, or /hours.\"\n"
    "    - send: \"/hours\"\n"
    "      expect:\n"
    "        - reply: \"We answer from 9:00-18:00.\"\n"
    "    - send: \"what can you do?\"\n"
    "      expect:\n"
    "        - quick_replies: {text: \"I can take your contact details or tell you our hours.\","
    " options: [contact, /hours]}\n"
    "\n"
    "- name: the contact dialog checks the email and keeps the answers\n"
    "  steps:\n"
    "    - send: \"contact\"\n"
    "      expect:\n"
    "        - reply: \"What is your name?\"\n"
    "    - send: \"Ana\"\n"
    "      expect:\n"
    "        - reply: \"Thanks, Ana. Your email address?\"\n"
    "    - send: \"ana at example\"\n"
    "      expect:\n"
    "        - reply: \"That does not look like an email address. Your email address?\"\n"
    "    - send: \"ana@example.com\"\n"
    "      expect:\n"
    "        - reply: \"Thank you, Ana: we will write to ana@example.com.\"\n"
    "        - state: {contact: {name: Ana, email: ana@example.com}, messages: 4}\n";

static const char SIDECAR[] =
    "# `parley run . --config sidecar.yaml`: keys in docs/config.md (\"Sidecar keys\").\n"
    "gateway:\n"
    "  url: ws://127.0.0.1:8470/\n"
    "  token_env: %s_TOKEN\n"
    "ops:\n"
    "  listen: 127.0.0.1\n"
    "  port: 9090\n"
    "log:\n"
    "  format: text\n"
    "  level: info\n"
    "shutdown:\n"
    "  drain: 10s\n";

static int usage_to(FILE *out) {
  fprintf(out, "usage: parley new bot NAME [--dir DIR]\n"
               "  Writes DIR/NAME (default ./NAME): bot.yaml, bot.lua, templates/en.yaml,\n"
               "  spec/start.yaml and sidecar.yaml, which pass `parley lint` and\n"
               "  `parley test` as written. NAME is 1 to 64 of [a-z0-9_-], starting with\n"
               "  a letter or digit. An existing folder is left alone.\n");
  return out == stdout ? 0 : 2;
}

static bool valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 64) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && (c == '-' || c == '_'));
    if (!ok) return false;
  }
  return true;
}

static int write_file(const char *dir, const char *rel, const char *text) {
  char path[2048];
  snprintf(path, sizeof path, "%s/%s", dir, rel);
  FILE *f = fopen(path, "wx");
  if (!f) {
    fprintf(stderr, "parley new: cannot create %s: %s\n", path, strerror(errno));
    return 1;
  }
  bool ok = fputs(text, f) >= 0;
  ok = fclose(f) == 0 && ok;
  if (!ok) {
    fprintf(stderr, "parley new: cannot write %s: %s\n", path, strerror(errno));
    return 1;
  }
  return 0;
}

int cli_new(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) return usage_to(stdout);
  if (argc < 3 || strcmp(argv[1], "bot")) return usage_to(stderr);
  const char *name = argv[2];
  const char *parent = ".";
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--dir") && i + 1 < argc) parent = argv[++i];
    else return usage_to(stderr);
  }
  if (!valid_name(name)) {
    fprintf(stderr, "parley new: bad bot name '%s': 1 to 64 of [a-z0-9_-], starting with a "
                    "letter or digit\n", name);
    return 2;
  }
  char dir[1500];
  snprintf(dir, sizeof dir, "%s/%s", parent, name);
  if (mkdir(dir, 0777) != 0) {
    fprintf(stderr, "parley new: cannot create %s: %s%s\n", dir, strerror(errno),
            errno == EEXIST ? " (nothing was changed)" : "");
    return 1;
  }
  char sub[1600];
  snprintf(sub, sizeof sub, "%s/templates", dir);
  int rc = mkdir(sub, 0777);
  snprintf(sub, sizeof sub, "%s/spec", dir);
  rc = rc || mkdir(sub, 0777);
  if (rc) {
    fprintf(stderr, "parley new: cannot create %s: %s\n", sub, strerror(errno));
    return 1;
  }
  char text[4096], env[80];
  size_t j = 0;
  for (const char *c = name; *c && j + 1 < sizeof env; c++)
    env[j++] = *c == '-' ? '_' : (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : *c);
  env[j] = '\0';
  snprintf(text, sizeof text, BOT_YAML, name, name);
  rc = write_file(dir, "bot.yaml", text);
  rc = rc || write_file(dir, "bot.lua", BOT_LUA);
  rc = rc || write_file(dir, "templates/en.yaml", TEMPLATES);
  rc = rc || write_file(dir, "spec/start.yaml", SPEC);
  snprintf(text, sizeof text, SIDECAR, env);
  rc = rc || write_file(dir, "sidecar.yaml", text);
  if (rc) return 1;
  printf("created %s: bot.yaml bot.lua templates/en.yaml spec/start.yaml sidecar.yaml\n"
         "next: parley lint %s && parley test %s\n", dir, dir, dir);
  return 0;
}
