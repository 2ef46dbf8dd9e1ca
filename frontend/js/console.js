/*
 * console.js: the agent console (/info.html, the seed's name for it).
 *
 * One WebSocket per console: an agent key makes it receive every chat
 * message of the shop, so the conversation list (unread badges, last
 * message, online dots) is updated from pushes; /open/finduserlist is read
 * at start and after each reconnect. Opening a conversation fetches its
 * key (/open/com, which also marks it read) and its history over the same
 * socket (op 14 naming the room).
 */
import { KefuSocket } from './kefu-client.js';
import { MessageList, HistoryPager, isChatMessage, makeEl } from './chatview.js';
import { Outbox } from './outbox.js';
import { renderText } from './emoji.js';
import { setupComposer } from './composer.js';
import { t, getLang, applyI18n, toggleLang, onLangChange, formatTime } from './i18n.js';
import {
  request, pushMessage, HttpError, uploadImage, safeImage, connectionView, toaster,
} from './common.js';

const $ = (id) => document.getElementById(id);
const LIST_LIMIT = 200;
const LIST_REFRESH_MS = 30000;     // online dots between pushes; never every second
const NO_SOCKET_POLL_MS = 3000;    // only until a socket exists (see agentCredentials)
const SPOKE_ONLINE_MS = 60000;     // a visitor who wrote this recently counts as online
const SOUND_KEY = 'kefu_sound';

let me = null;                      // {shop_id, shop_name, shop_face, mid}
const convs = new Map();            // room_id -> row (finduserlist shape + el)
let current = null;                 // {row, key, acked, outbox, pager}
let list;
let socket = null;
let creds = null;                   // the key the socket authenticates with
let toast;
let audio = null;
let lastBeep = 0;
let renderQueued = false;
let syncLimit = 50;                 // the server's page size (op 8 may say)

// -- start, login, logout -----------------------------------------------------------

async function boot() {
  applyI18n();
  toast = toaster($('toast'));
  for (const id of ['lang-toggle', 'login-lang']) $(id).addEventListener('click', toggleLang);
  onLangChange(() => { renderList(); list?.refreshLanguage(); showConvHeader(); document.title = baseTitle(); });
  $('login-form').addEventListener('submit', onLogin);
  const shop = new URLSearchParams(location.search).get('shop_id');
  if (shop) $('login-shop').value = shop;
  try {
    me = await request('GET', '/open/session');
  } catch (err) {
    if (!(err instanceof HttpError && err.status === 401)) console.error('kefu: session check failed', err);
    showLogin();
    return;
  }
  startConsole();
}

function showLogin(message = '') {
  $('console-view').classList.add('hidden');
  $('login-view').classList.remove('hidden');
  $('login-error').textContent = message;
  ($('login-shop').value ? $('login-password') : $('login-shop')).focus();
}

async function onLogin(e) {
  e.preventDefault();
  unlockAudio();
  $('login-error').textContent = '';
  try {
    me = await request('POST', '/open/login', {
      form: { shop_id: $('login-shop').value.trim(), password: $('login-password').value },
    });
  } catch (err) {
    $('login-error').textContent = `${t('console.loginFailed')}${err.data?.msg ? `: ${err.data.msg}` : ''}`;
    return;
  }
  $('login-password').value = '';
  startConsole();
}

async function logout() {
  try { await request('POST', '/open/logout'); } catch { /* the cookie is gone either way */ }
  location.replace(`/info.html?shop_id=${encodeURIComponent(me.shop_id)}`);
}

let started = false;

async function startConsole() {
  $('login-view').classList.add('hidden');
  $('console-view').classList.remove('hidden');
  if (started) {                    // logged in again after the session expired
    await loadList();
    return;
  }
  started = true;
  $('me-name').textContent = me.shop_name || t('console.title');
  $('me-face').src = safeImage(me.shop_face, '/img/shop.svg');
  document.title = baseTitle();
  setupConversationPane();
  setupSettings();
  document.addEventListener('visibilitychange', onVisibility);
  document.addEventListener('pointerdown', unlockAudio, { once: true });
  await loadList();
  await connect();
  setInterval(() => { if (document.visibilityState === 'visible' && socket?.isOpen) loadList(); }, LIST_REFRESH_MS);
}

