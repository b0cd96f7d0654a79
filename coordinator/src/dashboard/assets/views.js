// Rendering: the stores' objects as DOM, built with textContent only (no HTML from data,
// so an object's name cannot inject markup). Action buttons exist only for admins.

// An element: `attrs` set as properties (`on*` as listeners), children appended.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c);
  }
  return el;
}

const action = (label, title, onclick) =>
  h('button', { type: 'button', className: 'action', title, onclick }, label);

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const mib = (b) => `${Math.round(b / 1048576)} Mi`;
const pct = (a, b) => (b ? Math.round((100 * a) / b) : 0);

function meter(label, used, total, text) {
  const p = pct(used, total);
  const bar = h('span', { className: 'fill' });
  bar.style.width = `${Math.min(p, 100)}%`;
  return h('div', { className: 'meter' }, h('span', { className: 'k' }, label),
    h('span', { className: 'bar' }, bar), h('span', { className: 'v' }, text));
}

const byName = (a, b) =>
  `${a.metadata.namespace}/${a.metadata.name}`.localeCompare(`${b.metadata.namespace}/${b.metadata.name}`);

// The node tiles.
export function nodes(el, list, usage, podCount, admin, act) {
  el.replaceChildren(...list.sort(byName).map((n) => {
    const s = n.status || {};
    const u = usage.get(n.metadata.name);
    const cordoned = n.spec && n.spec.unschedulable;
    const state = s.ready ? 'Ready' : 'NotReady';
    return h('article', { className: `tile ${s.ready ? 'ok' : 'bad'}`, dataset: { node: n.metadata.name, state } },
      h('h3', {}, n.metadata.name),
      h('p', {}, h('span', { className: 'badge' }, state), cordoned ? h('span', { className: 'badge warn' }, 'Cordoned') : null),
      h('p', { className: 'meta' }, `${s.arch || '?'}${s.archVariant ? `/${s.archVariant}` : ''} · agent ${s.agentVersion || '?'} · ${plural(podCount(n.metadata.name), 'pod')}`),
      u ? [
        meter('CPU', u.cpuMillis, u.allocatableCpuMillis, `${u.cpuMillis}m`),
        meter('Mem', u.memoryBytes, u.allocatableMemoryBytes, mib(u.memoryBytes)),
        u.temperatureMillicelsius !== undefined
          ? h('p', { className: 'meta' }, `${(u.temperatureMillicelsius / 1000).toFixed(1)} °C`) : null,
      ] : h('p', { className: 'meta' }, 'no usage reported yet'),
      admin ? h('p', {}, action(cordoned ? 'Uncordon' : 'Cordon', 'mark the node (un)schedulable',
        () => act.cordon(n.metadata.name, !cordoned))) : null);
  }));
}

function table(el, head, rows) {
  el.replaceChildren(h('thead', {}, h('tr', {}, head.map((c) => h('th', {}, c)))),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colSpan: head.length, className: 'meta' }, 'none'))));
}

// The deployments with their rollout progress.
export function deployments(el, list, admin, act) {
  const head = ['Namespace', 'Name', 'Ready', 'Up-to-date', 'Available', ''];
  table(el, head, list.sort(byName).map((d) => {
    const want = (d.spec && d.spec.replicas) ?? 1;
    const st = d.status || {};
    const ready = st.readyReplicas || 0;
    const { namespace, name } = d.metadata;
    return h('tr', { dataset: { deployment: name, namespace, ready, desired: want } },
      h('td', {}, namespace), h('td', {}, name),
      h('td', { className: ready >= want ? 'ok' : 'warn' }, `${ready}/${want}`),
      h('td', {}, String(st.updatedReplicas || 0)), h('td', {}, String(st.availableReplicas || 0)),
      h('td', { className: 'actions' }, admin ? [
        action('−', 'one replica fewer', () => act.scale(namespace, name, Math.max(0, want - 1))),
        action('+', 'one replica more', () => act.scale(namespace, name, want + 1)),
        action('Undo', 'roll back to the previous revision', () => act.undo(namespace, name)),
      ] : null));
  }));
}

// A pod's status as `baton get pods` words it: a container's reason before the phase.
function podStatus(p) {
  const st = p.status || {};
  const reason = (st.containerStatuses || []).map((c) => c.reason).find(Boolean);
  return reason || st.reason || st.phase || 'Pending';
}

export function pods(el, list, admin, act) {
  const head = ['Namespace', 'Name', 'Status', 'Restarts', 'Node', ''];
  table(el, head, list.sort(byName).map((p) => {
    const { namespace, name } = p.metadata;
    const restarts = (p.status?.containerStatuses || []).reduce((n, c) => n + (c.restartCount || 0), 0);
    const status = podStatus(p);
    return h('tr', { dataset: { pod: name, namespace, status } },
      h('td', {}, namespace),
      h('td', {}, h('a', { href: '#', className: 'logs', onclick: (e) => { e.preventDefault(); act.logs(namespace, name); } }, name)),
      h('td', { className: status === 'Running' ? 'ok' : 'warn' }, status),
      h('td', {}, String(restarts)), h('td', {}, p.spec?.nodeName || ''),
      h('td', { className: 'actions' }, admin ? action('Delete', 'delete the pod', () => act.deletePod(namespace, name)) : null));
  }));
}

export function events(el, list) {
  el.replaceChildren(...list.slice(-100).reverse().map((e) =>
    h('li', {}, h('time', {}, e.timestamp.replace('T', ' ').replace(/\.\d+/, '')), ' ',
      h('b', {}, e.reason), ' ', h('span', { className: 'meta' }, e.namespace ? `${e.namespace}/${e.object}` : e.object), ' ', e.message)));
}
