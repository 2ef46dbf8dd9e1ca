/*
 * common.js: HTTP helpers and small UI pieces shared by the visitor page
 * and the agent console. Every request goes to our own origin (the CSP's
 * connect-src 'self'), with cookies.
 */
import { t } from './i18n.js';
import { isUploadUrl } from './chatview.js';

export const MAX_TEXT = 4000;
export const MAX_IMAGE_BYTES = 5 * 1024 * 1024;

export class HttpError extends Error {
  constructor(status, data, retryAfter = 0) {
    super((data && data.msg) || `HTTP ${status}`);
    this.status = status;
    this.data = data;
    this.retryAfter = retryAfter;
  }
}

/**
 * fetch + JSON; throws HttpError on a non-2xx answer or {"success": false}.
 * A request that hangs (a dead mobile network) is abandoned after timeoutMs.
 */
export async function request(method, url, { json, form, body, timeoutMs = 20000 } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (AbortSignal.timeout) init.signal = AbortSignal.timeout(timeoutMs);
  if (json !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = new URLSearchParams(form);
  } else if (body !== undefined) {
    init.body = body;
  }
  const res = await fetch(url, init);
  let data = null;
  try { data = await res.json(); } catch { /* not JSON */ }
  if (!res.ok || (data && data.success === false)) {
    throw new HttpError(res.status, data, Number(res.headers.get('Retry-After')) || 0);
  }
  return data;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** POSTs a message; waits out a 429 (Retry-After) a few times before giving up. */
export async function pushMessage(url, payload) {
  for (let tries = 0; ; tries += 1) {
    try {
      return await request('POST', url, { json: payload });
    } catch (err) {
      if (!(err instanceof HttpError) || err.status !== 429 || tries >= 3) throw err;
      await sleep(Math.min(10, err.retryAfter || 1) * 1000);
    }
  }
}

/** Uploads an image (multipart field "file"); returns its /upload/ URL. */
export async function uploadImage(file, fields = {}) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) if (value != null) form.append(name, value);
  form.append('file', file, file.name || 'image.png');
  const data = await request('POST', '/upload/file', { body: form, timeoutMs: 120000 });
  if (!isUploadUrl(data && data.url)) throw new Error('unexpected upload url');
  return data.url;
}

/** An error message for a file we will not upload, or '' when it is fine. */
export function checkImageFile(file) {
  if (!file || !/^image\//.test(file.type)) return t('chat.image.notImage');
  if (file.size > MAX_IMAGE_BYTES) return t('chat.image.tooBig', { mb: MAX_IMAGE_BYTES >> 20 });
  return '';
}

/** Avatars: our uploads or our bundled images only, else the fallback. */
export function safeImage(url, fallback) {
  if (isUploadUrl(url)) return url;
  if (typeof url === 'string' && /^\/img\/[a-z0-9/_-]+\.(svg|png)$/i.test(url)) return url;
  return fallback;
}

/** A URL on our own origin (the CSP allows nothing else), or the fallback path. */
export function sameOrigin(url, fallback) {
  try {
    const u = new URL(url || fallback, location.href);
    return u.origin === location.origin ? u.pathname : fallback;
  } catch {
    return fallback;
  }
}

/** Renders a KefuSocket state into el: empty when connected, a short line otherwise. */
export function connectionView(el) {
  let timer = 0;
  let last = { state: 'connecting' };
  const render = () => {
    const { state, retryAt } = last;
    el.dataset.state = state;
    if (state === 'open' || state === 'stopped') { el.textContent = ''; return; }
    if (state === 'reconnecting' && retryAt) {
      const s = Math.ceil((retryAt - Date.now()) / 1000);
      el.textContent = s > 1 ? t('state.reconnectIn', { s }) : t('state.reconnecting');
      return;
    }
    el.textContent = t(`state.${state}`) || '';
  };
  return {
    update(info) {
      last = info;
      clearInterval(timer);
      if (info.retryAt) timer = setInterval(render, 1000);
      render();
    },
    render,
  };
}

/** A toast line that hides itself. */
export function toaster(el) {
  let timer = 0;
  return (text, ms = 3000) => {
    el.textContent = text;
    el.classList.remove('hidden');
    clearTimeout(timer);
    timer = setTimeout(() => el.classList.add('hidden'), ms);
  };
}

/** Grows a textarea with its content, up to max pixels (CSSOM: allowed by the CSP). */
export function autosize(textarea, max = 120) {
  textarea.style.height = 'auto';
  textarea.style.height = `${Math.min(textarea.scrollHeight, max)}px`;
}

/** Enter sends, Shift+Enter is a newline, and an IME composition (Chinese input) is left alone. */
export function onEnterSend(textarea, send) {
  textarea.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' || e.shiftKey || e.isComposing || e.keyCode === 229) return;
    e.preventDefault();
    send();
  });
}

/** Image files pasted into el (screenshots, copied images). */
export function onPasteImage(el, handle) {
  el.addEventListener('paste', (e) => {
    const files = Array.from(e.clipboardData?.files || []).filter((f) => f.type.startsWith('image/'));
    if (!files.length) return;
    e.preventDefault();
    files.forEach(handle);
  });
}

/** Image files dropped onto el. */
export function onDropImage(el, handle) {
  el.addEventListener('dragover', (e) => { if (e.dataTransfer?.types.includes('Files')) e.preventDefault(); });
  el.addEventListener('drop', (e) => {
    const files = Array.from(e.dataTransfer?.files || []).filter((f) => f.type.startsWith('image/'));
    if (!files.length) return;
    e.preventDefault();
    files.forEach(handle);
  });
}