// -- the socket --------------------------------------------------------------------------

let shopWideKey = true;             // does /open/com answer without a visitor mid?

/**
 * Agent credentials: a shop-wide agent key when the server offers one
 * (/open/com without mid), else the key of any conversation (an agent key
 * receives the whole shop either way). With neither, null: the console
 * then checks the list every few seconds until a first visitor arrives.
 */
async function agentCredentials() {
  const q = new URLSearchParams({ shop_id: me.shop_id, format: 'json' });
  if (shopWideKey) {
    try {
      return await request('GET', `/open/com?${q}`);
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) { showLogin(); throw err; }
      if (err instanceof HttpError && err.status === 400) shopWideKey = false;
    }
  }
  const row = current?.row || convs.values().next().value;
  if (!row) return null;
  q.set('mid', row.mid);
  return request('GET', `/open/com?${q}`);
}

let connecting = null;

/** Starts the socket once credentials can be had (concurrent calls share one attempt). */
function connect() {
  if (socket) return Promise.resolve();
  connecting ||= startSocket().finally(() => { connecting = null; });
  return connecting;
}

async function startSocket() {
  creds = await agentCredentials().catch(() => null);
  if (socket) return;
  if (!creds) {                    // no conversation yet: look again shortly
    clearTimeout(startSocket.retry);
    startSocket.retry = setTimeout(loadList, NO_SOCKET_POLL_MS);
    return;
  }
  socket = new KefuSocket({
    url: creds.suburl,
    auth: () => ({
      mid: creds.mid, key: creds.key, room_id: creds.room_id, platform: 'web', accepts: [5, 9],
      shop_id: me.shop_id, nickname: me.shop_name || '', face: me.shop_face || '',
    }),
    refreshAuth: async () => {
      creds = (await agentCredentials()) || creds;
      return { url: creds.suburl };
    },
  });
  const conn = connectionView($('conn'));
  let opened = false;
  socket.on('state', (info) => conn.update(info));
  socket.on('open', (reply) => {
    if (opened) loadList();        // catch up on what changed while we were away
    opened = true;
    if (reply.sync_limit > 0) syncLimit = reply.sync_limit;
    if (current) {
      current.pager.pageSize = syncLimit;
      current.pager.resync();
    }
  });
  socket.on('message', onLive);
  socket.on('history', (frame) => { if (current) current.pager.receive(frame); });
  socket.on('pong', ({ seq }) => { if (current) current.pager.pong(seq); });
  onLangChange(() => conn.render());
  socket.start();
}

// -- the conversation list ----------------------------------------------------------------

async function loadList() {
  let answer;
  try {
    answer = await request('POST', `/open/finduserlist?shop_id=${encodeURIComponent(me.shop_id)}`,
      { form: { shop_id: me.shop_id, limit: LIST_LIMIT } });
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) showLogin();
    return;
  }
  for (const row of answer.data || []) merge(row);
  renderList();
  showConvHeader();
  if (!socket) connect();
}

/** Folds a finduserlist row in; a live message newer than the server's snapshot wins. */
function merge(fresh) {
  const row = convs.get(fresh.room_id);
  if (!row) { convs.set(fresh.room_id, { ...fresh }); return; }
  // Online marks are flushed in batches: a visitor who just wrote is online whatever they say.
  row.user = fresh.user;
  row.online = fresh.online || Date.now() - (row.spokeAt || 0) < SPOKE_ONLINE_MS;
  const freshLast = fresh.last ? Number(fresh.last.id) : 0;
  if (freshLast < lastId(row)) return;        // the answer predates messages we already counted
  row.last = fresh.last;
  row.seq = fresh.seq;
  row.num = current?.row === row && document.visibilityState === 'visible' ? 0 : fresh.num;
}

