/*
 * chatview.js: a conversation's message list, shared by the visitor page
 * and the agent console.
 *
 * Invariants: every message is shown once (keyed by id; a pending message
 * by its client_msg_id until the server's copy arrives) and in id order,
 * whatever order live pushes, resyncs and scroll-back pages arrive in.
 * Text is only ever set with text nodes; images only from our /upload/ URLs.
 */
import { renderText } from './emoji.js';
import { t, formatTime } from './i18n.js';

const UPLOAD_RE = /^\/upload\/(?:[A-Za-z0-9_-][A-Za-z0-9._-]*\/)*[A-Za-z0-9_-][A-Za-z0-9._-]*$/;
const NEAR_BOTTOM_PX = 80;

/** Only our own upload URLs are ever used as an image source. */
export const isUploadUrl = (url) => typeof url === 'string' && url.length < 300 && UPLOAD_RE.test(url);

/** A message id we can order by: a positive safe integer (ids are < 2^53). */
export const validId = (id) => Number.isSafeInteger(Number(id)) && Number(id) > 0;

export const isChatMessage = (msg) => msg && (msg.type === 'text' || msg.type === 'image') && validId(msg.id);

export function makeEl(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A random client message id; crypto.randomUUID needs a secure context, getRandomValues does not. */
export function clientMsgId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export class MessageList {
  /**
   * scroller: the scrolling element; isOwn(msg) -> bool; avatarFor(msg) -> src;
   * readMarks: show 已读/未读 under own messages; onRetry(cmid); onNewBelow().
   */
  constructor(scroller, { isOwn, avatarFor, readMarks = false, onRetry = () => {}, onNewBelow = () => {} }) {
    this.scroller = scroller;
    this.box = scroller.querySelector('.msgs') || scroller;
    this.opts = { isOwn, avatarFor, readMarks, onRetry, onNewBelow };
    this.stick = true;
    scroller.addEventListener('scroll', () => { this.stick = this.nearBottom(); });
    this.reset();
  }

  reset() {
    this.ordered = [];            // entries with an id, ascending
    this.pending = [];            // own messages not yet confirmed, in send order
    this.byId = new Map();
    this.byCmid = new Map();
    this.readSeq = 0;
    this.box.replaceChildren();
    this.stick = true;
  }

  get newestId() { return this.ordered.length ? this.ordered[this.ordered.length - 1].id : 0; }
  get oldestId() { return this.ordered.length ? this.ordered[0].id : 0; }
  get size() { return this.ordered.length + this.pending.length; }
  has(id) { return this.byId.has(Number(id)); }

  /** Adds a stored message; returns 'new', 'confirmed' (a pending one arrived) or null (dup/invalid). */
  add(msg) {
    if (!isChatMessage(msg)) return null;
    const id = Number(msg.id);
    if (this.byId.has(id)) return null;
    const pend = msg.client_msg_id && this.byCmid.get(msg.client_msg_id);
    if (pend && !pend.id) {
      this.pending.splice(this.pending.indexOf(pend), 1);
      pend.id = id;
      pend.msg = msg;
      pend.state = 'sent';
      this.byId.set(id, pend);
      this.place(pend);
      this.swapLocalImage(pend);
      this.refreshStatus(pend);
      return 'confirmed';
    }
    const entry = { id, cmid: msg.client_msg_id || null, msg, own: this.opts.isOwn(msg), state: 'sent' };
    this.build(entry);
    this.byId.set(id, entry);
    if (entry.cmid) this.byCmid.set(entry.cmid, entry);
    this.place(entry);
    return 'new';
  }

  /** Shows an own message before the server has it; localSrc previews an image. */
  addPending({ cmid, type, msg, localSrc = null }) {
    const entry = {
      id: 0, cmid, own: true, state: 'sending', localSrc,
      msg: { type, msg, dateline: Math.floor(Date.now() / 1000) },
    };
    this.build(entry);
    this.byCmid.set(cmid, entry);
    this.pending.push(entry);
    this.stick = true;
    this.place(entry);
    return entry;
  }

  setState(cmid, state) {
    const entry = this.byCmid.get(cmid);
    if (!entry || entry.id) return;
    entry.state = state;
    entry.el.classList.toggle('failed', state === 'failed');
    this.refreshStatus(entry);
  }

  /** The other side has read up to seq: own messages at or below it show 已读. */
  setRead(seq) {
    seq = Number(seq);
    if (!validId(seq) || seq <= this.readSeq) return;
    this.readSeq = seq;
    for (const entry of this.ordered) if (entry.own) this.refreshStatus(entry);
  }

  pendingEntry(cmid) { return this.byCmid.get(cmid); }

  refreshLanguage() {
    for (const entry of [...this.ordered, ...this.pending]) {
      entry.timeEl.textContent = formatTime(entry.msg.dateline);
      this.refreshStatus(entry);
    }
  }

  // -- DOM ------------------------------------------------------------

  build(entry) {
    const el = makeEl('div', `msg ${entry.own ? 'own' : 'other'}`);
    if (!entry.own) {
      const avatar = makeEl('img', 'avatar');
      avatar.alt = '';
      avatar.src = this.opts.avatarFor(entry.msg);
      el.append(avatar);
    }
    const body = makeEl('div', 'msg-body');
    const bubble = makeEl('div', `bubble ${entry.msg.type === 'image' ? 'image' : 'text'}`);
    this.renderContent(bubble, entry);
    const meta = makeEl('div', 'msg-meta');
    entry.timeEl = makeEl('time', '', formatTime(entry.msg.dateline));
    entry.statusEl = makeEl('span', 'msg-status');
    meta.append(entry.timeEl, entry.statusEl);
    if (entry.own) {
      const retry = makeEl('button', 'retry', t('chat.retry'));
      retry.type = 'button';
      retry.addEventListener('click', () => this.opts.onRetry(entry.cmid));
      entry.retryEl = retry;
      meta.append(retry);
    }
    body.append(bubble, meta);
    el.append(body);
    entry.el = el;
    entry.bubble = bubble;
    this.refreshStatus(entry);
  }

  renderContent(bubble, entry) {
    const { msg } = entry;
    if (msg.type !== 'image') { renderText(bubble, msg.msg); return; }
    const src = entry.localSrc || (isUploadUrl(msg.msg) ? msg.msg : null);
    if (!src) { bubble.textContent = t('chat.image.blocked'); return; }
    const img = makeEl('img', 'msg-image');
    img.alt = t('chat.image.alt');
    img.src = src;
    img.addEventListener('load', () => this.afterGrow(entry.el));
    const link = makeEl('a');
    if (isUploadUrl(msg.msg)) link.href = msg.msg;
    link.target = '_blank';
    link.rel = 'noopener noreferrer';
    link.append(img);
    bubble.append(link);
  }

  swapLocalImage(entry) {
    const img = entry.bubble.querySelector('img.msg-image');
    if (!img || !entry.localSrc || !isUploadUrl(entry.msg.msg)) return;
    const blob = entry.localSrc;
    entry.localSrc = null;
    img.addEventListener('load', () => URL.revokeObjectURL(blob), { once: true });
    img.src = entry.msg.msg;
    img.closest('a').href = entry.msg.msg;
  }

  refreshStatus(entry) {
    if (!entry.own) return;
    let text = '';
    if (entry.state === 'sending') text = t('chat.sending');
    else if (entry.state === 'failed') text = t('chat.failed');
    else if (this.opts.readMarks) text = entry.id && entry.id <= this.readSeq ? t('chat.read') : t('chat.unread');
    entry.statusEl.textContent = text;
    entry.statusEl.classList.toggle('read', text === t('chat.read'));
    entry.el.classList.toggle('failed', entry.state === 'failed');
    if (entry.retryEl) entry.retryEl.textContent = t('chat.retry');
  }

  /** Inserts (or moves) entry to its place: ids ascending, pending last. */
  place(entry) {
    const stick = this.stick;
    let before = null;
    if (entry.id) {
      let i = this.ordered.length;
      while (i > 0 && this.ordered[i - 1].id > entry.id) i -= 1;
      this.ordered.splice(i, 0, entry);
      const next = this.ordered[i + 1] || this.pending[0];
      before = next ? next.el : null;
    }
    // Inserting above what the reader looks at must not move it: keep the
    // first visible message where it was (older pages, late resync frames).
    const anchor = !stick && before ? this.firstVisible() : null;
    const y = anchor ? anchor.offsetTop : 0;
    this.box.insertBefore(entry.el, before);
    if (stick) this.scrollToBottom();
    else if (anchor) this.scroller.scrollTop += anchor.offsetTop - y;
    else if (!entry.own && !before) this.opts.onNewBelow();
  }

  firstVisible() {
    const top = this.scroller.scrollTop;
    for (const el of this.box.children) if (el.offsetTop + el.offsetHeight > top) return el;
    return null;
  }

  afterGrow(el) {
    if (this.stick) this.scrollToBottom();
    else if (el.offsetTop < this.scroller.scrollTop) this.scroller.scrollTop += el.offsetHeight;
  }

  nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
    this.stick = true;
  }
}

