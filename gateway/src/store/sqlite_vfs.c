/* A thin VFS over SQLite's own unix VFS (store/sqlite_vfs.h) that writes
 * the WAL frames of one commit with one pwrite() instead of two per frame.
 *
 * SQLite writes each WAL frame as two calls (its 24-byte header, then the
 * page), so a commit of n pages costs 2n pwrite() calls, each a system call
 * of 1.5-2.5 us on this machine. Here the WAL file's writes are gathered in
 * a buffer while they are contiguous and written out:
 *
 *   - right after the page of a commit frame (a frame header whose "database
 *     size after commit" field is not zero): SQLite publishes the commit in
 *     the WAL index only after that, so no reader, in this process or any
 *     other, can look for a frame that is not yet in the file, and a commit
 *     that returned is in the file as before (what survives a crash of the
 *     process does not change);
 *   - before every sync (durability full's fsync sees every byte), read,
 *     truncation, size query and close of the WAL file, and before a write
 *     that does not continue the buffer or does not fit in it.
 *
 * Frames that are not followed by a commit frame (a transaction rolled
 * back after its pages spilled into the WAL) are written later, in order,
 * like SQLite writes them; recovery ignores frames after the last commit
 * either way. Every other file (the database, the -shm file) goes straight
 * through to the unix VFS. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <sqlite3.h>

#include "store/sqlite_vfs.h"

/* The buffer of one WAL file: 30 frames of 4 KiB pages. SQLite's unix VFS
 * writes at most 128 KiB - 1 bytes per call (it masks the length to 17
 * bits), so that is the most one pwrite() can take; a commit larger than
 * that is written in pieces of this size. */
#define WB_CAP (126u * 1024u)
#define WAL_FRAME_HDR 24

typedef struct wb_file {
  sqlite3_file base;   /* pMethods: wb_io */
  sqlite3_file *real;  /* the unix VFS's file, right after this struct */
  bool wal;
  bool commit_next;    /* the next write is a commit frame's page */
  unsigned char *buf;
  size_t len;
  sqlite3_int64 off;   /* the file offset of buf[0] */
} wb_file;

static sqlite3_vfs *base_of(sqlite3_vfs *v) { return v->pAppData; }

static int wb_flush(wb_file *w) {
  if (!w->len) return SQLITE_OK;
  int rc = w->real->pMethods->xWrite(w->real, w->buf, (int)w->len, w->off);
  w->len = 0;
  return rc;
}

static int wb_close(sqlite3_file *f) {
  wb_file *w = (wb_file *)f;
  int rc = wb_flush(w);
  int rc2 = w->real->pMethods ? w->real->pMethods->xClose(w->real) : SQLITE_OK;
  free(w->buf);
  w->buf = NULL;
  return rc ? rc : rc2;
}

static int wb_read(sqlite3_file *f, void *p, int amt, sqlite3_int64 off) {
  wb_file *w = (wb_file *)f;
  int rc = wb_flush(w);
  return rc ? rc : w->real->pMethods->xRead(w->real, p, amt, off);
}

static int wb_write(sqlite3_file *f, const void *p, int amt, sqlite3_int64 off) {
  wb_file *w = (wb_file *)f;
  if (!w->wal) return w->real->pMethods->xWrite(w->real, p, amt, off);
  int rc;
  if (w->len && (off != w->off + (sqlite3_int64)w->len || w->len + (size_t)amt > WB_CAP) &&
      (rc = wb_flush(w)) != SQLITE_OK)
    return rc;
  bool commit_page = w->commit_next;
  w->commit_next = false;
  if ((size_t)amt > WB_CAP || (!w->buf && !(w->buf = malloc(WB_CAP))))
    return w->real->pMethods->xWrite(w->real, p, amt, off);
  if (!w->len) w->off = off;
  memcpy(w->buf + w->len, p, (size_t)amt);
  w->len += (size_t)amt;
  if (commit_page) return wb_flush(w);
  /* A frame header: bytes 4-7 are the database size after the commit for
   * the commit frame, 0 for every other frame. */
  const unsigned char *h = p;
  if (amt == WAL_FRAME_HDR && (h[4] | h[5] | h[6] | h[7])) w->commit_next = true;
  return SQLITE_OK;
}