/** A conversation we have not listed yet (a new visitor's first message). */
function rowFor(msg) {
  let row = convs.get(msg.room_id);
  if (row) return row;
  const mid = msg.room_id.slice(msg.room_id.indexOf('_') + 1);
  row = { room_id: msg.room_id, mid, user: { mid, nickname: msg.nickname || '', face: msg.face || '' },
    online: true, seq: 0, num: 0, last: null };
  convs.set(msg.room_id, row);
  clearTimeout(rowFor.timer);
  rowFor.timer = setTimeout(loadList, 150);     // fetch the profile, once per burst
  return row;
}

const lastId = (row) => (row.last ? Number(row.last.id) : 0);
const displayName = (row) => row.user?.nickname
  || `${t('console.visitor')}${getLang() === 'zh' ? '' : ' '}${row.mid.slice(0, 6)}`;

function renderList() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const rows = [...convs.values()].sort((a, b) => lastId(b) - lastId(a));
    const ul = $('convs');
    rows.forEach((row, i) => {
      if (!row.el) row.el = buildRow(row);
      updateRow(row);
      if (ul.children[i] !== row.el) ul.insertBefore(row.el, ul.children[i] || null);
    });
    $('convs-empty').classList.toggle('hidden', rows.length > 0);
    document.title = baseTitle();
  });
}

function buildRow(row) {
  const li = makeEl('li', 'conv');
  li.dataset.room = row.room_id;
  const btn = makeEl('button', 'conv-btn');
  btn.type = 'button';
  const pic = makeEl('span', 'conv-pic');
  const img = makeEl('img', 'avatar');
  img.alt = '';
  pic.append(img, makeEl('span', 'dot'));
  const main = makeEl('span', 'conv-main');
  const top = makeEl('span', 'conv-top');
  top.append(makeEl('span', 'conv-name'), makeEl('time', 'conv-time'));
  const bottom = makeEl('span', 'conv-bottom');
  bottom.append(makeEl('span', 'conv-last'), makeEl('span', 'badge'));
  main.append(top, bottom);
  btn.append(pic, main);
  btn.addEventListener('click', () => openConversation(row));
  li.append(btn);
  return li;
}

function updateRow(row) {
  const el = row.el;
  el.classList.toggle('active', current?.row === row);
  el.querySelector('.avatar').src = safeImage(row.user?.face, '/img/avatar.svg');
  const dot = el.querySelector('.dot');
  dot.classList.toggle('online', Boolean(row.online));
  dot.title = row.online ? t('console.online') : t('console.offline');
  el.querySelector('.conv-name').textContent = displayName(row);
  el.querySelector('.conv-time').textContent = row.last ? formatTime(row.last.dateline) : '';
  const last = el.querySelector('.conv-last');
  last.replaceChildren();
  if (row.last?.type === 'image') last.textContent = t('console.lastImage');
  else if (row.last) renderText(last, String(row.last.msg ?? '').slice(0, 80));
  const badge = el.querySelector('.badge');
  badge.textContent = row.num > 99 ? '99+' : String(row.num || '');
  badge.classList.toggle('hidden', !row.num);
}

function totalUnread() {
  let n = 0;
  for (const row of convs.values()) n += row.num || 0;
  return n;
}

const baseTitle = () => {
  const n = totalUnread();
  return `${n ? `(${n}) ` : ''}${me?.shop_name ? `${me.shop_name} - ` : ''}${t('console.title')}`;
};

// -- live messages --------------------------------------------------------------------------

