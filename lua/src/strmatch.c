/* Bounded Lua pattern matching for bot code.
 *
 * The matcher below is the pattern-matching engine of Lua 5.4's lstrlib.c
 * (str_find_aux, gmatch, gsub and their helpers), kept line for line in its
 * logic so that bots see exactly the semantics of the standard library. The
 * only addition is a step counter in the match state: every entry into
 * match() and every repetition max_expand/min_expand tries costs a step, and
 * a call that goes over its limit raises PLR_STRMATCH_ERROR. Without it a
 * pattern such as ('a*'):rep(12)..'b' backtracks for hours inside one C
 * call, where the instruction hook cannot stop it.
 *
 * The original code carries this notice:
 *
 * Copyright (C) 1994-2023 Lua.org, PUC-Rio.
 *
 * Permission is hereby granted, free of charge, to any person obtaining
 * a copy of this software and associated documentation files (the
 * "Software"), to deal in the Software without restriction, including
 * without limitation the rights to use, copy, modify, merge, publish,
 * distribute, sublicense, and/or sell copies of the Software, and to
 * permit persons to whom the Software is furnished to do so, subject to
 * the following conditions:
 *
 * The above copyright notice and this permission notice shall be
 * included in all copies or substantial portions of the Software.
 *
 * THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
 * EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF
 * MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.
 * IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY
 * CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,
 * TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE
 * SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
 */
#define _GNU_SOURCE /* memmem */
#include "strmatch.h"

#include <lauxlib.h>

#include <ctype.h>
#include <stddef.h>
#include <string.h>

/* As in lstrlib.c: the recursion limit of match() and the capture limit. */
#define SM_MAXCCALLS 200
#define SM_MAXCAPTURES 32
#define SM_CAP_UNFINISHED (-1)
#define SM_CAP_POSITION (-2)
#define SM_ESC '%'
#define SM_SPECIALS "^$*+?.([%-"

#define uchar(c) ((unsigned char)(c))

typedef struct MatchState {
  const char *src_init; /* init of source string */
  const char *src_end;  /* end ('\0') of source string */
  const char *p_end;    /* end ('\0') of pattern */
  lua_State *L;
  int matchdepth; /* control for recursive depth (to avoid C stack overflow) */
  unsigned char level; /* total number of captures (finished or unfinished) */
  struct {
    const char *init;
    ptrdiff_t len;
  } capture[SM_MAXCAPTURES];
  /* The bound: steps taken by the current call, its limit, the steps
   * already handed to the meter, and the meter (NULL: the cap only). */
  int64_t steps, limit, charged;
  const plr_strmatch_meter *meter;
} MatchState;

/* ---- The step counter ---- */

static const plr_strmatch_meter *sm_meter(lua_State *L, int upvalue) {
  return (const plr_strmatch_meter *)lua_touserdata(L, lua_upvalueindex(upvalue));
}

/* Starts the count of one call: the limit is the cap or the running code's
 * remaining allowance, whichever is smaller. */
static void sm_begin(MatchState *ms, const plr_strmatch_meter *meter) {
  ms->meter = meter;
  ms->steps = 0;
  ms->charged = 0;
  ms->limit = PLR_STRMATCH_STEP_CAP;
  if (meter && meter->allowance) {
    int64_t a = meter->allowance(ms->L);
    if (a < ms->limit) ms->limit = a < 0 ? 0 : a;
  }
}

/* Hands the steps not yet charged to the meter; false means stop now. */
static bool sm_charge(MatchState *ms) {
  int64_t d = ms->steps - ms->charged;
  ms->charged = ms->steps;
  if (!ms->meter || !ms->meter->charge || d <= 0) return true;
  return ms->meter->charge(ms->L, d);
}

/* Counts n steps of work. Scans that are not matcher steps (the bytes a %b
 * walks, a back-reference compares, a [set] is searched) count one step per
 * SM_BYTES_PER_STEP bytes, so no single step hides unbounded work: the
 * deadline is checked at least every PLR_STRMATCH_TICK steps of real work. */
#define SM_BYTES_PER_STEP 16

static void sm_steps(MatchState *ms, int64_t n) {
  int64_t before = ms->steps;
  ms->steps += n;
  if (ms->steps > ms->limit) {
    sm_charge(ms);
    luaL_error(ms->L, PLR_STRMATCH_ERROR);
  }
  if ((before / PLR_STRMATCH_TICK != ms->steps / PLR_STRMATCH_TICK) && !sm_charge(ms))
    luaL_error(ms->L, PLR_STRMATCH_ERROR);
}

