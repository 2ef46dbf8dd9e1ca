/*
 * emoji.js: the seed's [name] codes. A message carries the code as text
 * ("你好[微笑]"); renderText() turns known codes into <img> elements and
 * everything else into text nodes: never HTML.
 */

export const EMOJI = [
  ['微笑', 'weixiao'], ['大笑', 'daxiao'], ['偷笑', 'touxiao'], ['呲牙', 'ciya'],
  ['调皮', 'tiaopi'], ['害羞', 'haixiu'], ['色', 'se'], ['得意', 'deyi'],
  ['酷', 'ku'], ['发呆', 'fadai'], ['疑问', 'yiwen'], ['惊讶', 'jingya'],
  ['流泪', 'liulei'], ['大哭', 'daku'], ['难过', 'nanguo'], ['发怒', 'fanu'],
  ['尴尬', 'ganga'], ['睡', 'shui'], ['爱心', 'aixin'], ['心碎', 'xinsui'],
  ['玫瑰', 'meigui'], ['咖啡', 'kafei'], ['礼物', 'liwu'], ['强', 'qiang'],
];

const FILES = new Map(EMOJI);
const CODE_RE = /\[([^[\]]{1,8})\]/g;

export const emojiUrl = (file) => `/img/emoji/${file}.svg`;

function emojiImg(name, file) {
  const img = document.createElement('img');
  img.className = 'emoji';
  img.src = emojiUrl(file);
  img.alt = `[${name}]`;
  img.title = name;
  img.draggable = false;
  return img;
}

/** Appends text to parent: known [codes] as images, the rest as text nodes. */
export function renderText(parent, text) {
  const s = String(text ?? '');
  let last = 0;
  for (const m of s.matchAll(CODE_RE)) {
    const file = FILES.get(m[1]);
    if (!file) continue;
    if (m.index > last) parent.append(document.createTextNode(s.slice(last, m.index)));
    parent.append(emojiImg(m[1], file));
    last = m.index + m[0].length;
  }
  if (last < s.length) parent.append(document.createTextNode(s.slice(last)));
}

/** Builds the picker grid into panel; onPick receives the code, e.g. "[微笑]". */
export function buildPicker(panel, onPick) {
  panel.replaceChildren();
  for (const [name, file] of EMOJI) {
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'emoji-btn';
    btn.title = name;
    btn.setAttribute('aria-label', name);
    btn.append(emojiImg(name, file));
    btn.addEventListener('click', () => onPick(`[${name}]`));
    panel.append(btn);
  }
}

/** Inserts code at the textarea's caret and keeps focus there. */
export function insertAtCaret(textarea, code) {
  const start = textarea.selectionStart ?? textarea.value.length;
  const end = textarea.selectionEnd ?? start;
  textarea.setRangeText(code, start, end, 'end');
  textarea.dispatchEvent(new Event('input', { bubbles: true }));
  textarea.focus();
}