function onLive(msg) {
  if (!msg.room_id) return;
  if (msg.type === 'online' || msg.type === 'presence') { setOnline(msg); return; }
  if (!isChatMessage(msg)) return;
  const row = rowFor(msg);
  const isNew = Number(msg.id) > lastId(row);
  if (isNew) row.last = msg;
  const fromVisitor = msg.mid === row.mid;
  if (fromVisitor) {
    row.online = true;
    row.spokeAt = Date.now();
  }
  const open = current?.row === row;
  if (open) current.list.add(msg);
  if (fromVisitor && isNew) {
    if (open && document.visibilityState === 'visible') ackCurrent();
    else if (Number(msg.id) > (row.seq || 0)) row.num = (row.num || 0) + 1;
    if (document.visibilityState !== 'visible' || !open) notify();
  }
  renderList();
}

function setOnline(msg) {
  const row = convs.get(msg.room_id);
  if (!row) return;
  row.online = Boolean(msg.online);
  renderList();
  if (current?.row === row) showConvHeader();
}

/** The agent has read the open conversation up to its newest message. */
function ackCurrent() {
  if (!current || document.visibilityState !== 'visible') return;
  const newest = current.list.newestId;
  const row = current.row;
  row.num = 0;
  renderList();
  if (newest <= current.acked || !socket) return;
  if (socket.ack(JSON.stringify({ room_id: row.room_id, id: newest }))) {
    current.acked = newest;
    row.seq = Math.max(row.seq || 0, newest);
  }
}

function onVisibility() {
  if (document.visibilityState === 'visible') ackCurrent();
  document.title = baseTitle();
}

// -- a sound (WebAudio: no file, no autoplay surprise: unlocked by the first click) -------------

function unlockAudio() {
  if (audio || !window.AudioContext) return;
  try { audio = new AudioContext(); } catch { audio = null; }
}

function notify() {
  if (localStorage.getItem(SOUND_KEY) === 'off' || !audio || Date.now() - lastBeep < 1500) return;
  lastBeep = Date.now();
  const now = audio.currentTime;
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.frequency.setValueAtTime(880, now);
  osc.frequency.setValueAtTime(1320, now + 0.12);
  gain.gain.setValueAtTime(0.0001, now);
  gain.gain.exponentialRampToValueAtTime(0.2, now + 0.02);
  gain.gain.exponentialRampToValueAtTime(0.0001, now + 0.35);
  osc.connect(gain).connect(audio.destination);
  osc.start(now);
  osc.stop(now + 0.4);
}

// -- one conversation ------------------------------------------------------------------------------

function setupConversationPane() {
  const scroller = $('scroller');
  list = new MessageList(scroller, {
    isOwn: (msg) => !current || msg.mid !== current.row.mid,
    avatarFor: () => safeImage(current?.row.user?.face, '/img/avatar.svg'),
    onRetry: (cmid) => current?.outbox.retry(cmid),
    onNewBelow: () => $('new-below').classList.remove('hidden'),
  });
  scroller.addEventListener('scroll', () => {
    if (!current) return;
    if (scroller.scrollTop < 60 && current.pager.loadOlder()) showNote('loading');
    if (list.stick) $('new-below').classList.add('hidden');
  }, { passive: true });
  $('new-below').addEventListener('click', () => { list.scrollToBottom(); $('new-below').classList.add('hidden'); });
  $('back-btn').addEventListener('click', () => $('console-view').classList.remove('show-conv'));

  setupComposer(() => current?.outbox, $('conversation'));
}

function showNote(kind) {
  const note = $('history-note');
  note.dataset.kind = kind;
  note.textContent = { loading: t('chat.loadingOlder'), none: t('chat.noMore'), trimmed: t('chat.trimmed') }[kind] || '';
}

function showConvHeader() {
  if (!current) return;
  const row = current.row;
  $('conv-name').textContent = displayName(row);
  $('conv-face').src = safeImage(row.user?.face, '/img/avatar.svg');
  const state = $('conv-state');
  state.textContent = row.online ? t('console.online') : t('console.offline');
  state.classList.toggle('online', Boolean(row.online));
}

