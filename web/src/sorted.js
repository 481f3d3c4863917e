// Binary search over arrays kept sorted by seq. Every place that inserts an
// event by its seq (the client's reorder buffer, the timelines the widget and
// the workbench render, the benchmark) goes through these two functions, so
// an insertion costs O(log n) comparisons and never a scan of the history.

/** The first index i of `items` with key(items[i]) >= seq (items.length if none). */
export function lowerBound(items, seq, key = seqOf) {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (key(items[mid]) < seq) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Inserts `item` at its place by seq. Returns the index, or -1 when an item
 * with the same seq is already there (the array is left as it was).
 */
export function insertBySeq(items, item, key = seqOf) {
  const seq = key(item);
  // Appending is the common case (events arrive in order): check the end first.
  const n = items.length;
  if (n === 0 || key(items[n - 1]) < seq) {
    items.push(item);
    return n;
  }
  const i = lowerBound(items, seq, key);
  if (i < n && key(items[i]) === seq) return -1;
  items.splice(i, 0, item);
  return i;
}

/** The index of the item with this seq, or -1. */
export function indexOfSeq(items, seq, key = seqOf) {
  const i = lowerBound(items, seq, key);
  return i < items.length && key(items[i]) === seq ? i : -1;
}

function seqOf(item) {
  return item.seq;
}
