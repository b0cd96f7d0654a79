// A pod's log, followed live through the contract's `PodLogsNamespaced` (a chunked
// stream); one at a time, stopped when the panel closes.

import { call, path } from './api.js';

const KEEP = 256 * 1024; // characters kept on screen: a chatty pod must not fill the tab

let current = null;

// Follows the log into `pre`; a stream that ends or breaks says so at the bottom (the
// user opens it again: a new follow starts with the last lines).
export function follow(namespace, name, pre) {
  stop();
  const ctl = new AbortController();
  current = ctl;
  pre.textContent = '';
  const dec = new TextDecoder();
  (async () => {
    const p = path('logs', { namespace, name, follow: 'true', tail: '500' });
    const r = await call('GET', p, undefined, ctl.signal);
    const reader = r.body.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      let text = pre.textContent + dec.decode(value, { stream: true });
      if (text.length > KEEP) text = text.slice(text.length - KEEP);
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
    if (!ctl.signal.aborted) pre.append('\n[end of the log stream]\n');
  })().catch((e) => {
    if (!ctl.signal.aborted) pre.append(`\n[log stream lost: ${e.message}]\n`);
  });
}

export function stop() {
  if (current) current.abort();
  current = null;
}