static void sm_step(MatchState *ms) { sm_steps(ms, 1); }

static void sm_bytes(MatchState *ms, size_t n) {
  if (n >= SM_BYTES_PER_STEP) sm_steps(ms, (int64_t)(n / SM_BYTES_PER_STEP));
}

/* Ends a call that did not raise: the last steps are charged (a deadline
 * that passed now is the instruction hook's to report). */
static void sm_end(MatchState *ms) { (void)sm_charge(ms); }

/* ---- lstrlib.c ---- */

/* Translates a relative initial string position (negative means back
 * from the end): clips result to [1, inf). */
static size_t posrelatI(lua_Integer pos, size_t len) {
  if (pos > 0)
    return (size_t)pos;
  else if (pos == 0)
    return 1;
  else if (pos < -(lua_Integer)len) /* inverted comparison */
    return 1;                       /* clip to 1 */
  else
    return len + (size_t)pos + 1;
}

static const char *match(MatchState *ms, const char *s, const char *p);

static int check_capture(MatchState *ms, int l) {
  l -= '1';
  if (l < 0 || l >= ms->level || ms->capture[l].len == SM_CAP_UNFINISHED)
    return luaL_error(ms->L, "invalid capture index %%%d", l + 1);
  return l;
}

static int capture_to_close(MatchState *ms) {
  int level = ms->level;
  for (level--; level >= 0; level--)
    if (ms->capture[level].len == SM_CAP_UNFINISHED) return level;
  return luaL_error(ms->L, "invalid pattern capture");
}

static const char *classEnd(MatchState *ms, const char *p) {
  switch (*p++) {
    case SM_ESC: {
      if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (ends with '%%')");
      return p + 1;
    }
    case '[': {
      const char *start = p;
      if (*p == '^') p++;
      do { /* look for a ']' */
        if (p == ms->p_end) luaL_error(ms->L, "malformed pattern (missing ']')");
        if (*(p++) == SM_ESC && p < ms->p_end) p++; /* skip escapes (e.g. '%]') */
      } while (*p != ']');
      sm_bytes(ms, (size_t)(p - start));
      return p + 1;
    }
    default: {
      return p;
    }
  }
}

static int match_class(int c, int cl) {
  int res;
  switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    case 'z': res = (c == 0); break; /* deprecated option */
    default: return (cl == c);
  }
  if (isupper(cl)) res = !res;
  return res;
}

static int matchbracketclass(int c, const char *p, const char *ec) {
  int sig = 1;
  if (*(p + 1) == '^') {
    sig = 0;
    p++; /* skip the '^' */
  }
  while (++p < ec) {
    if (*p == SM_ESC) {
      p++;
      if (match_class(c, uchar(*p))) return sig;
    } else if (*(p + 1) == '-' && (p + 2 < ec)) {
      p += 2;
      if (uchar(*(p - 2)) <= c && c <= uchar(*p)) return sig;
    } else if (uchar(*p) == c)
      return sig;
  }
  return !sig;
}

static int singlematch(MatchState *ms, const char *s, const char *p, const char *ep) {
  if (s >= ms->src_end)
    return 0;
  else {
    int c = uchar(*s);
    switch (*p) {
      case '.': return 1; /* matches any char */
      case SM_ESC: return match_class(c, uchar(*(p + 1)));
      case '[': sm_bytes(ms, (size_t)(ep - p)); return matchbracketclass(c, p, ep - 1);
      default: return (uchar(*p) == c);
    }
  }
}

static const char *matchbalance(MatchState *ms, const char *s, const char *p) {
  if (p >= ms->p_end - 1)
    luaL_error(ms->L, "malformed pattern (missing arguments to '%%b')");
  if (*s != *p)
    return NULL;
  else {
    int b = *p;
    int e = *(p + 1);
    int cont = 1;
    const char *start = s;
    while (++s < ms->src_end) {
      if (*s == e) {
        if (--cont == 0) {
          sm_bytes(ms, (size_t)(s - start));
          return s + 1;
        }
      } else if (*s == b)
        cont++;
      if (((s - start) & 0xFFFF) == 0) sm_bytes(ms, 0x10000);
    }
    sm_bytes(ms, (size_t)(s - start) & 0xFFFF);
  }
  return NULL; /* string ends out of balance */
}

