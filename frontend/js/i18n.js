/*
 * i18n.js: Chinese first (the seed's users), English on ?lang=en or the
 * toggle (remembered in localStorage). Markup names its strings with
 * data-i18n (text), data-i18n-placeholder, data-i18n-title, data-i18n-aria.
 */

const STRINGS = {
  zh: {
    'lang.toggle': 'EN',
    'state.connecting': '连接中…',
    'state.reconnecting': '连接已断开，正在重连…',
    'state.reconnectIn': '连接已断开，{s} 秒后重连',
    'state.offline': '网络不可用，恢复后自动重连',
    'chat.placeholder': '输入消息，Enter 发送',
    'chat.send': '发送',
    'chat.emoji': '表情',
    'chat.image': '图片',
    'chat.loadingOlder': '加载中…',
    'chat.noMore': '没有更多消息了',
    'chat.trimmed': '更早的消息已过期',
    'chat.newBelow': '有新消息',
    'chat.empty': '您好，有什么可以帮您？',
    'chat.read': '已读',
    'chat.unread': '未读',
    'chat.sending': '发送中…',
    'chat.failed': '发送失败',
    'chat.retry': '重试',
    'chat.image.alt': '图片',
    'chat.image.blocked': '[图片]',
    'chat.image.tooBig': '图片不能超过 {mb} MB',
    'chat.image.notImage': '只能发送图片',
    'chat.image.uploadFailed': '图片上传失败',
    'chat.tooLong': '消息太长（最多 {n} 字）',
    'chat.loadFailed': '无法打开聊天，请稍后再试',
    'chat.agent': '客服',
    'console.title': '客服工作台',
    'console.login': '登录',
    'console.loginTitle': '客服登录',
    'console.shopId': '商户号',
    'console.password': '密码',
    'console.loginFailed': '登录失败',
    'console.logout': '退出',
    'console.settings': '设置',
    'console.back': '返回',
    'console.noConversations': '暂无会话',
    'console.pick': '选择左侧的会话开始回复',
    'console.online': '在线',
    'console.offline': '离线',
    'console.visitor': '访客',
    'console.sound': '新消息提示音',
    'console.snippetTitle': '接入方式',
    'console.snippetLink': '1. 链接（原有方式）：把网页上的客服按钮链接改为',
    'console.snippetWidget': '2. 一行代码：在网页 </body> 前加入，右下角出现客服按钮',
    'console.consoleLink': '客服工作台地址',
    'console.copy': '复制',
    'console.copied': '已复制',
    'console.close': '关闭',
    'console.lastImage': '[图片]',
  },
  en: {
    'lang.toggle': '中文',
    'state.connecting': 'Connecting…',
    'state.reconnecting': 'Disconnected, reconnecting…',
    'state.reconnectIn': 'Disconnected, retrying in {s}s',
    'state.offline': 'You are offline; we will reconnect when the network is back',
    'chat.placeholder': 'Type a message, Enter to send',
    'chat.send': 'Send',
    'chat.emoji': 'Emoji',
    'chat.image': 'Image',
    'chat.loadingOlder': 'Loading…',
    'chat.noMore': 'No earlier messages',
    'chat.trimmed': 'Earlier messages have expired',
    'chat.newBelow': 'New messages',
    'chat.empty': 'Hello! How can we help you?',
    'chat.read': 'Read',
    'chat.unread': 'Unread',
    'chat.sending': 'Sending…',
    'chat.failed': 'Not sent',
    'chat.retry': 'Retry',
    'chat.image.alt': 'image',
    'chat.image.blocked': '[image]',
    'chat.image.tooBig': 'Images must be under {mb} MB',
    'chat.image.notImage': 'Only images can be sent',
    'chat.image.uploadFailed': 'Image upload failed',
    'chat.tooLong': 'Message too long (at most {n} characters)',
    'chat.loadFailed': 'Could not open the chat, please try again later',
    'chat.agent': 'Support',
    'console.title': 'Agent console',
    'console.login': 'Log in',
    'console.loginTitle': 'Agent login',
    'console.shopId': 'Shop ID',
    'console.password': 'Password',
    'console.loginFailed': 'Login failed',
    'console.logout': 'Log out',
    'console.settings': 'Settings',
    'console.back': 'Back',
    'console.noConversations': 'No conversations yet',
    'console.pick': 'Pick a conversation to reply',
    'console.online': 'online',
    'console.offline': 'offline',
    'console.visitor': 'Visitor',
    'console.sound': 'Sound on new messages',
    'console.snippetTitle': 'Add chat to your site',
    'console.snippetLink': '1. Link (as before): point your site\'s chat button to',
    'console.snippetWidget': '2. One line: paste before </body> for a floating chat button',
    'console.consoleLink': 'Agent console address',
    'console.copy': 'Copy',
    'console.copied': 'Copied',
    'console.close': 'Close',
    'console.lastImage': '[image]',
  },
};

const STORAGE_KEY = 'kefu_lang';

function initialLang() {
  const fromUrl = new URLSearchParams(location.search).get('lang')
    || new URLSearchParams(location.hash.slice(1)).get('lang');     // the widget's iframe
  if (fromUrl && STRINGS[fromUrl]) return fromUrl;
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved && STRINGS[saved]) return saved;
  } catch { /* storage blocked (third-party iframe) */ }
  return 'zh';
}

let lang = initialLang();
const listeners = [];

export const getLang = () => lang;

/** The string for key in the current language, with {name} placeholders filled. */
export function t(key, params = {}) {
  const text = STRINGS[lang][key] ?? STRINGS.zh[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
}

/** Fills every data-i18n* element under root. */
export function applyI18n(root = document) {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = t(el.dataset.i18nPlaceholder);
  for (const el of root.querySelectorAll('[data-i18n-title]')) el.title = t(el.dataset.i18nTitle);
  for (const el of root.querySelectorAll('[data-i18n-aria]')) el.setAttribute('aria-label', t(el.dataset.i18nAria));
}

export function setLang(next) {
  if (!STRINGS[next] || next === lang) return;
  lang = next;
  try { localStorage.setItem(STORAGE_KEY, next); } catch { /* ignore */ }
  applyI18n();
  for (const fn of listeners) fn(lang);
}

export const toggleLang = () => setLang(lang === 'zh' ? 'en' : 'zh');
export const onLangChange = (fn) => listeners.push(fn);

/** "14:05" today, "3月2日 14:05" / "3/2 14:05" otherwise; dateline is Unix seconds. */
export function formatTime(dateline) {
  const d = new Date(Number(dateline) * 1000);
  if (Number.isNaN(d.getTime())) return '';
  const hm = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return hm;
  const md = lang === 'zh' ? `${d.getMonth() + 1}月${d.getDate()}日` : `${d.getMonth() + 1}/${d.getDate()}`;
  const year = d.getFullYear() === now.getFullYear() ? '' : (lang === 'zh' ? `${d.getFullYear()}年` : `${d.getFullYear()}/`);
  return `${year}${md} ${hm}`;
}
