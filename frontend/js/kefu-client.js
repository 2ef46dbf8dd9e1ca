/*
 * kefu-client.js: the goim TLV protocol (PROTOCOL.md §1-2) over a binary
 * WebSocket, and a socket that authenticates, heartbeats, reconnects with
 * exponential backoff + jitter, and tells its owner when to resync.
 *
 *   0        4      6      8           12          16
 *   | packet | hdr  | ver  | operation | sequence  | body ...
 *   all integers big-endian and signed; hdr is always 16
 *
 * Message semantics (ordering, dedupe) live in chatview.js; this module only
 * moves frames and keeps the connection alive.
 */

export const Op = Object.freeze({
  HEARTBEAT: 2, HEARTBEAT_REPLY: 3, MESSAGE: 5, DISCONNECT: 6, AUTH: 7,
  AUTH_REPLY: 8, RAW: 9, SYNC: 14, SYNC_REPLY: 15, ACK: 16, ACK_REPLY: 17,
});

const HEADER_SIZE = 16;
const VERSION = 1;
const MAX_BATCH_DEPTH = 2;
const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder();

/** One frame as an ArrayBuffer; body is a string (UTF-8) or bytes. */
export function encodeFrame(op, seq, body = '') {
  const bytes = typeof body === 'string' ? utf8.encode(body) : body;
  const buf = new ArrayBuffer(HEADER_SIZE + bytes.length);
  const view = new DataView(buf);
  view.setInt32(0, buf.byteLength);
  view.setInt16(4, HEADER_SIZE);
  view.setInt16(6, VERSION);
  view.setInt32(8, op);
  view.setInt32(12, seq);
  new Uint8Array(buf, HEADER_SIZE).set(bytes);
  return buf;
}

/**
 * Frames back to back -> [{op, seq, body: Uint8Array}]. An op-9 batch is
 * split into its inner frames (flattened in order). Throws on a malformed
 * buffer: the caller drops the connection, as the server would.
 */
export function decodeFrames(data, out = [], depth = 0) {
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let off = 0;
  while (off < bytes.length) {
    if (bytes.length - off < HEADER_SIZE) throw new Error('short header');
    const len = view.getInt32(off);
    if (view.getInt16(off + 4) !== HEADER_SIZE) throw new Error('bad header length');
    if (len < HEADER_SIZE || off + len > bytes.length) throw new Error('bad packet length');
    const op = view.getInt32(off + 8);
    const frame = { op, seq: view.getInt32(off + 12), body: bytes.subarray(off + HEADER_SIZE, off + len) };
    if (op === Op.RAW && depth < MAX_BATCH_DEPTH) decodeFrames(frame.body, out, depth + 1);
    else out.push(frame);
    off += len;
  }
  return out;
}

export const bodyText = (frame) => utf8Decoder.decode(frame.body);

/** The frame's JSON body, or null when it is not JSON (skipped, never fatal). */
export function bodyJSON(frame) {
  try { return JSON.parse(bodyText(frame)); } catch { return null; }
}

const BACKOFF_BASE_MS = 1000;
const BACKOFF_CAP_MS = 30000;
const AUTH_TIMEOUT_MS = 10000;
const PROBE_TIMEOUT_MS = 5000;
const KICK_CLOSE_MS = 2000;  // after op 6, how long we wait for the server's close
const CLOSE_POLICY = 1008;   // server refused our key (expired, forged)

/** Exponential backoff with jitter: a random delay in [ceil/2, ceil]. */
export function backoffDelay(attempt, base = BACKOFF_BASE_MS, cap = BACKOFF_CAP_MS) {
  const ceil = Math.min(cap, base * 2 ** Math.min(attempt, 16));
  return ceil / 2 + Math.random() * ceil / 2;
}

/**
 * A kefu connection. Events (subscribe with on(type, fn)):
 *   state   {state: 'connecting'|'open'|'reconnecting'|'offline'|'stopped', retryAt?}
 *   open    the op-8 reply (after every successful (re)connect: resync now)
 *   message a live message (op 5)
 *   history {msg, seq} one op-15 frame (seq echoes the sync request)
 *   ack     the acknowledged id (op 17), as text
 *   kicked  the reason the server gave when closing us (op 6)
 *   pong    {seq, count} a heartbeat reply (op 3): count is the room's connections
 * Options: url, auth (object or function returning it), refreshAuth (async,
 * called when the server refuses the key; returns a new {url, auth} or null).
 */
