// A virtualised message list, as the seed describes: only the rows near the
// view are in the DOM, an IntersectionObserver says which those are, and
// every DOM change waits for the next animation frame, where all of them
// are applied together.
//
// Rows are grouped in blocks of `blockSize`. Every block has a placeholder
// element; a block near the view (the observer's rootMargin) holds its
// rows, a block away from it is an empty placeholder with the height it had
// when it was last shown (or an estimate). So a 10,000-message history
// costs about 200 placeholders plus the few blocks in view, and a new
// message touches only the blocks from its index on that are on screen.
//
// The source is anything with `length`, `row(i)` and `version` (a Timeline):
// rows are sorted by seq there, inserted by binary search.

const STICK_PX = 40; // this close to the bottom counts as "at the bottom"

export class VirtualList {
  /**
   * viewport: the scrolling element. options: renderRow(row) -> Element,
   * blockSize (50), estimate (px per row, 56), onTop() (the top of the
   * history came into view: load older pages), margin (rootMargin, "800px").
   */
  constructor(viewport, source, options = {}) {
    this.viewport = viewport;
    this.source = source;
    this.renderRow = options.renderRow;
    this.blockSize = options.blockSize || 50;
    this.estimate = options.estimate || 56;
    this.onTop = options.onTop || null;
    this.blocks = [];
    this.dirty = new Set();
    this.frame = 0;
    this.cache = new WeakMap(); // event -> its rendered element
    this.stick = true;
    this.stats = { frames: 0, rowsRendered: 0, lastFrameMs: 0 };
    this.afterFrame = options.afterFrame || null;
    this.nextFrame = [];
    viewport.classList.add("plv");
    this.top = document.createElement("div");
    this.top.className = "plv-top";
    this.host = document.createElement("div");
    this.host.className = "plv-host";
    viewport.replaceChildren(this.top, this.host);
    this.observer = new IntersectionObserver((entries) => this.onIntersect(entries), {
      root: viewport, rootMargin: `${options.margin || "800px"} 0px`,
    });
    this.topObserver = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && this.onTop) this.onTop();
    }, { root: viewport, rootMargin: "200px 0px" });
    this.topObserver.observe(this.top);
    viewport.addEventListener("scroll", () => {
      this.stick = viewport.scrollHeight - viewport.scrollTop - viewport.clientHeight < STICK_PX;
    }, { passive: true });
    this.invalidate(0);
  }

  /** Rows from index `from` on changed (an insertion, an echo replaced): redraw them at the next frame. */
  invalidate(from = 0) {
    const first = Math.floor(from / this.blockSize);
    const want = Math.ceil(this.source.length / this.blockSize);
    for (let b = first; b < Math.max(want, this.blocks.length); b++) this.dirty.add(b);
    this.schedule();
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame((t) => this.flush(t));
  }

  onIntersect(entries) {
    for (const e of entries) {
      const b = this.blocks[Number(e.target.dataset.block)];
      if (!b) continue;
      if (b.visible !== e.isIntersecting) {
        b.visible = e.isIntersecting;
        this.dirty.add(b.index);
      }
    }
    this.schedule();
  }

  /** One animation frame: every pending change, reads first, then writes. */
  flush() {
    this.frame = 0;
    const t0 = performance.now();
    const n = this.source.length;
    const want = Math.ceil(n / this.blockSize);
    // Reads: heights of the shown blocks about to be emptied, and where the view is.
    const leaving = [];
    for (const i of this.dirty) {
      const b = this.blocks[i];
      if (b && b.rendered && (!b.visible || i >= want)) leaving.push([b, b.el.offsetHeight]);
    }
    const stick = this.stick;
    // Writes.
    for (const [b, h] of leaving) {
      b.el.replaceChildren();
      b.rendered = false;
      b.height = h;
      b.el.style.height = `${h}px`;
    }
    while (this.blocks.length < want) this.addBlock(want);
    while (this.blocks.length > want) this.removeBlock();
    for (const i of [...this.dirty].sort((a, b) => a - b)) {
      const b = this.blocks[i];
      if (!b) continue;
      const count = Math.min(this.blockSize, n - i * this.blockSize);
      if (b.visible) {
        this.fill(b, count);
      } else if (!b.rendered && b.count !== count) {
        // Keep the measured height and adjust it by the rows added since.
        b.height = b.height + (count - b.count) * this.estimate;
        b.count = count;
        b.el.style.height = `${b.height}px`;
      }
    }
    this.dirty.clear();
    if (stick) this.viewport.scrollTop = this.viewport.scrollHeight;
    this.stats.frames++;
    this.stats.lastFrameMs = performance.now() - t0;
    const after = this.nextFrame;
    this.nextFrame = [];
    for (const fn of after) fn();
    if (this.afterFrame) this.afterFrame(this);
  }

  fill(b, count) {
    const start = b.index * this.blockSize;
    const rows = new Array(count);
    for (let k = 0; k < count; k++) rows[k] = this.element(this.source.row(start + k));
    // Rows already in place stay: a block that only grew at its end (the
    // common case, a new message) gets just the new rows appended.
    const have = b.rendered ? b.el.children : [];
    let same = 0;
    while (same < have.length && same < count && have[same] === rows[same]) same++;
    if (same === 0) {
      b.el.replaceChildren(...rows);
    } else {
      while (b.el.children.length > same) b.el.lastElementChild.remove();
      if (same < count) b.el.append(...rows.slice(same));
    }
    b.el.style.height = "";
    b.rendered = true;
    b.count = count;
    this.stats.rowsRendered += count - same;
  }

  element(row) {
    // Events never change once applied: their element is made once.
    if (row.local) return this.renderRow(row);
    let e = this.cache.get(row);
    if (!e) {
      e = this.renderRow(row);
      this.cache.set(row, e);
    }
    return e;
  }

  addBlock(want) {
    const index = this.blocks.length;
    const el = document.createElement("div");
    el.className = "plv-block";
    el.dataset.block = String(index);
    const count = Math.min(this.blockSize, this.source.length - index * this.blockSize);
    const b = { index, el, visible: false, rendered: false, count, height: count * this.estimate };
    el.style.height = `${b.height}px`;
    this.blocks.push(b);
    this.host.append(el);
    this.observer.observe(el);
    // The last two blocks, added while the view follows the bottom, are in
    // view before the observer has said so; the others wait for it.
    if (this.stick && index >= want - 2) b.visible = true;
  }

  removeBlock() {
    const b = this.blocks.pop();
    this.observer.unobserve(b.el);
    b.el.remove();
  }

  /** Runs fn once, at the end of the next frame's writes. */
  afterNextFrame(fn) {
    this.nextFrame.push(fn);
    this.schedule();
  }

  scrollToBottom() {
    this.stick = true;
    this.invalidate(Math.max(0, this.source.length - 1));
  }

  /** Elements in the list (for the benchmark and the tests). */
  domNodes() {
    return this.viewport.getElementsByTagName("*").length;
  }

  destroy() {
    this.observer.disconnect();
    this.topObserver.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}