static const char *max_expand(MatchState *ms, const char *s, const char *p,
                              const char *ep) {
  ptrdiff_t i = 0; /* counts maximum expand for item */
  while (singlematch(ms, s + i, p, ep)) {
    sm_step(ms);
    i++;
  }
  /* keeps trying to match with the maximum repetitions */
  while (i >= 0) {
    sm_step(ms);
    const char *res = match(ms, (s + i), ep + 1);
    if (res) return res;
    i--; /* else didn't match; reduce 1 repetition to try again */
  }
  return NULL;
}

static const char *min_expand(MatchState *ms, const char *s, const char *p,
                              const char *ep) {
  for (;;) {
    sm_step(ms);
    const char *res = match(ms, s, ep + 1);
    if (res != NULL)
      return res;
    else if (singlematch(ms, s, p, ep))
      s++; /* try with one more repetition */
    else
      return NULL;
  }
}

static const char *start_capture(MatchState *ms, const char *s, const char *p, int what) {
  const char *res;
  int level = ms->level;
  if (level >= SM_MAXCAPTURES) luaL_error(ms->L, "too many captures");
  ms->capture[level].init = s;
  ms->capture[level].len = what;
  ms->level = (unsigned char)(level + 1);
  if ((res = match(ms, s, p)) == NULL) /* match failed? */
    ms->level--;                        /* undo capture */
  return res;
}

static const char *end_capture(MatchState *ms, const char *s, const char *p) {
  int l = capture_to_close(ms);
  const char *res;
  ms->capture[l].len = s - ms->capture[l].init; /* close capture */
  if ((res = match(ms, s, p)) == NULL)          /* match failed? */
    ms->capture[l].len = SM_CAP_UNFINISHED;     /* undo capture */
  return res;
}

static const char *match_capture(MatchState *ms, const char *s, int l) {
  size_t len;
  l = check_capture(ms, l);
  len = (size_t)ms->capture[l].len;
  sm_bytes(ms, len);
  if ((size_t)(ms->src_end - s) >= len && memcmp(ms->capture[l].init, s, len) == 0)
    return s + len;
  else
    return NULL;
}

static const char *match(MatchState *ms, const char *s, const char *p) {
  sm_step(ms);
  if (ms->matchdepth-- == 0) luaL_error(ms->L, "pattern too complex");
init: /* using goto to optimize tail recursion */
  if (p != ms->p_end) { /* end of pattern? */
    sm_step(ms); /* each pattern item, also those the tail loop walks */
    switch (*p) {
      case '(': {                /* start capture */
        if (*(p + 1) == ')')     /* position capture? */
          s = start_capture(ms, s, p + 2, SM_CAP_POSITION);
        else
          s = start_capture(ms, s, p + 1, SM_CAP_UNFINISHED);
        break;
      }
      case ')': { /* end capture */
        s = end_capture(ms, s, p + 1);
        break;
      }
      case '$': {
        if ((p + 1) != ms->p_end) /* is the '$' the last char in pattern? */
          goto dflt;              /* no; go to default */
        s = (s == ms->src_end) ? s : NULL; /* check end of string */
        break;
      }
      case SM_ESC: { /* escaped sequences not in the format class[*+?-]? */
        switch (*(p + 1)) {
          case 'b': { /* balanced string? */
            s = matchbalance(ms, s, p + 2);
            if (s != NULL) {
              p += 4;
              goto init; /* return match(ms, s, p + 4); */
            } /* else fail (s == NULL) */
            break;
          }
          case 'f': { /* frontier? */
            const char *ep;
            char previous;
            p += 2;
            if (*p != '[') luaL_error(ms->L, "missing '[' after '%%f' in pattern");
            ep = classEnd(ms, p); /* points to what is next */
            previous = (s == ms->src_init) ? '\0' : *(s - 1);
            if (!matchbracketclass(uchar(previous), p, ep - 1) &&
                matchbracketclass(uchar(*s), p, ep - 1)) {
              p = ep;
              goto init; /* return match(ms, s, ep); */
            }
            s = NULL; /* match failed */
            break;
          }
          case '0': case '1': case '2': case '3': case '4':
          case '5': case '6': case '7': case '8': case '9': { /* capture results (%0-%9)? */
            s = match_capture(ms, s, uchar(*(p + 1)));
            if (s != NULL) {
              p += 2;
              goto init; /* return match(ms, s, p + 2) */
            }
            break;
          }
          default: goto dflt;
        }
        break;
      }
      default:
      dflt: { /* pattern class plus optional suffix */
        const char *ep = classEnd(ms, p); /* points to optional suffix */
        /* does not match at least once? */
        if (!singlematch(ms, s, p, ep)) {
          if (*ep == '*' || *ep == '?' || *ep == '-') { /* accept empty? */
            p = ep + 1;
            goto init; /* return match(ms, s, ep + 1); */
          } else       /* '+' or no suffix */
            s = NULL;  /* fail */
        } else {       /* matched once */
          switch (*ep) { /* handle optional suffix */
            case '?': {  /* optional */
              const char *res;
              if ((res = match(ms, s + 1, ep + 1)) != NULL)
                s = res;
              else {
                p = ep + 1;
                goto init; /* else return match(ms, s, ep + 1); */
              }
              break;
            }
            case '+': /* 1 or more repetitions */
              s++;    /* 1 match already done */
              /* fall through */
            case '*': /* 0 or more repetitions */
              s = max_expand(ms, s, p, ep);
              break;
            case '-': /* 0 or more repetitions (minimum) */
              s = min_expand(ms, s, p, ep);
              break;
            default: /* no suffix */
              s++;
              p = ep;
              goto init; /* return match(ms, s + 1, ep); */
          }
        }
        break;
      }
    }
  }
  ms->matchdepth++;
  return s;
}