/**
 * Tracks one conversation's sync requests (op 14) and their op-15 replies:
 * pages forward after a reconnect until a short page, and pages backward
 * on scroll-up. Each request is followed by a barrier (a heartbeat whose
 * reply comes after the whole page), so a page is complete when its pong
 * arrives; a timer covers a server that never answers.
 */
export class HistoryPager {
  constructor({ list, send, barrier, pageSize = 50, olderSize = 30, roomId = null,
    onGap = () => {}, onIdle = () => {} }) {
    Object.assign(this, { list, send, barrier, pageSize, olderSize, roomId, onGap, onIdle });
    this.requests = new Map();    // sync seq -> {kind, count, limit, timer}
    this.barriers = new Map();    // heartbeat seq -> sync seq
    this.exhausted = false;       // no messages older than the oldest shown
    this.loadingOlder = false;
    this.primed = false;          // the newest page has arrived once
  }

  body(fields) {
    return this.roomId ? { room_id: this.roomId, ...fields } : fields;
  }

  track(kind, limit, fields) {
    const seq = this.send(this.body({ ...fields, limit }));
    if (!seq) return 0;
    const req = { kind, count: 0, limit, after: fields.after, timer: 0 };
    this.requests.set(seq, req);
    const fence = this.barrier();
    if (fence) this.barriers.set(fence, seq);
    this.arm(seq, req);
    return seq;
  }

