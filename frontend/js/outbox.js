/*
 * outbox.js: sending with a client message id. A message is shown at once
 * (pending), POSTed, and confirmed by whichever comes first: the HTTP
 * answer or its live echo (same client_msg_id, so never shown twice). A
 * failure leaves it marked failed with a retry button; a retry reuses the
 * client_msg_id, so the server stores it at most once. Messages go out one
 * at a time, in the order they were written: ids are given by the server
 * as requests arrive, so concurrent POSTs could swap two quick messages.
 */
import { clientMsgId } from './chatview.js';
import { checkImageFile, MAX_TEXT } from './common.js';
import { t } from './i18n.js';

export class Outbox {
  /**
   * list: MessageList; push(payload) -> server answer ({id, data}); upload(file) -> url;
   * toast(text); onSent(msg) after a confirmation.
   */
  constructor({ list, push, upload, toast, onSent = () => {} }) {
    Object.assign(this, { list, push, upload, toast, onSent });
    this.items = new Map();     // cmid -> {type, msg, file}
    this.queue = Promise.resolve();
  }

  /** Returns false (and says why) when text cannot be sent. */
  sendText(text) {
    const msg = text.trim();
    if (!msg) return false;
    if (msg.length > MAX_TEXT) { this.toast(t('chat.tooLong', { n: MAX_TEXT })); return false; }
    this.start({ type: 'text', msg });
    return true;
  }

  sendImage(file) {
    const problem = checkImageFile(file);
    if (problem) { this.toast(problem); return; }
    this.start({ type: 'image', msg: '', file }, URL.createObjectURL(file));
  }

  retry(cmid) { if (this.items.has(cmid)) this.enqueue(cmid); }

  start(item, localSrc = null) {
    const cmid = clientMsgId();
    this.items.set(cmid, item);
    this.list.addPending({ cmid, type: item.type, msg: item.msg, localSrc });
    this.enqueue(cmid);
  }

  enqueue(cmid) {
    this.list.setState(cmid, 'sending');
    this.queue = this.queue.then(() => this.deliver(cmid));
  }

  async deliver(cmid) {
    const item = this.items.get(cmid);
    if (!item) return;
    try {
      if (item.file && !item.msg) {
        try {
          item.msg = await this.upload(item.file);
        } catch (err) {
          this.toast(err.message && err.status ? err.message : t('chat.image.uploadFailed'));
          throw err;
        }
      }
      const answer = await this.push({ type: item.type, msg: item.msg, client_msg_id: cmid });
      const msg = this.serverMessage(answer, item, cmid);
      this.items.delete(cmid);
      if (msg) {
        this.list.add(msg);
        this.onSent(msg);
      }
    } catch (err) {
      console.warn('kefu: send failed', err);
      if (this.list.pendingEntry(cmid) && !this.list.pendingEntry(cmid).id) this.list.setState(cmid, 'failed');
      if (err.status && err.status !== 429 && err.data?.msg) this.toast(err.data.msg);
    }
  }

  serverMessage(answer, item, cmid) {
    const data = answer && typeof answer.data === 'object' && answer.data ? answer.data : null;
    const id = data?.id ?? answer?.id;
    if (!id) return null;
    return {
      type: item.type, msg: item.msg, dateline: Math.floor(Date.now() / 1000),
      ...data, id, client_msg_id: cmid,
    };
  }
}