/* A plain search with glibc's memmem (the two-way algorithm: linear in
 * both lengths), where lstrlib.c's memchr-and-memcmp loop is quadratic: a
 * 3 MB haystack and a 1.5 MB needle took minutes inside one call. */
static const char *lmemfind(const char *s1, size_t l1, const char *s2, size_t l2) {
  if (l2 == 0) return s1; /* empty strings are everywhere */
  if (l2 > l1) return NULL;
  return (const char *)memmem(s1, l1, s2, l2);
}

/* Gets the i-th capture: its length, or SM_CAP_POSITION with the position
 * pushed on the stack. */
static ptrdiff_t get_onecapture(MatchState *ms, int i, const char *s, const char *e,
                                const char **cap) {
  if (i >= ms->level) {
    if (i != 0) luaL_error(ms->L, "invalid capture index %%%d", i + 1);
    *cap = s;
    return e - s;
  } else {
    ptrdiff_t capl = ms->capture[i].len;
    *cap = ms->capture[i].init;
    if (capl == SM_CAP_UNFINISHED)
      luaL_error(ms->L, "unfinished capture");
    else if (capl == SM_CAP_POSITION)
      lua_pushinteger(ms->L, (ms->capture[i].init - ms->src_init) + 1);
    return capl;
  }
}

static void push_onecapture(MatchState *ms, int i, const char *s, const char *e) {
  const char *cap;
  ptrdiff_t l = get_onecapture(ms, i, s, e, &cap);
  if (l != SM_CAP_POSITION) lua_pushlstring(ms->L, cap, (size_t)l);
  /* else position was already pushed */
}

static int push_captures(MatchState *ms, const char *s, const char *e) {
  int i;
  int nlevels = (ms->level == 0 && s) ? 1 : ms->level;
  luaL_checkstack(ms->L, nlevels, "too many captures");
  for (i = 0; i < nlevels; i++) push_onecapture(ms, i, s, e);
  return nlevels; /* number of strings pushed */
}

/* check whether pattern has no special characters */
static int nospecials(const char *p, size_t l) {
  size_t upto = 0;
  do {
    if (strpbrk(p + upto, SM_SPECIALS)) return 0; /* pattern has a special character */
    upto += strlen(p + upto) + 1;                 /* may have more after \0 */
  } while (upto <= l);
  return 1; /* no special chars found */
}

static void prepstate(MatchState *ms, lua_State *L, const char *s, size_t ls, const char *p,
                      size_t lp) {
  ms->L = L;
  ms->matchdepth = SM_MAXCCALLS;
  ms->src_init = s;
  ms->src_end = s + ls;
  ms->p_end = p + lp;
}

static void reprepstate(MatchState *ms) { ms->level = 0; }