static int wb_truncate(sqlite3_file *f, sqlite3_int64 size) {
  wb_file *w = (wb_file *)f;
  int rc = wb_flush(w);
  return rc ? rc : w->real->pMethods->xTruncate(w->real, size);
}

static int wb_sync(sqlite3_file *f, int flags) {
  wb_file *w = (wb_file *)f;
  int rc = wb_flush(w);
  return rc ? rc : w->real->pMethods->xSync(w->real, flags);
}

static int wb_file_size(sqlite3_file *f, sqlite3_int64 *size) {
  wb_file *w = (wb_file *)f;
  int rc = wb_flush(w);
  return rc ? rc : w->real->pMethods->xFileSize(w->real, size);
}

static int wb_lock(sqlite3_file *f, int l) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xLock(w->real, l);
}

static int wb_unlock(sqlite3_file *f, int l) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xUnlock(w->real, l);
}

static int wb_check_reserved(sqlite3_file *f, int *out) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xCheckReservedLock(w->real, out);
}

static int wb_file_control(sqlite3_file *f, int op, void *arg) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xFileControl(w->real, op, arg);
}

static int wb_sector_size(sqlite3_file *f) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xSectorSize(w->real);
}

static int wb_device_characteristics(sqlite3_file *f) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xDeviceCharacteristics(w->real);
}

static int wb_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xShmMap(w->real, pg, pgsz, extend, pp);
}

static int wb_shm_lock(sqlite3_file *f, int offset, int n, int flags) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xShmLock(w->real, offset, n, flags);
}

static void wb_shm_barrier(sqlite3_file *f) {
  wb_file *w = (wb_file *)f;
  w->real->pMethods->xShmBarrier(w->real);
}

static int wb_shm_unmap(sqlite3_file *f, int del) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xShmUnmap(w->real, del);
}

static int wb_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp) {
  wb_file *w = (wb_file *)f;
  int rc = wb_flush(w);
  return rc ? rc : w->real->pMethods->xFetch(w->real, off, amt, pp);
}

static int wb_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p) {
  wb_file *w = (wb_file *)f;
  return w->real->pMethods->xUnfetch(w->real, off, p);
}

static const sqlite3_io_methods wb_io = {
    .iVersion = 3,
    .xClose = wb_close,
    .xRead = wb_read,
    .xWrite = wb_write,
    .xTruncate = wb_truncate,
    .xSync = wb_sync,
    .xFileSize = wb_file_size,
    .xLock = wb_lock,
    .xUnlock = wb_unlock,
    .xCheckReservedLock = wb_check_reserved,
    .xFileControl = wb_file_control,
    .xSectorSize = wb_sector_size,
    .xDeviceCharacteristics = wb_device_characteristics,
    .xShmMap = wb_shm_map,
    .xShmLock = wb_shm_lock,
    .xShmBarrier = wb_shm_barrier,
    .xShmUnmap = wb_shm_unmap,
    .xFetch = wb_fetch,
    .xUnfetch = wb_unfetch,
};

static int wb_open(sqlite3_vfs *v, sqlite3_filename name, sqlite3_file *f, int flags,
                   int *out_flags) {
  wb_file *w = (wb_file *)f;
  memset(w, 0, sizeof *w);
  w->real = (sqlite3_file *)(w + 1);
  int rc = base_of(v)->xOpen(base_of(v), name, w->real, flags, out_flags);
  if (rc != SQLITE_OK) {
    /* SQLite calls xClose only when pMethods is set. */
    if (w->real->pMethods) w->real->pMethods->xClose(w->real);
    return rc;
  }
  /* Older io_methods versions lack the shm and fetch calls: never the case
   * for the unix VFS, but then this file must not claim them either. */
  w->wal = (flags & SQLITE_OPEN_WAL) != 0 && w->real->pMethods->iVersion >= 3;
  w->base.pMethods = w->real->pMethods->iVersion >= 3 ? &wb_io : NULL;
  if (!w->base.pMethods) {
    w->real->pMethods->xClose(w->real);
    return SQLITE_CANTOPEN;
  }
  return SQLITE_OK;
}