  /** After (re)connect: newest page when empty, else everything after our newest id. */
  resync() {
    for (const req of this.requests.values()) clearTimeout(req.timer);
    this.requests.clear();
    this.barriers.clear();
    this.loadingOlder = false;
    // Live messages may be shown before the first page: that still needs the newest page.
    const newest = this.primed ? this.list.newestId : 0;
    if (!newest) return this.track('newest', this.pageSize, {});
    // Look back a few seconds: ids come from several processes, so a message
    // published just before the drop may carry an id below the newest we saw.
    return this.track('after', this.pageSize, { after: Math.max(0, newest - LOOKBACK) });
  }

  loadOlder() {
    if (this.loadingOlder || this.exhausted || !this.list.oldestId) return 0;
    const seq = this.track('before', Math.min(this.olderSize, this.pageSize), { before: this.list.oldestId });
    this.loadingOlder = Boolean(seq);
    return seq;
  }

  /** One op-15 frame; returns the message when it was new to the list. */
  receive({ msg, seq }) {
    if (this.roomId && msg.room_id && msg.room_id !== this.roomId) return null;
    const req = this.requests.get(seq);
    if (msg.type === 'gap') {
      if (!req || req.kind !== 'after') this.exhausted = true;
      this.onGap(msg);
      return null;
    }
    const added = this.list.add(msg);
    if (req) {
      req.count += 1;
      this.arm(seq, req);
    }
    return added ? msg : null;
  }

  /** A heartbeat reply: the page its barrier follows is complete. */
  pong(fence) {
    const seq = this.barriers.get(fence);
    if (seq === undefined) return;
    this.barriers.delete(fence);
    const req = this.requests.get(seq);
    if (req) this.pageDone(seq, req);
  }

  arm(seq, req) {
    clearTimeout(req.timer);
    req.timer = setTimeout(() => this.pageDone(seq, req), PAGE_TIMEOUT_MS);
  }

  pageDone(seq, req) {
    clearTimeout(req.timer);
    if (!this.requests.delete(seq)) return;
    const full = req.count >= req.limit;
    if (req.kind === 'before') {
      this.loadingOlder = false;
      if (!full) this.exhausted = true;
    } else if (req.kind === 'newest') {
      this.primed = true;
      if (!full) this.exhausted = true;
    } else if (req.kind === 'after' && req.count > 0 && this.list.newestId > req.after) {
      // Continue until a page brings nothing newer: correct whatever page size the server uses.
      this.track('after', this.pageSize, { after: this.list.newestId });
      return;
    }
    this.onIdle(req.kind);
  }
}

// 3 s of snowflake time (ms << 12; see kefu/ids.py), and how long a page may take.
const LOOKBACK = 3000 * 4096;
const PAGE_TIMEOUT_MS = 10000;