export class KefuSocket {
  constructor({ url, auth, refreshAuth = null }) {
    this.url = url;
    this.auth = auth;
    this.refreshAuth = refreshAuth;
    this.handlers = {};
    this.ws = null;
    this.authed = false;
    this.stopped = true;
    this.attempt = 0;
    this.seq = 0;
    this.heartbeatMs = 30000;
    this.lastRecv = 0;
    this.timers = {};
    this.state = 'idle';
    this.onLifecycle = this.onLifecycle.bind(this);
  }

  on(type, fn) { (this.handlers[type] ||= []).push(fn); return this; }

  emit(type, data) {
    for (const fn of this.handlers[type] || []) {
      try { fn(data); } catch (err) { console.error('kefu handler', type, err); }
    }
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    for (const [target, type] of LIFECYCLE) target().addEventListener(type, this.onLifecycle);
    this.connect();
  }

  stop() {
    this.stopped = true;
    for (const [target, type] of LIFECYCLE) target().removeEventListener(type, this.onLifecycle);
    this.clearTimers();
    this.discard();
    this.setState('stopped');
  }

  get isOpen() { return Boolean(this.ws && this.authed); }

  nextSeq() { this.seq = this.seq >= 0x7fffffff ? 1 : this.seq + 1; return this.seq; }

  /** Sends a frame if authenticated; returns its seq, or 0 when not sent. */
  send(op, body = '') {
    if (!this.isOpen || this.ws.readyState !== WebSocket.OPEN) return 0;
    const seq = this.nextSeq();
    this.ws.send(encodeFrame(op, seq, typeof body === 'string' ? body : JSON.stringify(body)));
    return seq;
  }

  sync(request = '') { return this.send(Op.SYNC, request); }

  /**
   * A heartbeat used as a barrier: the server handles one connection's frames
   * strictly in order, so its reply (a 'pong' with this seq) comes after every
   * op-15 frame of the syncs sent before it. That is how a page's end is known.
   */
  barrier() { return this.send(Op.HEARTBEAT); }
  ack(body) { return this.send(Op.ACK, typeof body === 'number' ? String(body) : body); }

  /** Reconnect at once (network back, page shown again), or probe an open socket. */
  reconnectNow() {
    if (this.stopped) return;
    if (this.isOpen) { this.probe(); return; }
    if (this.ws) return;              // a connect is already in flight
    this.attempt = 0;
    this.connect();
  }

  // -- internals -------------------------------------------------------

  setState(state, extra = {}) {
    this.state = state;
    this.emit('state', { state, ...extra });
  }

  clearTimers() {
    for (const key of Object.keys(this.timers)) {
      clearTimeout(this.timers[key]);
      clearInterval(this.timers[key]);
    }
    this.timers = {};
  }

  setTimer(name, fn, ms, repeat = false) {
    clearTimeout(this.timers[name]);
    clearInterval(this.timers[name]);
    this.timers[name] = repeat ? setInterval(fn, ms) : setTimeout(fn, ms);
  }

