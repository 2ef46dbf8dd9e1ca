/*
 * composer.js: the message box both pages share: Enter to send (IME-safe),
 * autosize, emoji picker, image by file picker, paste and drop.
 *
 * outboxOf() returns the outbox messages go to right now (the console's
 * changes with the open conversation; null when none is open).
 */
import { buildPicker, insertAtCaret } from './emoji.js';
import { autosize, onEnterSend, onPasteImage, onDropImage } from './common.js';

export function setupComposer(outboxOf, dropTarget) {
  const $ = (id) => document.getElementById(id);
  const input = $('input');
  const panel = $('emoji-panel');
  const sendImage = (file) => outboxOf()?.sendImage(file);
  const send = () => {
    const outbox = outboxOf();
    if (outbox && outbox.sendText(input.value)) {
      input.value = '';
      autosize(input);
      panel.classList.add('hidden');
    }
  };
  onEnterSend(input, send);
  input.addEventListener('input', () => autosize(input));
  $('composer').addEventListener('submit', (e) => { e.preventDefault(); send(); input.focus(); });
  buildPicker(panel, (code) => insertAtCaret(input, code));
  $('emoji-btn').addEventListener('click', () => panel.classList.toggle('hidden'));
  $('file-input').addEventListener('change', (e) => {
    for (const file of e.target.files) sendImage(file);
    e.target.value = '';
  });
  onPasteImage(input, sendImage);
  onDropImage(dropTarget, sendImage);
}
