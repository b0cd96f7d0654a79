// A watch (the contract's `Watch`): JSON lines read with fetch() and a stream reader,
// since EventSource cannot send the token. A dropped stream resumes from the last
// resourceVersion seen, so nothing is missed or seen twice; 410 (too far back, or the
// coordinator restarted) starts over with a full backlog after `onReset`.

import { call, path } from './api.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Calls `onEvent(ev)` for each change of `kind` (in `namespace`, or all) until `signal`
// aborts; `onLive(bool)` tells whether the stream is up; `onFatal(err)` ends it (401/403).
export function watch(kind, namespace, { onEvent, onReset, onLive, onFatal }, signal) {
  let rv = null;
  let delay = 500;
  const run = async () => {
    while (!signal.aborted) {
      try {
        const p = namespace
          ? path('watchIn', { namespace, kind, resource_version: rv })
          : path('watch', { kind, resource_version: rv });
        const r = await call('GET', p, undefined, signal);
        onLive(true);
        delay = 500;
        await lines(r.body.getReader(), (line) => {
          const ev = JSON.parse(line);
          rv = ev.resourceVersion;
          onEvent(ev);
        });
      } catch (e) {
        if (signal.aborted) return;
        if (e.status === 410) {
          rv = null;
          onReset();
          continue;
        }
        if (e.status === 401 || e.status === 403) {
          onFatal(e);
          return;
        }
      }
      onLive(false);
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  };
  run();
}

// Feeds each complete line the reader yields to `each`.
export async function lines(reader, each) {
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      if (line.trim()) each(line);
    }
  }
}
