// A pod's log, followed live through the contract's `PodLogsNamespaced` (a chunked
// stream); one at a time, stopped when the panel closes.

import { call, path } from './api.js';

const KEEP = 256 * 1024; // characters kept on screen: a chatty pod must not fill the tab

let current = null;

export function follow(namespace, name, pre, onError) {
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
  })().catch((e) => {
    if (!ctl.signal.aborted) onError(e);
  });
}

export function stop() {
  if (current) current.abort();
  current = null;
}