/** Sends for one conversation; a result arriving after the agent moved on touches nothing. */
function outboxFor(row, conv) {
  const guard = (fn) => (...args) => (current === conv ? fn(...args) : undefined);
  const view = {
    add: guard((msg) => list.add(msg)),
    addPending: guard((p) => list.addPending(p)),
    setState: guard((cmid, s) => list.setState(cmid, s)),
    pendingEntry: (cmid) => (current === conv ? list.pendingEntry(cmid) : null),
  };
  return new Outbox({
    list: view,
    toast,
    push: async (payload) => {
      const key = conv.key || (await conv.ready).key;
      const q = new URLSearchParams({ mid: me.mid, shop_id: me.shop_id });
      return pushMessage(`/open/push?${q}`, { ...payload, room_id: row.room_id, key });
    },
    upload: (file) => uploadImage(file, { key: conv.key, room_id: row.room_id, shop_id: me.shop_id }),
    onSent: (msg) => { if (Number(msg.id) > lastId(row)) { row.last = msg; renderList(); } },
  });
}

async function openConversation(row) {
  unlockAudio();
  if (current?.row === row) { $('console-view').classList.add('show-conv'); return; }
  list.reset();
  const conv = { row, key: null, acked: 0, list };
  conv.pager = new HistoryPager({
    list, roomId: row.room_id, pageSize: syncLimit,
    send: (body) => (socket ? socket.sync(body) : 0),
    barrier: () => (socket ? socket.barrier() : 0),
    onGap: () => showNote('trimmed'),
    onIdle: (kind) => {
      showNote(kind === 'before' && conv.pager.exhausted ? 'none' : '');
      const s = $('scroller');        // a first page shorter than the pane: nothing to scroll, so fetch more
      if (kind === 'newest' && s.scrollHeight <= s.clientHeight && conv.pager.loadOlder()) showNote('loading');
      ackCurrent();
    },
  });
  conv.outbox = outboxFor(row, conv);
  current = conv;
  row.num = 0;
  renderList();
  for (const id of ['conv-bar', 'scroller', 'composer-box']) $(id).classList.remove('hidden');
  $('placeholder').classList.add('hidden');
  $('new-below').classList.add('hidden');
  $('console-view').classList.add('show-conv');
  showNote('');
  showConvHeader();
  $('input').focus();

  const q = new URLSearchParams({ shop_id: me.shop_id, mid: row.mid, format: 'json' });
  if (lastId(row)) q.set('seq', String(lastId(row)));      // /open/com marks it read
  conv.ready = request('GET', `/open/com?${q}`);
  try {
    conv.key = (await conv.ready).key;
  } catch (err) {
    if (err instanceof HttpError && err.status === 401) showLogin();
    else toast(err.message);
    return;
  }
  if (current !== conv) return;
  if (socket?.isOpen) conv.pager.resync();
  else if (!socket) connect();
}

// -- settings -------------------------------------------------------------------------------------

function setupSettings() {
  const origin = location.origin;
  const shop = encodeURIComponent(me.shop_id);
  $('snippet-link').textContent = `${origin}/open/im?shop_id=${shop}`;
  $('snippet-widget').textContent = `<script src="${origin}/widget.js" data-shop="${me.shop_id}" async></script>`;
  $('snippet-console').textContent = `${origin}/info.html?shop_id=${shop}`;
  const dialog = $('settings');
  $('settings-btn').addEventListener('click', () => dialog.showModal());
  $('logout-btn').addEventListener('click', logout);
  const sound = $('sound-toggle');
  sound.checked = localStorage.getItem(SOUND_KEY) !== 'off';
  sound.addEventListener('change', () => localStorage.setItem(SOUND_KEY, sound.checked ? 'on' : 'off'));
  for (const btn of dialog.querySelectorAll('[data-copy]')) {
    btn.addEventListener('click', () => copy($(btn.dataset.copy).textContent, btn));
  }
}

async function copy(text, btn) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange();
    range.selectNodeContents(btn.previousElementSibling);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand('copy');
  }
  btn.textContent = t('console.copied');
  setTimeout(() => { btn.textContent = t('console.copy'); }, 1500);
}

boot();
