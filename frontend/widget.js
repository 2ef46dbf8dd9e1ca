/*
 * kefu widget: one line on the merchant's site adds a floating chat button.
 *
 *   <script src="https://kefu.example.com/widget.js" data-shop="8000" async></script>
 *
 * Optional attributes: data-lang="en", data-position="left", data-color="#e91e63",
 * and the seed's visitor parameters data-mid, data-nickname, data-face.
 *
 * Desktop: the button opens the visitor page in a panel (an iframe of
 * /open/im). Phones: a new tab. While the panel is closed, an agent's reply
 * shows a red dot on the button (the page in the iframe tells us with
 * postMessage). A visitor who chatted before on this site gets the panel
 * preloaded, hidden, so replies reach them even before they open it.
 *
 * Runs on someone else's page: no globals but window.KefuWidget, no CSS
 * file (styles are set through element.style, which any CSP allows), and
 * nothing of the host page is read.
 */
(function () {
  'use strict';
  var script = document.currentScript;
  if (!script || window.KefuWidget) return;
  var shop = script.getAttribute('data-shop');
  if (!shop || !/^[A-Za-z0-9-]{1,32}$/.test(shop)) {
    console.warn('kefu widget: missing or invalid data-shop');
    return;
  }
  var base = new URL(script.src, location.href).origin;
  var color = script.getAttribute('data-color') || '';
  if (!/^#[0-9a-fA-F]{3,8}$/.test(color)) color = '#1e88e5';
  var side = script.getAttribute('data-position') === 'left' ? 'left' : 'right';
  var lang = script.getAttribute('data-lang') === 'en' ? 'en' : 'zh';
  var label = lang === 'en' ? 'Chat with us' : '在线客服';
  var closeLabel = lang === 'en' ? 'Close chat' : '关闭客服窗口';
  var seenKey = 'kefu_widget_' + shop;

  var query = new URLSearchParams({ shop_id: shop });
  ['mid', 'nickname', 'face'].forEach(function (name) {
    var value = script.getAttribute('data-' + name);
    if (value) query.set(name, value);
  });
  query.set('url', location.href.slice(0, 1000));
  var chatUrl = base + '/open/im?' + query.toString();

  // Options for the page travel in the fragment, which survives /open/im's redirect.
  function pageUrl(visible) {
    var frag = new URLSearchParams();
    if (lang === 'en') frag.set('lang', 'en');
    if (!visible) frag.set('panel', 'closed');
    var f = frag.toString();
    return chatUrl + (f ? '#' + f : '');
  }

  var button, dot, panel, frame;
  var open = false;

  function css(el, styles) {
    Object.keys(styles).forEach(function (k) { el.style[k] = styles[k]; });
    return el;
  }

  function isPhone() {
    return window.matchMedia('(max-width: 600px)').matches;
  }

  function remember() {
    try { localStorage.setItem(seenKey, '1'); } catch (e) { /* storage blocked */ }
  }

  function seenBefore() {
    try { return localStorage.getItem(seenKey) === '1'; } catch (e) { return false; }
  }

  function build() {
    button = css(document.createElement('button'), {
      position: 'fixed', bottom: '20px', width: '56px', height: '56px', borderRadius: '50%',
      border: '0', padding: '0', margin: '0', background: color, cursor: 'pointer', zIndex: '2147483000',
      boxShadow: '0 4px 14px rgba(0,0,0,.25)', display: 'flex', alignItems: 'center', justifyContent: 'center',
    });
    button.style[side] = '20px';
    button.type = 'button';
    button.setAttribute('aria-label', label);
    button.title = label;
    button.setAttribute('data-kefu', 'button');
    var icon = css(document.createElement('img'), { width: '30px', height: '30px', pointerEvents: 'none' });
    icon.src = base + '/img/chat.svg';
    icon.alt = '';
    button.appendChild(icon);
    dot = css(document.createElement('span'), {
      position: 'absolute', top: '4px', right: '4px', width: '14px', height: '14px', borderRadius: '50%',
      background: '#e53935', border: '2px solid #fff', display: 'none',
    });
    dot.setAttribute('data-kefu', 'unread');
    button.appendChild(dot);
    button.addEventListener('click', toggle);
    document.body.appendChild(button);
    window.addEventListener('message', onMessage);
    if (seenBefore() && !isPhone()) setTimeout(function () { ensurePanel(false); }, 1500);
  }

  function ensurePanel(visible) {
    if (panel) return;
    panel = css(document.createElement('div'), {
      position: 'fixed', bottom: '88px', width: '380px', maxWidth: 'calc(100vw - 40px)',
      height: '600px', maxHeight: 'calc(100vh - 120px)', borderRadius: '12px', overflow: 'hidden',
      boxShadow: '0 10px 40px rgba(0,0,0,.25)', background: '#fff', zIndex: '2147483000',
      display: visible ? 'block' : 'none',
    });
    panel.style[side] = '20px';
    panel.setAttribute('data-kefu', 'panel');
    frame = css(document.createElement('iframe'), { width: '100%', height: '100%', border: '0', display: 'block' });
    frame.title = label;
    frame.src = pageUrl(visible);
    frame.setAttribute('allow', 'clipboard-read; clipboard-write');
    panel.appendChild(frame);
    document.body.appendChild(panel);
  }

  function tellFrame() {
    if (frame && frame.contentWindow) frame.contentWindow.postMessage({ kefu: 'panel', open: open }, base);
  }

  function show() {
    remember();
    dot.style.display = 'none';
    if (isPhone()) {
      var a = document.createElement('a');      // a user-initiated link: never popup-blocked
      a.href = pageUrl(true);
      a.target = '_blank';
      a.rel = 'noopener';
      a.click();
      return;
    }
    ensurePanel(true);
    panel.style.display = 'block';
    open = true;
    button.setAttribute('aria-label', closeLabel);
    button.title = closeLabel;
    tellFrame();
  }

  function hide() {
    if (panel) panel.style.display = 'none';
    open = false;
    button.setAttribute('aria-label', label);
    button.title = label;
    tellFrame();
  }

  function toggle() {
    if (open) hide();
    else show();
  }

  function onMessage(e) {
    if (e.origin !== base || !frame || e.source !== frame.contentWindow) return;
    var data = e.data || {};
    if (data.kefu === 'message' && !open) dot.style.display = 'block';
  }

  window.KefuWidget = { open: show, close: hide, toggle: toggle };
  if (document.body) build();
  else document.addEventListener('DOMContentLoaded', build);
})();