static int str_find_aux(lua_State *L, int find) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = posrelatI(luaL_optinteger(L, 3, 1), ls) - 1;
  if (init > ls) {   /* start after string's end? */
    luaL_pushfail(L); /* cannot find anything */
    return 1;
  }
  /* explicit request or no special characters? */
  if (find && (lua_toboolean(L, 4) || nospecials(p, lp))) {
    /* do a plain search: linear, nothing to bound */
    const char *s2 = lmemfind(s + init, ls - init, p, lp);
    if (s2) {
      lua_pushinteger(L, (s2 - s) + 1);
      lua_pushinteger(L, (lua_Integer)((size_t)(s2 - s) + lp));
      return 2;
    }
  } else {
    MatchState ms;
    const char *s1 = s + init;
    int anchor = (*p == '^');
    if (anchor) {
      p++;
      lp--; /* skip anchor character */
    }
    prepstate(&ms, L, s, ls, p, lp);
    sm_begin(&ms, sm_meter(L, 1));
    do {
      const char *res;
      reprepstate(&ms);
      if ((res = match(&ms, s1, p)) != NULL) {
        sm_end(&ms);
        if (find) {
          lua_pushinteger(L, (s1 - s) + 1); /* start */
          lua_pushinteger(L, res - s);      /* end */
          return push_captures(&ms, NULL, 0) + 2;
        } else
          return push_captures(&ms, s1, res);
      }
    } while (s1++ < ms.src_end && !anchor);
    sm_end(&ms);
  }
  luaL_pushfail(L); /* not found */
  return 1;
}

int plr_strmatch_find(lua_State *L) { return str_find_aux(L, 1); }

int plr_strmatch_match(lua_State *L) { return str_find_aux(L, 0); }

/* state for 'gmatch' */
typedef struct GMatchState {
  const char *src;       /* current position */
  const char *p;         /* pattern */
  const char *lastmatch; /* end of last match */
  MatchState ms;         /* match state */
} GMatchState;

/* Upvalues: the subject, the pattern, the GMatchState and the meter. Each
 * call of the iterator is one call for the bound. */
static int gmatch_aux(lua_State *L) {
  GMatchState *gm = (GMatchState *)lua_touserdata(L, lua_upvalueindex(3));
  const char *src;
  gm->ms.L = L;
  sm_begin(&gm->ms, sm_meter(L, 4));
  for (src = gm->src; src <= gm->ms.src_end; src++) {
    const char *e;
    reprepstate(&gm->ms);
    if ((e = match(&gm->ms, src, gm->p)) != NULL && e != gm->lastmatch) {
      gm->src = gm->lastmatch = e;
      sm_end(&gm->ms);
      return push_captures(&gm->ms, src, e);
    }
  }
  sm_end(&gm->ms);
  return 0; /* not found */
}

int plr_strmatch_gmatch(lua_State *L) {
  size_t ls, lp;
  const char *s = luaL_checklstring(L, 1, &ls);
  const char *p = luaL_checklstring(L, 2, &lp);
  size_t init = posrelatI(luaL_optinteger(L, 3, 1), ls) - 1;
  GMatchState *gm;
  lua_settop(L, 2); /* keep strings on closure to avoid being collected */
  gm = (GMatchState *)lua_newuserdatauv(L, sizeof(GMatchState), 0);
  if (init > ls)    /* start after string's end? */
    init = ls + 1;  /* avoid overflows in 's + init' */
  prepstate(&gm->ms, L, s, ls, p, lp);
  gm->src = s + init;
  gm->p = p;
  gm->lastmatch = NULL;
  lua_pushvalue(L, lua_upvalueindex(1)); /* the meter, for the iterator */
  lua_pushcclosure(L, gmatch_aux, 4);
  return 1;
}

static void add_s(MatchState *ms, luaL_Buffer *b, const char *s, const char *e) {
  size_t l;
  lua_State *L = ms->L;
  const char *news = lua_tolstring(L, 3, &l);
  const char *p;
  while ((p = (char *)memchr(news, SM_ESC, l)) != NULL) {
    luaL_addlstring(b, news, (size_t)(p - news));
    p++;                  /* skip ESC */
    if (*p == SM_ESC)     /* '%%' */
      luaL_addchar(b, *p);
    else if (*p == '0')   /* '%0' */
      luaL_addlstring(b, s, (size_t)(e - s));
    else if (isdigit(uchar(*p))) { /* '%n' */
      const char *cap;
      ptrdiff_t resl = get_onecapture(ms, *p - '1', s, e, &cap);
      if (resl == SM_CAP_POSITION)
        luaL_addvalue(b); /* add position to accumulated result */
      else
        luaL_addlstring(b, cap, (size_t)resl);
    } else
      luaL_error(L, "invalid use of '%c' in replacement string", SM_ESC);
    l -= (size_t)(p + 1 - news);
    news = p + 1;
  }
  luaL_addlstring(b, news, l);
}

