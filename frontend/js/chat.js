/*
 * chat.js: the visitor page (/chat.html, reached via /open/im?shop_id=…).
 *
 * Parameters come from the redirect's query string (PROTOCOL.md §5); the
 * connection key is then removed from the address bar, and a reload gets
 * a fresh one from /open/im?format=json (same visitor by cookie or mid).
 */
import { KefuSocket } from './kefu-client.js';
import { MessageList, HistoryPager, isChatMessage } from './chatview.js';
import { Outbox } from './outbox.js';
import { setupComposer } from './composer.js';
import { t, applyI18n, toggleLang, onLangChange } from './i18n.js';
import {
  request, pushMessage, uploadImage, safeImage, sameOrigin, connectionView, toaster,
} from './common.js';

const $ = (id) => document.getElementById(id);
const FIELDS = ['room_id', 'accepts', 'key', 'mid', 'nickname', 'face', 'shop_id', 'shop_name', 'shop_face', 'suburl', 'pushurl'];
const embedded = window.parent !== window;
// In the widget's panel: closed until the widget says it is open (no read marks meanwhile).
let panelOpen = !(embedded && new URLSearchParams(location.hash.slice(1)).get('panel') === 'closed');

let conf = {};
let list;
let pager;
let outbox;
let socket;
let ackedId = 0;
let ackTimer = 0;

function readParams() {
  const q = new URLSearchParams(location.search);
  const out = {};
  for (const name of FIELDS) out[name] = q.get(name) || '';
  return out;
}

/** Fresh parameters (and key) from the API, for a reload or an expired key. */
async function fetchParams(base) {
  const q = new URLSearchParams({ format: 'json' });
  for (const name of ['shop_id', 'mid', 'nickname', 'face']) if (base[name]) q.set(name, base[name]);
  const data = await request('GET', `/open/im?${q}`);
  const fresh = data && typeof data.data === 'object' && data.data ? data.data : data;
  return { ...base, ...Object.fromEntries(FIELDS.filter((f) => fresh[f] != null).map((f) => [f, String(fresh[f])])) };
}

/** Keeps the credential out of the address bar (copied links, screenshots, history). */
function hideKey() {
  const q = new URLSearchParams(location.search);
  if (!q.has('key')) return;
  q.delete('key');
  history.replaceState(null, '', `${location.pathname}?${q}`);
}

const pushUrl = () => `${sameOrigin(conf.pushurl, '/open/push')}?${new URLSearchParams({ mid: conf.mid, shop_id: conf.shop_id })}`;

/** goim's wanted operations: the page's list (goim pushes) plus chat messages and batches. */
function accepts() {
  let ops = [];
  try { ops = JSON.parse(conf.accepts || '[]'); } catch { /* not a list */ }
  return [...new Set([5, 9, ...(Array.isArray(ops) ? ops.filter(Number.isInteger) : [])])];
}

function authBody() {
  return {
    mid: conf.mid, key: conf.key, room_id: conf.room_id, platform: 'web', accepts: accepts(),
    shop_id: conf.shop_id, nickname: conf.nickname, face: conf.face,
  };
}

function showHeader() {
  const name = conf.shop_name || t('chat.agent');
  $('shop-name').textContent = name;
  document.title = name;
  $('shop-face').src = safeImage(conf.shop_face, '/img/shop.svg');
}

// -- history note (top of the list) ----------------------------------------

function showNote(kind) {
  const note = $('history-note');
  note.dataset.kind = kind;
  const text = {
    loading: t('chat.loadingOlder'), trimmed: t('chat.trimmed'), empty: t('chat.empty'),
    none: list.size ? t('chat.noMore') : t('chat.empty'), error: t('chat.loadFailed'), '': '',
  };
  note.textContent = text[kind] ?? '';
}

function onHistoryIdle(kind) {
  if (!list.size) showNote('empty');
  else if (kind === 'before' && pager.exhausted) showNote('none');
  else showNote('');
  if (kind === 'newest' && !pager.exhausted) fillViewport();
  scheduleAck();
}

/** A short first page on a tall screen leaves nothing to scroll: fetch more at once. */
function fillViewport() {
  const s = $('scroller');
  if (s.scrollHeight <= s.clientHeight && pager.loadOlder()) showNote('loading');
}

