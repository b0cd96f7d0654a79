// The HTTP API as the CLI calls it: the contract's paths (coordinator/src/contract/routes.rs;
// a Rust test checks that every path below is one of its routes), with the token as a
// bearer header on every request, never in a URL.

const KEY = 'baton.token';

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

// The contract's path templates, in axum's syntax.
const PATHS = {
  whoami: '/api/v1/whoami',
  watch: '/api/v1/watch/{kind}',
  watchIn: '/api/v1/namespaces/{namespace}/watch/{kind}',
  topNodes: '/api/v1/top/nodes',
  scale: '/api/v1/namespaces/{namespace}/deployments/{name}/scale',
  undo: '/api/v1/namespaces/{namespace}/deployments/{name}/rollout/undo',
  deleteNamespaced: '/api/v1/namespaces/{namespace}/{kind}/{name}',
  logs: '/api/v1/namespaces/{namespace}/pods/{name}/log',
  nodeSpec: '/api/v1/nodes/{name}/spec',
};

// A route's path: `{key}`s filled from `params`, the rest (when set) as the query, as the
// contract's `Route::path` does.
export function path(route, params = {}) {
  const used = new Set();
  let p = PATHS[route].replace(/\{(\w+)\}/g, (_, k) => {
    used.add(k);
    return encodeURIComponent(params[k]);
  });
  const q = Object.entries(params)
    .filter(([k, v]) => !used.has(k) && v !== undefined && v !== null)
    .map(([k, v]) => `${k}=${encodeURIComponent(v)}`);
  if (q.length) p += `?${q.join('&')}`;
  return p;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// `method path` with `body` as JSON; the response, or an ApiError with the server's message.
export async function call(method, p, body, signal) {
  const headers = { Authorization: `Bearer ${token.get()}` };
  const init = { method, headers, signal, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(p, init);
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try {
      msg = (await r.json()).error || msg;
    } catch {
      // Not JSON: the status says it.
    }
    throw new ApiError(r.status, msg);
  }
  return r;
}

export const getJson = async (p, signal) => (await call('GET', p, undefined, signal)).json();
export const postJson = async (p, body) => (await call('POST', p, body)).json();