/* Adds the replacement value to the buffer b; returns true if the original
 * string was changed (function and table replacements may keep it). */
static int add_value(MatchState *ms, luaL_Buffer *b, const char *s, const char *e, int tr) {
  lua_State *L = ms->L;
  switch (tr) {
    case LUA_TFUNCTION: { /* call the function */
      int n;
      lua_pushvalue(L, 3);             /* push the function */
      n = push_captures(ms, s, e);     /* all captures as arguments */
      lua_call(L, n, 1);               /* call it */
      break;
    }
    case LUA_TTABLE: { /* index the table */
      push_onecapture(ms, 0, s, e); /* first capture is the index */
      lua_gettable(L, 3);
      break;
    }
    default: { /* LUA_TNUMBER or LUA_TSTRING */
      add_s(ms, b, s, e); /* add value to the buffer */
      return 1;           /* something changed */
    }
  }
  if (!lua_toboolean(L, -1)) {               /* nil or false? */
    lua_pop(L, 1);                           /* remove value */
    luaL_addlstring(b, s, (size_t)(e - s));  /* keep original text */
    return 0;                                /* no changes */
  } else if (!lua_isstring(L, -1))
    return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
  else {
    luaL_addvalue(b); /* add result to accumulator */
    return 1;         /* something changed */
  }
}

int plr_strmatch_gsub(lua_State *L) {
  size_t srcl, lp;
  const char *src = luaL_checklstring(L, 1, &srcl); /* subject */
  const char *p = luaL_checklstring(L, 2, &lp);     /* pattern */
  const char *lastmatch = NULL;                     /* end of last match */
  int tr = lua_type(L, 3);                          /* replacement type */
  lua_Integer max_s = luaL_optinteger(L, 4, (lua_Integer)srcl + 1); /* max replacements */
  int anchor = (*p == '^');
  lua_Integer n = 0; /* replacement count */
  int changed = 0;   /* change flag */
  const plr_strmatch_meter *meter = sm_meter(L, 1);
  MatchState ms;
  luaL_Buffer b;
  luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION ||
                          tr == LUA_TTABLE,
                   3, "string/function/table");
  luaL_buffinit(L, &b);
  if (anchor) {
    p++;
    lp--; /* skip anchor character */
  }
  prepstate(&ms, L, src, srcl, p, lp);
  sm_begin(&ms, meter);
  while (n < max_s) {
    const char *e;
    reprepstate(&ms); /* (re)prepare state for new match */
    if ((e = match(&ms, src, p)) != NULL && e != lastmatch) { /* match? */
      n++;
      changed = add_value(&ms, &b, src, e, tr) | changed;
      src = lastmatch = e;
    } else if (src < ms.src_end) /* otherwise, skip one character */
      luaL_addchar(&b, *src++);
    else
      break; /* end of subject */
    if (anchor) break;
  }
  sm_end(&ms);
  if (!changed) /* no changes? */
    lua_pushvalue(L, 1); /* return original string */
  else {                 /* something changed */
    luaL_addlstring(&b, src, (size_t)(ms.src_end - src));
    luaL_pushresult(&b); /* create and return new string */
  }
  lua_pushinteger(L, n); /* number of substitutions */
  return 2;
}

void plr_strmatch_install(lua_State *L, int idx, const plr_strmatch_meter *meter) {
  static const luaL_Reg fns[] = {{"find", plr_strmatch_find},
                                 {"match", plr_strmatch_match},
                                 {"gmatch", plr_strmatch_gmatch},
                                 {"gsub", plr_strmatch_gsub},
                                 {NULL, NULL}};
  idx = lua_absindex(L, idx);
  for (const luaL_Reg *f = fns; f->name; f++) {
    if (meter)
      lua_pushlightuserdata(L, (void *)meter);
    else
      lua_pushnil(L);
    lua_pushcclosure(L, f->func, 1);
    lua_setfield(L, idx, f->name);
  }
}