function onScroll() {
  if ($('scroller').scrollTop < 60 && pager.loadOlder()) showNote('loading');
  if (list.stick) $('new-below').classList.add('hidden');
}

// -- read offsets ------------------------------------------------------------

/** Tells the server we have read up to the newest message, when the page is actually visible. */
function scheduleAck() {
  clearTimeout(ackTimer);
  ackTimer = setTimeout(() => {
    if (document.visibilityState !== 'visible' || !panelOpen || list.newestId <= ackedId) return;
    if (socket.ack(list.newestId)) ackedId = list.newestId;
  }, 300);
}

async function fetchReadMark() {
  try {
    const q = new URLSearchParams({ room_id: conf.room_id, key: conf.key });
    const data = await request('GET', `/open/readmark?${q}`);
    if (data && data.seq) list.setRead(data.seq);
  } catch { /* older servers have no read marks */ }
}

// -- socket events -------------------------------------------------------------

function onLive(msg) {
  if (msg.room_id && msg.room_id !== conf.room_id) return;
  if (msg.type === 'read') { list.setRead(msg.seq); return; }
  if (!isChatMessage(msg)) return;
  const added = list.add(msg);
  if (added === 'new' && msg.mid !== conf.mid) {
    if (embedded) parent.postMessage({ kefu: 'message', shop_id: conf.shop_id }, '*');
    scheduleAck();
  }
}

function onOpen(reply) {
  if (reply.sync_limit > 0) pager.pageSize = reply.sync_limit;
  pager.resync();
  fetchReadMark();
}

function startSocket() {
  socket = new KefuSocket({
    url: conf.suburl,
    auth: authBody,
    refreshAuth: async () => {
      conf = await fetchParams(conf);
      return { url: conf.suburl };
    },
  });
  const conn = connectionView($('conn'));
  socket.on('state', (info) => conn.update(info));
  socket.on('open', onOpen);
  socket.on('message', onLive);
  socket.on('history', (frame) => pager.receive(frame));
  socket.on('pong', ({ seq }) => pager.pong(seq));
  onLangChange(() => conn.render());
  socket.start();
}

/** The message list, its history pager and the outbox (before the socket exists). */
function setupList() {
  const scroller = $('scroller');
  list = new MessageList(scroller, {
    isOwn: (msg) => msg.mid === conf.mid,
    avatarFor: () => safeImage(conf.shop_face, '/img/shop.svg'),
    readMarks: true,
    onRetry: (cmid) => outbox.retry(cmid),
    onNewBelow: () => $('new-below').classList.remove('hidden'),
  });
  pager = new HistoryPager({
    list, send: (body) => socket.sync(body), barrier: () => socket.barrier(),
    onGap: () => showNote('trimmed'),
    onIdle: onHistoryIdle,
  });
  scroller.addEventListener('scroll', onScroll, { passive: true });
  $('new-below').addEventListener('click', () => {
    list.scrollToBottom();
    $('new-below').classList.add('hidden');
  });
  outbox = new Outbox({
    list,
    push: (payload) => pushMessage(pushUrl(), {
      ...payload, room_id: conf.room_id, key: conf.key, shop_id: conf.shop_id, mid: conf.mid,
    }),
    upload: (file) => uploadImage(file, { key: conf.key, room_id: conf.room_id, mid: conf.mid, shop_id: conf.shop_id }),
    toast: toaster($('toast')),
  });
}

async function main() {
  applyI18n();
  $('lang-toggle').addEventListener('click', toggleLang);
  onLangChange(() => { showHeader(); list.refreshLanguage(); showNote($('history-note').dataset.kind || ''); });
  if (embedded) {
    document.body.classList.add('embedded');
    window.addEventListener('message', (e) => {
      if (e.source !== window.parent || e.data?.kefu !== 'panel') return;
      panelOpen = Boolean(e.data.open);
      scheduleAck();
    });
  }
  setupList();
  conf = readParams();
  try {
    if (!(conf.key && conf.room_id && conf.mid && conf.suburl)) conf = await fetchParams(conf);
  } catch (err) {
    console.error('kefu: cannot start chat', err);
    showNote('error');
    return;
  }
  hideKey();
  showHeader();
  setupComposer(() => outbox, $('app'));
  document.addEventListener('visibilitychange', scheduleAck);
  startSocket();
}

main();