static int wb_delete(sqlite3_vfs *v, const char *name, int sync) {
  return base_of(v)->xDelete(base_of(v), name, sync);
}
static int wb_access(sqlite3_vfs *v, const char *name, int flags, int *out) {
  return base_of(v)->xAccess(base_of(v), name, flags, out);
}
static int wb_full_pathname(sqlite3_vfs *v, const char *name, int n, char *out) {
  return base_of(v)->xFullPathname(base_of(v), name, n, out);
}
static void *wb_dlopen(sqlite3_vfs *v, const char *name) {
  return base_of(v)->xDlOpen(base_of(v), name);
}
static void wb_dlerror(sqlite3_vfs *v, int n, char *out) { base_of(v)->xDlError(base_of(v), n, out); }
static void (*wb_dlsym(sqlite3_vfs *v, void *h, const char *sym))(void) {
  return base_of(v)->xDlSym(base_of(v), h, sym);
}
static void wb_dlclose(sqlite3_vfs *v, void *h) { base_of(v)->xDlClose(base_of(v), h); }
static int wb_randomness(sqlite3_vfs *v, int n, char *out) {
  return base_of(v)->xRandomness(base_of(v), n, out);
}
static int wb_sleep(sqlite3_vfs *v, int us) { return base_of(v)->xSleep(base_of(v), us); }
static int wb_current_time(sqlite3_vfs *v, double *out) {
  return base_of(v)->xCurrentTime(base_of(v), out);
}
static int wb_last_error(sqlite3_vfs *v, int n, char *out) {
  return base_of(v)->xGetLastError(base_of(v), n, out);
}
static int wb_current_time64(sqlite3_vfs *v, sqlite3_int64 *out) {
  return base_of(v)->xCurrentTimeInt64(base_of(v), out);
}

/* One wrapper per base VFS: "parley-unix-excl" over "unix-excl" and
 * "parley-unix" over "unix". */
static sqlite3_vfs wb_vfs[2];
static const char *const wb_names[2] = {"parley-unix", "parley-unix-excl"};
static const char *const wb_bases[2] = {"unix", "unix-excl"};
static bool wb_ok[2];
static pthread_once_t wb_once = PTHREAD_ONCE_INIT;

static void wb_register(void) {
  for (int i = 0; i < 2; i++) {
    sqlite3_vfs *base = sqlite3_vfs_find(wb_bases[i]);
    if (!base || base->iVersion < 2) continue;
    sqlite3_vfs *v = &wb_vfs[i];
    v->iVersion = 2;
    v->szOsFile = (int)sizeof(wb_file) + base->szOsFile;
    v->mxPathname = base->mxPathname;
    v->zName = wb_names[i];
    v->pAppData = base;
    v->xOpen = wb_open;
    v->xDelete = wb_delete;
    v->xAccess = wb_access;
    v->xFullPathname = wb_full_pathname;
    v->xDlOpen = wb_dlopen;
    v->xDlError = wb_dlerror;
    v->xDlSym = wb_dlsym;
    v->xDlClose = wb_dlclose;
    v->xRandomness = wb_randomness;
    v->xSleep = wb_sleep;
    v->xCurrentTime = wb_current_time;
    v->xGetLastError = wb_last_error;
    v->xCurrentTimeInt64 = wb_current_time64;
    wb_ok[i] = sqlite3_vfs_register(v, 0) == SQLITE_OK;
  }
}

const char *pg_sqlite_vfs(bool exclusive) {
  pthread_once(&wb_once, wb_register);
  int i = exclusive ? 1 : 0;
  return wb_ok[i] ? wb_names[i] : wb_bases[i];
}