  connect() {
    clearTimeout(this.timers.retry);
    if (this.stopped || this.ws) return;
    this.setState(this.attempt ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.error('kefu: bad socket url', err);
      this.scheduleRetry();
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.authed = false;
    const auth = typeof this.auth === 'function' ? this.auth() : this.auth;
    ws.onopen = () => ws.send(encodeFrame(Op.AUTH, this.nextSeq(), JSON.stringify(auth)));
    ws.onmessage = (ev) => { if (ws === this.ws) this.onData(ev.data); };
    ws.onclose = (ev) => { if (ws === this.ws) this.lost(ev.code); };
    // Handshake deadline: a socket that never authenticates is retried.
    this.setTimer('auth', () => { if (ws === this.ws && !this.authed) this.lost(0); }, AUTH_TIMEOUT_MS);
  }

  onData(data) {
    if (typeof data === 'string') return;      // the server never sends text
    let frames;
    try {
      frames = decodeFrames(data);
    } catch (err) {
      console.error('kefu: malformed frame', err);
      this.lost(0);
      return;
    }
    this.lastRecv = Date.now();
    if (this.authed && this.state !== 'open') this.setState('open');   // a probe answered
    for (const frame of frames) this.onFrame(frame);
  }

  onFrame(frame) {
    switch (frame.op) {
      case Op.AUTH_REPLY: return this.onAuthed(bodyJSON(frame) || {});
      case Op.HEARTBEAT_REPLY: {
        const count = frame.body.length >= 4
          ? new DataView(frame.body.buffer, frame.body.byteOffset, 4).getInt32(0) : 0;
        return this.emit('pong', { seq: frame.seq, count });
      }
      case Op.MESSAGE: {
        const msg = bodyJSON(frame);
        if (msg && typeof msg === 'object') this.emit('message', msg);
        return;
      }
      case Op.SYNC_REPLY: {
        const msg = bodyJSON(frame);
        if (msg && typeof msg === 'object') this.emit('history', { msg, seq: frame.seq });
        return;
      }
      case Op.ACK_REPLY: return this.emit('ack', bodyText(frame));
      case Op.DISCONNECT:
        // The close (and its code, which says whether our key was refused) follows.
        this.emit('kicked', bodyText(frame));
        this.setTimer('kick', () => this.lost(0), KICK_CLOSE_MS);
        return;
      default: return;                          // unknown ops are ignored
    }
  }

  onAuthed(reply) {
    clearTimeout(this.timers.auth);
    this.authed = true;
    this.attempt = 0;
    const hb = Number(reply.heartbeat);
    this.heartbeatMs = hb > 0 ? hb * 1000 : 30000;
    this.setTimer('heartbeat', () => this.beat(), this.heartbeatMs, true);
    this.setState('open');
    this.emit('open', reply);
  }

  /** Sends a heartbeat; a connection silent for two intervals is dead. */
  beat() {
    if (Date.now() - this.lastRecv > 2 * this.heartbeatMs + 10000) { this.lost(0); return; }
    this.send(Op.HEARTBEAT);
  }

  /** Phones freeze background sockets without closing them: ping, expect any frame. */
  probe() {
    const sentAt = Date.now();
    if (!this.send(Op.HEARTBEAT)) return;
    this.setTimer('probe', () => { if (this.lastRecv < sentAt) this.lost(0); }, PROBE_TIMEOUT_MS);
  }

  discard() {
    const ws = this.ws;
    this.ws = null;
    this.authed = false;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try { ws.close(); } catch { /* already closed */ }
  }

  /** The connection is gone (closed, dead, kicked): schedule a reconnect. */
  lost(code) {
    const wasAuthed = this.authed;
    this.discard();
    for (const name of ['auth', 'heartbeat', 'probe', 'kick']) {
      clearTimeout(this.timers[name]);
      clearInterval(this.timers[name]);
    }
    if (this.stopped) return;
    if (!wasAuthed && code === CLOSE_POLICY && this.refreshAuth) {
      this.renewThenRetry();
      return;
    }
    this.scheduleRetry();
  }

  async renewThenRetry() {
    try {
      const fresh = await this.refreshAuth();
      if (fresh) { this.url = fresh.url || this.url; this.auth = fresh.auth || this.auth; }
    } catch (err) {
      console.error('kefu: could not renew credentials', err);
    }
    this.scheduleRetry();
  }

  scheduleRetry() {
    if (this.stopped) return;
    const delay = backoffDelay(this.attempt);
    this.attempt += 1;
    const offline = typeof navigator !== 'undefined' && navigator.onLine === false;
    this.setState(offline ? 'offline' : 'reconnecting', { retryAt: Date.now() + delay });
    this.setTimer('retry', () => this.connect(), delay);
  }

  onLifecycle(ev) {
    if (ev.type === 'visibilitychange' && document.visibilityState !== 'visible') return;
    if (ev.type === 'offline') { this.setState('offline'); return; }
    if (ev.type === 'pagehide') {
      // An open socket keeps the page out of the back/forward cache; pageshow reconnects.
      if (ev.persisted) { this.discard(); this.clearTimers(); }
      return;
    }
    this.reconnectNow();
  }
}

const LIFECYCLE = [
  [() => document, 'visibilitychange'],
  [() => window, 'pageshow'],
  [() => window, 'pagehide'],
  [() => window, 'online'],
  [() => window, 'offline'],
];
