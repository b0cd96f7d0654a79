// The dashboard's wiring: log in, learn the token's role, keep one store per watched kind
// up to date from the watch streams, and render what changed (once per frame).

import { token, path, getJson, postJson, call } from './api.js';
import { watch } from './watch.js';
import * as view from './views.js';
import * as logs from './logs.js';

const $ = (id) => document.getElementById(id);

let me = null; // the caller (WhoAmI): name, role, namespaces
let session = null; // aborts every stream of this login
const stores = { nodes: new Map(), deployments: new Map(), pods: new Map() };
let eventList = [];
const usage = new Map();
let dirty = false;

const admin = () => me && me.role === 'admin';
const scoped = () => me && me.namespaces?.length > 0;
const selected = () => $('ns').value;

function showError(e) {
  $('error').textContent = e ? String(e.message || e) : '';
}

// Re-renders on the next frame, once however many changes came.
function changed() {
  if (dirty) return;
  dirty = true;
  requestAnimationFrame(render);
}

function inView(o) {
  const ns = selected();
  return ns === '' || o.metadata.namespace === ns;
}

const act = {
  async scale(namespace, name, replicas) {
    await run(postJson(path('scale', { namespace, name }), { replicas }));
  },
  async undo(namespace, name) {
    await run(postJson(path('undo', { namespace, name }), {}));
  },
  async deletePod(namespace, name) {
    await run(call('DELETE', path('deleteNamespaced', { namespace, kind: 'pods', name })));
  },
  async cordon(name, unschedulable) {
    await run(postJson(path('nodeSpec', { name }), { unschedulable }));
  },
  logs(namespace, name) {
    $('log-panel').hidden = false;
    $('log-pod').textContent = `${namespace}/${name}`;
    logs.follow(namespace, name, $('log'));
    $('log-panel').scrollIntoView({ block: 'start' });
  },
};

// An action's answer: the watches show its effect; only a refusal is shown here.
async function run(p) {
  try {
    await p;
    showError(null);
  } catch (e) {
    showError(e);
  }
}

function render() {
  dirty = false;
  const pods = [...stores.pods.values()];
  const perNode = new Map();
  for (const p of pods) {
    const n = p.spec?.nodeName;
    if (n && !['Succeeded', 'Failed'].includes(p.status?.phase)) perNode.set(n, (perNode.get(n) || 0) + 1);
  }
  view.nodes($('nodes'), [...stores.nodes.values()], usage, (n) => perNode.get(n) || 0, admin(), act);
  view.deployments($('deployments'), [...stores.deployments.values()].filter(inView), admin(), act);
  view.pods($('pods'), pods.filter(inView), admin(), act);
  view.events($('events'), eventList.filter((e) => selected() === '' || e.namespace === selected()));
  namespaces();
  // A namespace-limited token reads no nodes: its fleet is its namespaces' objects.
  const fleet = scoped() ? stores.pods.size || stores.deployments.size : stores.nodes.size;
  if (fleet && !document.body.dataset.fleet) {
    // What the first-load figure measures (tests/tests/dashboard.rs).
    performance.mark('fleet-shown');
    document.body.dataset.fleet = 'shown';
  }
}

// The selector's namespaces: the token's own, or `All` and every one seen.
function namespaces() {
  const sel = $('ns');
  const seen = new Set(me.namespaces?.length ? me.namespaces : ['default']);
  if (!me.namespaces?.length) {
    for (const s of [stores.pods, stores.deployments]) for (const o of s.values()) seen.add(o.metadata.namespace);
  }
  const want = [...(me.namespaces?.length ? [] : ['']), ...[...seen].sort()];
  const have = [...sel.options].map((o) => o.value);
  if (want.join() === have.join()) return;
  const keep = sel.value;
  sel.replaceChildren(...want.map((v) => new Option(v || 'All', v)));
  if (want.includes(keep)) sel.value = keep;
}

// Usage is not watchable (the coordinator keeps only the last report): it is read again
// when a node changes, at most every 10 s.
let usageAt = 0;
async function refreshUsage() {
  if (Date.now() - usageAt < 10000) return;
  usageAt = Date.now();
  try {
    const top = await getJson(path('topNodes'), session.signal);
    usage.clear();
    for (const u of top.items) usage.set(u.name, u);
    changed();
  } catch {
    // A namespace-limited token may not read nodes: the tiles show none.
  }
}

// A store's key: `NAMESPACE/NAME` (nodes: `/NAME`); a deletion names its namespace only
// on the event.
function key(kind, ev) {
  if (kind === 'nodes') return `/${ev.name}`;
  return `${ev.namespace || ev.object?.metadata?.namespace || 'default'}/${ev.name}`;
}

// Opens the watches: every namespace's objects for an unlimited token (the selector then
// filters on the page), the selected namespace's for a limited one (which may not watch
// the rest). One stream per kind: a browser opens at most 6 connections to a host.
function start(signal) {
  const live = new Map();
  const onLive = (kind) => (up) => {
    live.set(kind, up);
    $('live').className = [...live.values()].every(Boolean) ? 'dot on' : 'dot';
  };
  const onFatal = (e) => showError(e);
  const ns = scoped() ? selected() : null;
  for (const kind of Object.keys(stores)) {
    if (kind === 'nodes' && ns !== null) continue; // cluster-scoped
    const store = stores[kind];
    watch(kind, ns, {
      onEvent(ev) {
        if (ev.type === 'DELETED') store.delete(key(kind, ev));
        else {
          if (ev.object.metadata && kind !== 'nodes') {
            ev.object.metadata.namespace ||= ev.namespace || 'default';
          }
          store.set(key(kind, ev), ev.object);
        }
        if (kind === 'nodes') refreshUsage();
        changed();
      },
      onReset: () => store.clear(),
      onLive: onLive(kind),
      onFatal,
    }, signal);
  }
  watch('events', ns, {
    onEvent(ev) {
      eventList.push({ ...ev.event, namespace: ev.event.namespace || ev.namespace });
      if (eventList.length > 300) eventList = eventList.slice(-200);
      changed();
    },
    onReset() {
      eventList = [];
    },
    onLive: onLive('events'),
    onFatal,
  }, signal);
  if (ns === null) refreshUsage();
}

// A limited token's namespace changed: the other namespace's watches replace these.
function restart() {
  session?.abort();
  for (const s of Object.values(stores)) s.clear();
  eventList = [];
  session = new AbortController();
  start(session.signal);
  changed();
}

async function login() {
  $('login').hidden = true;
  try {
    me = await getJson(path('whoami'));
  } catch (e) {
    token.clear();
    $('login').hidden = false;
    $('login-error').textContent = e.status === 401 ? 'Unknown or deleted token.' : String(e.message);
    return;
  }
  document.body.dataset.role = me.role;
  $('who').textContent = `${me.name} (${me.role})`;
  $('logout').hidden = false;
  $('ns-label').hidden = false;
  $('nodes-panel').hidden = scoped();
  $('app').hidden = false;
  namespaces();
  restart();
}

function logout() {
  session?.abort();
  logs.stop();
  token.clear();
  location.reload();
}

$('login').addEventListener('submit', (e) => {
  e.preventDefault();
  performance.mark('login');
  token.set($('token').value.trim());
  $('token').value = '';
  login();
});
$('logout').addEventListener('click', logout);
$('ns').addEventListener('change', () => (scoped() ? restart() : changed()));
$('log-close').addEventListener('click', () => {
  logs.stop();
  $('log-panel').hidden = true;
});

if (token.get()) login();
else $('login').hidden = false;
