// EdgeFleet console. Plain JavaScript, no build step, no third-party code.
// Every text from the server goes into the page with textContent, never as HTML.
'use strict';

const SESSION_KEY = 'edgefleet.session';
const COLUMNS = [
  { field: 'name', label: 'Node' },
  { field: 'status', label: 'Status' },
  { field: 'cpu_percent', label: 'CPU', num: true },
  { field: 'memory_percent', label: 'Memory', num: true },
  { field: 'disk_percent', label: 'Disk', num: true },
  { field: 'agent_version', label: 'Agent' },
  { field: 'cert_expires', label: 'Cert expires' },
  { field: 'last_seen', label: 'Last seen' },
];
const WINDOWS = [[3600, '1 h'], [6 * 3600, '6 h'], [24 * 3600, '24 h']];
const CHARTS = [
  { key: 'cpu', title: 'CPU', unit: '%', max: 100 },
  { key: 'memory', title: 'Memory', unit: '%', max: 100 },
  { key: 'disk', title: 'Disk', unit: '%', max: 100 },
  { key: 'load1', title: 'Load (1 min)', unit: '', max: null },
];

const state = {
  nodes: new Map(),
  overview: null,
  sort: { field: 'name', dir: 1 },
  filter: '',
  status: '',
  stream: null,
  retry: 0,
  window: 3600,
  historyTimer: null,
  twinFollow: null,  // AbortController of the device page's long-poll loop
  twinSeen: null,  // { id, desired, reported }: the twin versions the device page shows
  form: null,  // the desired form of the device page: { id, version, values }
  clusters: new Map(),  // the clusters page's rows (GET /api/v1/clusters), by name
  clusterSort: { field: 'name', dir: 1 },
  clusterPoll: null,  // timer of the clusters pages' fallback poll
  clusterPending: false,  // a clusters fetch is on its way (live updates fetch once a second)
  clusterAgain: false,  // something changed meanwhile: fetch once more afterwards
};

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const svg = ['svg', 'path', 'line', 'text', 'rect', 'g', 'title'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// Live updates patch the page instead of rebuilding it: a node that is already
// equal stays the same node, so a tap or click that lands between two updates,
// keyboard focus and a text selection all survive the update.
function morph(parent, fresh) {
  const next = fresh.filter((c) => c !== null && c !== undefined && c !== false && c !== '')
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
  next.forEach((node, i) => {
    const cur = parent.childNodes[i];
    if (!cur) { parent.appendChild(node); return; }
    if (cur.isEqualNode(node)) return;
    if (sameElement(cur, node)) {
      for (const { name } of [...cur.attributes]) if (!node.hasAttribute(name)) cur.removeAttribute(name);
      for (const { name, value } of [...node.attributes]) if (cur.getAttribute(name) !== value) cur.setAttribute(name, value);
      morph(cur, [...node.childNodes]);
      return;
    }
    parent.replaceChild(node, cur);
  });
  while (parent.childNodes.length > next.length) parent.lastChild.remove();
}

function sameElement(a, b) {
  if (a.nodeType !== Node.ELEMENT_NODE || a.tagName !== b.tagName) return false;
  return ['id', 'data-node', 'data-cluster', 'data-device', 'data-card', 'data-fact'].every((k) => a.getAttribute(k) === b.getAttribute(k));
}

function session() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    return s && typeof s.token === 'string' ? s : null;
  } catch (_) {
    return null;
  }
}

class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.problems = (body && Array.isArray(body.problems)) ? body.problems : [];
    this.body = body;
  }
}

async function api(path, options = {}, token = null) {
  const s = session();
  const bearer = token || (s && s.token);
  const headers = Object.assign({ Accept: 'application/json' }, options.headers || {});
  if (bearer) headers.Authorization = 'Bearer ' + bearer;
  let answer;
  try {
    answer = await fetch(path, Object.assign({}, options, { headers, credentials: 'omit', cache: 'no-store' }));
  } catch (err) {
    throw new ApiError(0, 'network', 'The server cannot be reached: ' + err.message);
  }
  let body = null;
  try { body = await answer.json(); } catch (_) { body = null; }
  if (!answer.ok) {
    const code = (body && body.error) || 'http_' + answer.status;
    const message = (body && body.message) || answer.statusText || 'request failed';
    // Parallel requests share one session: only the first 401 signs out, so its reason stays shown.
    if (answer.status === 401 && !token && session()) signOut(expiredText(code, message));
    throw new ApiError(answer.status, code, message, body);
  }
  return body;
}

function expiredText(code, message) {
  if (code === 'session_expired') return 'Your session expired. Sign in again with your token.';
  if (code === 'session_revoked') {
    return 'This session was signed out (in another tab with the same session, or by a copy of its token). '
      + 'Sign in again with your token.';
  }
  return 'You were signed out: ' + message;
}

const fmt = {
  pct: (v) => (v === null || v === undefined ? '–' : v.toFixed(v < 10 ? 1 : 0) + '%'),
  num: (v, d = 2) => (v === null || v === undefined ? '–' : Number(v).toFixed(d)),
  bytes(v) {
    if (v === null || v === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return v.toFixed(v < 10 && i ? 1 : 0) + ' ' + units[i];
  },
  duration(s) {
    if (s === null || s === undefined) return '–';
    if (s < 90) return Math.round(s) + ' s';
    if (s < 5400) return Math.round(s / 60) + ' min';
    if (s < 172800) return Math.round(s / 3600) + ' h';
    return Math.round(s / 86400) + ' days';
  },
  ago(iso) {
    if (!iso) return 'never';
    const s = (Date.now() - Date.parse(iso)) / 1000;
    return s < 5 ? 'just now' : fmt.duration(s) + ' ago';
  },
  until(iso) {
    if (!iso) return '–';
    const s = (Date.parse(iso) - Date.now()) / 1000;
    return s <= 0 ? 'expired' : 'in ' + fmt.duration(s);
  },
  time: (iso) => (iso ? new Date(iso).toLocaleString() : '–'),
};

function badge(status) {
  return h('span', { class: 'badge ' + status, 'data-status': status }, status);
}

function meter(value) {
  if (value === null || value === undefined) return h('span', {}, '–');
  const width = Math.max(0, Math.min(100, value));
  const color = value >= 90 ? '#cf222e' : value >= 75 ? '#bf8700' : '#1a7f37';
  const bar = h('svg', { viewBox: '0 0 100 10', preserveAspectRatio: 'none', 'aria-hidden': 'true' },
    h('rect', { x: 0, y: 0, width, height: 10, fill: color }));
  return h('span', {}, h('span', { class: 'meter' }, bar), fmt.pct(value));
}

function setLive(text, cls) {
  const el = document.getElementById('live');
  el.textContent = text;
  el.className = 'live ' + (cls || '');
}

// ------------------------------------------------------------------ sign-in

function renderSignIn(message) {
  stopStream();
  document.getElementById('nav').hidden = true;
  const error = h('div', { class: 'error', id: 'signin-error', role: 'alert', hidden: !message }, message || '');
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, maxlength: 256, placeholder: 'abc123.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx',
  });
  const button = h('button', { class: 'btn', type: 'submit', id: 'signin-button' }, 'Sign in');
  const form = h('form', { id: 'signin-form', class: 'panel', novalidate: true },
    h('label', { for: 'token' }, 'Token'), input,
    h('p', { class: 'hint' }, 'A user token from ',
      h('code', {}, 'tunnel-server users create'),
      ', or the admin token in the server\'s data folder: ',
      h('code', {}, 'cat /var/lib/tunnel-server/admin-token'),
      '. This tab keeps only a session that expires; closing the tab signs you out.'),
    error, button);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) { showError(error, 'Paste your token first.'); return; }
    button.disabled = true;
    try {
      const created = await api('/api/v1/sessions', { method: 'POST' }, token);
      sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token: created.token, expires_at: created.expires_at }));
      input.value = '';
      if (!location.hash || location.hash === '#/signin') location.hash = '#/';
      route();
    } catch (err) {
      const text = err.status === 401 || err.status === 403
        ? 'That token was not accepted: ' + err.message
        : err.message;
      showError(error, text);
    } finally {
      button.disabled = false;
    }
  });
  mount(h('section', { class: 'signin' }, h('h1', {}, 'Sign in to EdgeFleet'), form));
  input.focus();
}

function showError(el, text, cls = 'error') {
  el.className = cls;
  el.textContent = text;
  el.hidden = false;
}

function signOut(message) {
  sessionStorage.removeItem(SESSION_KEY);
  state.nodes.clear();
  state.overview = null;
  renderSignIn(message || '');
}

const SIGN_OUT_TIMEOUT = 5000;  // ms to wait for the server before settling for a local sign-out

// The Sign out button: the server revokes the session, so a copy of its token stops working
// too. Best effort: the tab is signed out at once, and says so if the server could not be told.
async function signOutEverywhere() {
  const s = session();
  stopStream();
  // Signed out locally first: a request still in flight that now gets 401 session_revoked
  // finds no session and leaves this page's text alone.
  signOut('');
  if (!s) return;
  signOutNotice('Signing out…', 'notice');
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), SIGN_OUT_TIMEOUT);
  try {
    await api('/api/v1/sessions/current', { method: 'DELETE', signal: controller.signal }, s.token);
    signOutNotice('Signed out. The session no longer works anywhere, not even a copy of its token.', 'notice ok');
  } catch (err) {
    const until = s.expires_at ? ' until ' + fmt.time(s.expires_at) : ' until it expires';
    if (err.status === 401) {
      signOutNotice('Signed out. (The session was no longer valid anyway: ' + err.message + ')', 'notice ok');
    } else {
      signOutNotice('Signed out of this tab only: the server did not confirm it (' + err.message + '), '
        + 'so a copy of the session token keeps working' + until + '.', 'error warn');
    }
  } finally {
    clearTimeout(timer);
  }
}

// The sign-in page's message box, unless someone signed in again meanwhile.
function signOutNotice(text, cls) {
  const el = document.getElementById('signin-error');
  if (!el || session()) return;
  showError(el, text, cls);
}

// ------------------------------------------------------------------ live stream

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function startStream() {
  if (state.stream || !session()) return;
  const controller = new AbortController();
  state.stream = controller;
  setLive('connecting…', '');
  readStream(controller).catch(() => {}).finally(() => {
    if (state.stream !== controller) return;
    state.stream = null;
    if (!session()) return;
    setLive('reconnecting…', 'off');
    state.retry = Math.min(state.retry + 1, 5);
    setTimeout(startStream, 500 * state.retry);
  });
}

async function readStream(controller) {
  const s = session();
  const answer = await fetch('/api/v1/events', {
    headers: { Authorization: 'Bearer ' + s.token, Accept: 'text/event-stream' },
    credentials: 'omit', cache: 'no-store', signal: controller.signal,
  });
  if (answer.status === 401) {
    let body = {};
    try { body = await answer.json(); } catch (_) { body = {}; }
    // Another request may have signed out first (and aborted this read): keep its reason.
    if (controller.signal.aborted || !session()) return;
    signOut(expiredText(body.error, body.message || 'sign in again'));
    return;
  }
  if (!answer.ok || !answer.body) throw new Error('stream refused: ' + answer.status);
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trim());
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')));
    }
  }
}

function onEvent(name, data) {
  if (name === 'expired' || name === 'revoked') {
    signOut(expiredText(data.error || 'session_expired', data.message));
    return;
  }
  if (name === 'snapshot') state.nodes.clear();
  if (name === 'snapshot' || name === 'nodes') {
    for (const row of data.nodes) state.nodes.set(row.name, row);
    state.overview = data.overview;
    state.retry = 0;
    setLive('live', 'on');
    refresh(new Set(data.nodes.map((r) => r.name)));
    if (data.nodes.some((r) => r.kind === 'cluster')) clustersChanged();
  }
}

// ------------------------------------------------------------------ node list page

function renderNodeList() {
  const filter = h('input', {
    id: 'filter', type: 'search', placeholder: 'Filter by name, OS or version', value: state.filter,
    'aria-label': 'Filter nodes',
    oninput: (e) => { state.filter = e.target.value; renderRows(); },
  });
  const status = h('select', {
    id: 'status-filter', 'aria-label': 'Status',
    onchange: (e) => { state.status = e.target.value; renderRows(); },
  }, [['', 'All statuses'], ['online', 'Online'], ['offline', 'Offline'], ['unknown', 'Never reported'],
    ['pending', 'Pending'], ['revoked', 'Revoked']].map(([v, t]) => h('option', { value: v, selected: v === state.status }, t)));
  const sortSelect = h('select', {
    id: 'sort-select', 'aria-label': 'Sort by',
    onchange: (e) => { const [f, d] = e.target.value.split(':'); state.sort = { field: f, dir: Number(d) }; renderRows(); },
  }, COLUMNS.flatMap((c) => [[c.field + ':1', c.label + ' ↑'], [c.field + ':-1', c.label + ' ↓']])
    .map(([v, t]) => h('option', { value: v, selected: v === state.sort.field + ':' + state.sort.dir }, t)));
  const head = h('tr', {}, COLUMNS.map((c) => h('th', { scope: 'col', 'data-field': c.field },
    h('button', { type: 'button', onclick: () => sortBy(c.field) }, c.label))));
  mount(h('section', { id: 'node-list' },
    h('h1', {}, 'Nodes'),
    h('div', { id: 'overview' }),
    h('h2', {}, 'All nodes'),
    h('div', { class: 'toolbar' }, filter, status, h('span', { class: 'sortbar' }, sortSelect),
      h('span', { class: 'count', id: 'count' })),
    h('table', { id: 'nodes' }, h('thead', {}, head), h('tbody', {}))));
  renderOverview();
  renderRows();
}

function sortBy(field) {
  state.sort = state.sort.field === field ? { field, dir: -state.sort.dir } : { field, dir: 1 };
  renderRows();
}

function renderOverview() {
  const box = document.getElementById('overview');
  if (!box) return;
  let o = state.overview;
  if (!o) { box.replaceChildren(h('p', { class: 'notice' }, 'Loading the overview…')); return; }
  // Counted here from the rows, not taken from o.nodes: the server's overview counts the
  // registered clusters' agents too, and they have their own page.
  const rows = nodeRows();
  const n = { total: rows.length };
  for (const key of ['online', 'offline', 'unknown', 'pending']) n[key] = rows.filter((r) => r.status === key).length;
  const clusters = new Set([...state.nodes.values()].filter((r) => r.kind === 'cluster').map((r) => r.name));
  o = Object.assign({}, o, { warnings: o.warnings.filter((w) => !clusters.has(w.node)) });
  const cards = h('div', { class: 'cards' },
    card('Nodes', n.total, ''),
    card('Online', n.online, 'ok', 'online'),
    card('Offline', n.offline, n.offline ? 'bad' : '', 'offline'),
    card('Never reported', n.unknown, '', 'unknown'),
    card('Pending approval', n.pending, n.pending ? 'warn' : '', 'pending'),
    card('Warnings', o.warnings.length, o.warnings.length ? 'warn' : ''));
  const list = o.warnings.length
    ? h('ul', { class: 'warnings', id: 'warnings' }, o.warnings.slice(0, 50).map((w) => h('li', { class: w.severity },
      h('a', { href: '#/nodes/' + encodeURIComponent(w.node) }, w.node), ': ', w.message)))
    : h('p', { class: 'count', id: 'warnings' }, 'No warnings.');
  const more = o.warnings.length > 50 ? h('p', { class: 'count' }, '… and ' + (o.warnings.length - 50) + ' more') : null;
  morph(box, [cards, h('h2', {}, 'Warnings'), list, more]);
}

function card(label, value, cls, status) {
  const el = h('div', { class: 'card ' + cls, 'data-card': label.toLowerCase().replace(/ /g, '-') },
    h('div', { class: 'n' }, value), h('div', { class: 'l' }, label));
  if (status) {
    el.addEventListener('click', () => {
      state.status = state.status === status ? '' : status;
      const select = document.getElementById('status-filter');
      if (select) select.value = state.status;
      renderRows();
    });
  }
  return el;
}

// The event stream's rows include registered clusters (kind "cluster"): they have their own page.
function nodeRows() {
  return [...state.nodes.values()].filter((r) => r.kind !== 'cluster');
}

function visibleRows() {
  const q = state.filter.trim().toLowerCase();
  const rows = nodeRows().filter((r) => {
    if (state.status && r.status !== state.status) return false;
    if (!q) return true;
    return [r.name, r.os, r.kernel, r.agent_version, r.status].some((v) => v && v.toLowerCase().includes(q));
  });
  const { field, dir } = state.sort;
  rows.sort((a, b) => {
    const x = a[field]; const y = b[field];
    if (x === y) return a.name.localeCompare(b.name);
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (typeof x === 'number' ? x - y : String(x).localeCompare(String(y))) * dir;
  });
  return rows;
}

function renderRows() {
  const table = document.getElementById('nodes');
  if (!table) return;
  for (const th of table.querySelectorAll('th')) {
    const sorted = th.dataset.field === state.sort.field;
    if (sorted) th.setAttribute('aria-sort', state.sort.dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
  const rows = visibleRows();
  const body = table.querySelector('tbody');
  const total = nodeRows().length;
  document.getElementById('count').textContent = rows.length + ' of ' + total + ' nodes';
  if (!rows.length) {
    const text = total
      ? 'No node matches the filter.'
      : 'No nodes yet. Create a bootstrap token (POST /api/v1/tokens or `tunnel-server token create`) and run `edge-agent join` on a machine.';
    morph(body, [h('tr', {}, h('td', { class: 'empty', colspan: COLUMNS.length }, text))]);
    return;
  }
  morph(body, rows.map(row));
}

function row(r) {
  const worst = r.warnings.length ? r.warnings[0] : null;
  const warn = worst ? h('span', { class: 'w-dot ' + worst.severity, title: r.warnings.map((w) => w.message).join('\n') }, ' ⚠') : '';
  const seen = r.connected ? 'now' : fmt.ago(r.last_seen);
  return h('tr', { 'data-node': r.name, 'data-status': r.status },
    h('td', { class: 'name', 'data-label': 'Node' }, h('a', { href: '#/nodes/' + encodeURIComponent(r.name) }, r.name), warn),
    h('td', { class: 'status', 'data-label': 'Status' }, badge(r.status)),
    h('td', { class: 'num', 'data-label': 'CPU' }, meter(r.cpu_percent)),
    h('td', { class: 'num', 'data-label': 'Memory' }, meter(r.memory_percent)),
    h('td', { class: 'num', 'data-label': 'Disk' }, meter(r.disk_percent)),
    h('td', { 'data-label': 'Agent' }, r.agent_version || '–'),
    h('td', { 'data-label': 'Cert expires', title: fmt.time(r.cert_expires) }, fmt.until(r.cert_expires)),
    h('td', { 'data-label': 'Last seen', title: fmt.time(r.last_seen) }, seen));
}

// ------------------------------------------------------------------ node page

async function renderNode(name) {
  mount(h('section', { id: 'node', 'data-node': name },
    h('div', { class: 'crumbs' }, h('a', { href: '#/' }, '← Nodes')),
    h('div', { class: 'head' }, h('h1', {}, name), h('span', { id: 'node-status' })),
    h('div', { id: 'node-warnings' }),
    h('h2', {}, 'Details'), h('div', { class: 'panel' }, h('dl', { class: 'facts', id: 'facts' }, h('div', {}, h('dt', {}, 'Loading…')))),
    h('h2', {}, 'Usage over time ', h('span', { class: 'windows', role: 'group', 'aria-label': 'Time window' },
      WINDOWS.map(([seconds, label]) => h('button', {
        type: 'button', 'data-window': seconds, 'aria-pressed': String(seconds === state.window),
        onclick: () => { state.window = seconds; renderNode(name); },
      }, label)))),
    h('div', { class: 'charts', id: 'charts' }),
    h('div', { id: 'devices' }),
    h('details', { class: 'raw' }, h('summary', {}, 'All reported metrics'), h('pre', { id: 'raw' }))));
  try {
    const detail = await api('/api/v1/nodes/' + encodeURIComponent(name));
    if (currentNode() !== name) return;
    renderDetail(detail);
    await loadHistory(name);
  } catch (err) {
    if (err.status === 401) return;
    const view = document.getElementById('node');
    if (view) view.append(h('div', { class: 'error', role: 'alert' }, err.message));
  }
  clearInterval(state.historyTimer);
  state.historyTimer = setInterval(() => {
    if (currentNode() === name) loadHistory(name).catch(() => {}); else clearInterval(state.historyTimer);
  }, 30000);
}

function currentNode() {
  const m = location.hash.match(/^#\/nodes\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function renderDetail(d) {
  const status = document.getElementById('node-status');
  if (!status) return;
  morph(status, [badge(d.status), d.offline_reason && d.status === 'offline'
    ? h('span', { class: 'count' }, ' ' + d.offline_reason + ' (' + fmt.ago(d.status_since) + ')') : '']);
  const m = d.metrics || {};
  const facts = [
    ['Status', d.status + (d.connected ? ' (tunnel up)' : ' (no tunnel)')],
    ['Last report', fmt.ago(d.last_report)],
    ['OS', d.os || m['os.system'] || '–'],
    ['Kernel', d.kernel || '–'],
    ['Architecture', m['host.arch'] || '–'],
    ['Agent version', d.agent_version || '–'],
    ['Certificate expires', d.cert_expires ? fmt.time(d.cert_expires) + ' (' + fmt.until(d.cert_expires) + ')' : '–'],
    ['Uptime', fmt.duration(d.uptime_seconds)],
    ['CPU', fmt.pct(d.cpu_percent) + (m['cpu.count'] ? ' of ' + m['cpu.count'] + ' cores' : '')],
    ['Load (1/5/15 min)', [m['load.1'], m['load.5'], m['load.15']].map((v) => fmt.num(v)).join(' / ')],
    ['Memory', fmt.pct(d.memory_percent) + (m['memory.total'] ? ' of ' + fmt.bytes(m['memory.total']) : '')],
    ['Disk ' + (m['disk.path'] || ''), fmt.pct(d.disk_percent) + (m['disk.total'] ? ' of ' + fmt.bytes(m['disk.total']) : '')],
    ['Network in / out', fmt.bytes(m['net.rx_bps']) + '/s / ' + fmt.bytes(m['net.tx_bps']) + '/s'],
    ['Tunnel RTT', d.rtt_ms === null || d.rtt_ms === undefined ? '–' : fmt.num(d.rtt_ms, 1) + ' ms'],
    ['Reports every', d.report_interval_seconds ? d.report_interval_seconds + ' s (offline after ' + d.lease_seconds + ' s silence)' : '–'],
    ['Joined', fmt.time(d.created_at)],
  ];
  morph(document.getElementById('facts'), facts.map(([k, v]) =>
    h('div', { 'data-fact': k }, h('dt', {}, k), h('dd', {}, v))));
  const warnings = document.getElementById('node-warnings');
  morph(warnings, [d.warnings.length ? h('ul', { class: 'warnings' },
    d.warnings.map((w) => h('li', { class: w.severity }, w.message))) : '']);
  document.getElementById('raw').textContent = JSON.stringify(m, null, 2);
  renderDevices(d.devices, m);
}

function renderDevices(devices, metrics) {
  const box = document.getElementById('devices');
  const twinKeys = Object.keys(metrics).filter((k) => k.startsWith('twins.'));
  // Only nodes that run twins (they report twins.*) or have devices get the section.
  if (!(devices && devices.length) && !twinKeys.length) { box.replaceChildren(); return; }
  const list = devices || [];
  const content = list.length
    ? deviceTable(list, false)
    : h('div', { class: 'empty-state', id: 'devices-empty' },
      h('strong', {}, 'No devices on this node yet.'), h('br'),
      'Devices appear here once they onboard through the node\'s MQTT broker with a claim credential.');
  const stats = twinKeys.length
    ? h('p', { class: 'count' }, twinKeys.map((k) => k.slice(6) + ': ' + metrics[k]).join(' · ')) : '';
  morph(box, [h('h2', {}, 'Devices'), stats, content]);
}

function deviceTable(list, withNode) {
  const heads = ['Device', withNode ? 'Node' : null, 'Model', 'Availability', 'Desired', 'Reported', 'Updated']
    .filter((x) => x !== null);
  return h('table', { class: 'device-table', id: withNode ? 'all-devices' : 'device-table' },
    h('thead', {}, h('tr', {}, heads.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, list.map((dev) => {
      const id = dev.id || dev.node + ':' + dev.device;
      const avail = dev.state === 'removed' ? 'removed' : (dev.availability || 'unknown');
      return h('tr', { 'data-device': id },
        h('td', { class: 'name', 'data-label': 'Device' },
          h('a', { href: '#/devices/' + encodeURIComponent(id) }, String(dev.device || id))),
        withNode ? h('td', { 'data-label': 'Node' }, h('a', { href: '#/nodes/' + encodeURIComponent(dev.node) }, String(dev.node))) : null,
        h('td', { 'data-label': 'Model' }, String(dev.model || '–')),
        h('td', { 'data-label': 'Availability' }, badge(avail === 'online' ? 'online' : avail === 'offline' || avail === 'removed' ? 'offline' : 'unknown')),
        h('td', { class: 'num', 'data-label': 'Desired' }, 'v' + (dev.desiredVersion ?? 0)),
        h('td', { class: 'num', 'data-label': 'Reported' }, 'v' + (dev.reportedVersion ?? 0)),
        h('td', { 'data-label': 'Updated' }, dev.updatedAt ? fmt.ago(new Date(dev.updatedAt * 1000).toISOString()) : '–'));
    })));
}

// ------------------------------------------------------------------ devices

async function renderDeviceList() {
  mount(h('section', { id: 'devices-page' },
    h('h1', {}, 'Devices'),
    h('p', { class: 'count' }, 'Every device twin, by node. Open one to see its desired and reported state and change desired values.'),
    h('div', { id: 'device-list' }, h('p', { class: 'count' }, 'Loading…'))));
  const box = document.getElementById('device-list');
  try {
    const items = [];
    let next = null;
    do {
      const page = await api('/api/v1/devices?limit=1000' + (next ? '&after=' + encodeURIComponent(next) : ''));
      items.push(...page.items);
      next = page.next;
    } while (next && items.length < 10000);
    if (!document.getElementById('devices-page')) return;
    if (!items.length) {
      box.replaceChildren(h('div', { class: 'empty-state', id: 'devices-empty' },
        h('strong', {}, 'No devices yet.'), h('br'),
        'Devices appear here once they onboard through a node\'s MQTT broker with a claim credential (edge-agent [twins]).'));
      return;
    }
    const byNode = new Map();
    for (const dev of items) {
      if (!byNode.has(dev.node)) byNode.set(dev.node, []);
      byNode.get(dev.node).push(dev);
    }
    box.replaceChildren(...[...byNode.entries()].flatMap(([node, list]) => [
      h('h2', { 'data-node': node }, h('a', { href: '#/nodes/' + encodeURIComponent(node) }, node),
        h('span', { class: 'count' }, ' ' + list.length + (list.length === 1 ? ' device' : ' devices'))),
      deviceTable(list, false),
    ]));
  } catch (err) {
    if (err.status === 401) return;
    const text = err.status === 404 && err.code === 'not_found'
      ? 'This server runs no device twins.' : err.message;
    box.replaceChildren(h('div', { class: 'error', role: 'alert' }, text));
  }
}

function currentDevice() {
  const m = location.hash.match(/^#\/devices\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function values(section) {
  const out = {};
  for (const [k, v] of Object.entries(section || {})) if (!k.startsWith('$')) out[k] = v;
  return out;
}

function jsonBlock(id, value) {
  return h('pre', { class: 'json', id }, JSON.stringify(value, null, 2));
}

async function renderDevice(id) {
  state.form = null;
  mount(h('section', { id: 'device', 'data-device': id },
    h('div', { class: 'crumbs' }, h('a', { href: '#/devices' }, '← Devices')),
    h('div', { class: 'head' }, h('h1', {}, id), h('span', { id: 'device-status' })),
    h('div', { class: 'panel' }, h('dl', { class: 'facts', id: 'device-facts' }, h('div', {}, h('dt', {}, 'Loading…')))),
    h('div', { class: 'twin' },
      h('div', { class: 'twin-col' }, h('h2', {}, 'Desired ', h('span', { class: 'count', id: 'desired-version' })), jsonBlock('desired', {})),
      h('div', { class: 'twin-col' }, h('h2', {}, 'Reported ', h('span', { class: 'count', id: 'reported-version' })), jsonBlock('reported', {})),
      h('div', { class: 'twin-col' }, h('h2', {}, 'Delta ', h('span', { class: 'count' }, 'desired values not reported yet')), jsonBlock('delta', {}))),
    h('h2', {}, 'Change desired values'),
    h('form', { id: 'desired-form', class: 'panel', onsubmit: (e) => { e.preventDefault(); submitDesired(id); } },
      h('label', { for: 'desired-input' }, 'Desired values (JSON). Changed keys are sent as a merge patch; a removed key is deleted.'),
      h('textarea', { id: 'desired-input', rows: 8, spellcheck: 'false', 'aria-describedby': 'desired-base' }),
      h('p', { class: 'count', id: 'desired-base' }),
      h('div', { id: 'desired-result', role: 'status', 'aria-live': 'polite' }),
      h('div', { class: 'form-buttons' },
        h('button', { type: 'submit', class: 'btn', id: 'desired-submit' }, 'Apply'),
        h('button', { type: 'button', class: 'btn secondary', id: 'desired-reload', onclick: () => loadDevice(id, true) }, 'Reload')))));
  await loadDevice(id, true);
  followDevice(id);
}

// The device page follows its twin by long-poll: the server answers as soon as desired or
// reported moves past what the page shows, or after TWIN_WAIT seconds, and each answer
// re-reads the device (availability and pending changes carry no twin version). A device
// reporting many times a second redraws the page at most once per TWIN_MIN_GAP.
const TWIN_WAIT = 10;
const TWIN_MIN_GAP = 1000;

async function followDevice(id) {
  if (state.twinFollow) state.twinFollow.abort();
  const follow = new AbortController();
  state.twinFollow = follow;
  const path = '/api/v1/devices/' + encodeURIComponent(id) + '/twin';
  let failures = 0;
  while (!follow.signal.aborted && currentDevice() === id) {
    const seen = state.twinSeen;
    const started = Date.now();
    try {
      let twin = null;
      if (seen && seen.id === id) {
        twin = await api(path + '?wait=' + TWIN_WAIT + '&desiredVersion=' + (seen.desired + 1)
          + '&reportedVersion=' + (seen.reported + 1), { signal: follow.signal });
      } else {
        await pause(2000, follow.signal);  // the first load failed: try again soon
      }
      if (follow.signal.aborted || currentDevice() !== id) return;
      await loadDevice(id, false, twin);
      failures = 0;
      await pause(TWIN_MIN_GAP - (Date.now() - started), follow.signal);
    } catch (err) {
      if (follow.signal.aborted || err.status === 401) return;
      failures += 1;  // server restarting or busy (503): back off, up to 30 s
      await pause(Math.min(30000, 1000 * 2 ** failures), follow.signal);
    }
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// `known`: the twin a long-poll just answered with, so only the device facts are read again.
async function loadDevice(id, resetForm, known = null) {
  const path = '/api/v1/devices/' + encodeURIComponent(id);
  let info; let twin;
  try {
    [info, twin] = await Promise.all([api(path), known || api(path + '/twin')]);
  } catch (err) {
    if (err.status === 401 || currentDevice() !== id) return;
    const view = document.getElementById('device');
    if (view && resetForm) view.append(h('div', { class: 'error', role: 'alert' }, err.message));
    return;
  }
  if (currentDevice() !== id || !document.getElementById('device')) return;
  const avail = info.state === 'removed' ? 'removed' : (info.availability || 'unknown');
  morph(document.getElementById('device-status'), [badge(avail === 'online' ? 'online' : avail === 'unknown' ? 'unknown' : 'offline'),
    h('span', { class: 'count' }, ' ' + avail)]);
  const facts = [
    ['Node', h('a', { href: '#/nodes/' + encodeURIComponent(info.node) }, info.node)],
    ['Model', info.model + (info.modelVersion ? ' ' + info.modelVersion : '')],
    ['State', info.state],
    ['Availability', avail + (info.availabilityAt ? ' (' + fmt.ago(new Date(info.availabilityAt * 1000).toISOString()) + ')' : '')],
    ['Desired changes not yet on the node', String(info.pendingDesired)],
    ['Last change refused by the node', info.lastRejected ? JSON.stringify(info.lastRejected) : '–'],
    ['Sync error', info.syncError || '–'],
  ];
  morph(document.getElementById('device-facts'), facts.map(([k, v]) =>
    h('div', { 'data-fact': k }, h('dt', {}, k), h('dd', {}, v))));
  document.getElementById('desired').textContent = JSON.stringify(values(twin.desired), null, 2);
  document.getElementById('reported').textContent = JSON.stringify(values(twin.reported), null, 2);
  document.getElementById('delta').textContent = JSON.stringify(twin.delta, null, 2);
  document.getElementById('desired-version').textContent = 'v' + twin.desired.$version;
  document.getElementById('reported-version').textContent = 'v' + twin.reported.$version;
  state.twinSeen = { id, desired: twin.desired.$version, reported: twin.reported.$version };
  if (resetForm || !state.form || state.form.id !== id) {
    state.form = { id, version: twin.desired.$version, values: values(twin.desired) };
    document.getElementById('desired-input').value = JSON.stringify(state.form.values, null, 2);
    document.getElementById('desired-result').replaceChildren();
  }
  const base = document.getElementById('desired-base');
  base.textContent = 'Editing desired $version ' + state.form.version + '.';
  if (twin.desired.$version !== state.form.version) {
    base.append(h('strong', { class: 'stale' }, ' Desired has changed since (now $version ' + twin.desired.$version + '): applying will be refused as a conflict; reload first.'));
  }
}

function mergePatch(before, after) {
  const patch = {};
  for (const [k, v] of Object.entries(after)) {
    if (JSON.stringify(before[k]) !== JSON.stringify(v)) patch[k] = v;
  }
  for (const k of Object.keys(before)) if (!(k in after)) patch[k] = null;
  return patch;
}

async function submitDesired(id) {
  const result = document.getElementById('desired-result');
  const form = state.form;
  if (!form || form.id !== id) return;
  let edited;
  try {
    edited = JSON.parse(document.getElementById('desired-input').value);
  } catch (err) {
    result.replaceChildren(h('div', { class: 'error', role: 'alert', id: 'desired-error' }, 'Not valid JSON: ' + err.message));
    return;
  }
  if (edited === null || typeof edited !== 'object' || Array.isArray(edited)) {
    result.replaceChildren(h('div', { class: 'error', role: 'alert', id: 'desired-error' }, 'Desired values are a JSON object, e.g. {"setpoint": 21.5}.'));
    return;
  }
  const patch = mergePatch(form.values, edited);
  if (!Object.keys(patch).length) {
    result.replaceChildren(h('p', { class: 'notice' }, 'Nothing changed.'));
    return;
  }
  const button = document.getElementById('desired-submit');
  button.disabled = true;
  try {
    const twin = await api('/api/v1/devices/' + encodeURIComponent(id) + '/twin', {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/merge-patch+json' },
      body: JSON.stringify({ desired: Object.assign({}, patch, { $version: form.version }) }),
    });
    result.replaceChildren(h('p', { class: 'notice ok', id: 'desired-ok' },
      'Applied: desired is now at $version ' + twin.desired.$version + '. The node passes it on to the device.'));
    await loadDevice(id, false);
    state.form = { id, version: twin.desired.$version, values: values(twin.desired) };
    document.getElementById('desired-input').value = JSON.stringify(state.form.values, null, 2);
    document.getElementById('desired-base').textContent = 'Editing desired $version ' + state.form.version + '.';
  } catch (err) {
    result.replaceChildren(patchError(err, id));
    if (err.status === 409) loadDevice(id, false).catch(() => {});  // show what is there now
  } finally {
    button.disabled = false;
  }
}

function patchError(err, id) {
  if (err.status === 409 && err.code === 'version_conflict') {
    return h('div', { class: 'error conflict', role: 'alert', id: 'desired-conflict' },
      h('strong', {}, 'Version conflict: '),
      'desired was changed by someone else after you opened this form (you edited $version ' + state.form.version +
      '). Nothing was written. ', err.message, ' ',
      h('button', { type: 'button', class: 'link', id: 'conflict-reload', onclick: () => loadDevice(id, true) },
        'Reload the current values'), ' and apply your change again.');
  }
  const list = (err.problems || []).map((p) => h('li', { 'data-path': p.path }, h('code', {}, p.path), ': ', p.reason));
  return h('div', { class: 'error', role: 'alert', id: 'desired-error' },
    h('strong', {}, 'Refused (' + err.status + ' ' + err.code + '): '), err.message,
    list.length ? h('ul', { class: 'problems' }, list) : '');
}

async function loadHistory(name) {
  const data = await api('/api/v1/nodes/' + encodeURIComponent(name) + '/history?window=' + state.window);
  const box = document.getElementById('charts');
  if (!box || currentNode() !== name) return;
  const now = Math.ceil(Date.now() / 60000) * 60;  // the end of the current minute
  box.replaceChildren(...CHARTS.map((c) => chart(c, data.points, now - state.window, now)));
}

function chart(spec, points, from, to) {
  const W = 600; const H = 140;
  const values = points.filter((p) => p[spec.key] !== null && p[spec.key] !== undefined);
  const last = values.length ? values[values.length - 1][spec.key] : null;
  const top = spec.max || Math.max(1, ...values.map((p) => p[spec.key])) * 1.2;
  const x = (t) => ((t - from) / (to - from)) * W;
  const y = (v) => H - (Math.min(v, top) / top) * (H - 4) - 2;
  const svg = h('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img',
    'aria-label': spec.title + ' over the last ' + fmt.duration(to - from) });
  for (const f of [0.25, 0.5, 0.75]) svg.append(h('line', { class: 'grid', x1: 0, x2: W, y1: H * f, y2: H * f }));
  if (!values.length) {
    svg.append(h('text', { class: 'nodata', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'no data in this window'));
  } else {
    // A step per minute (each point is that minute's mean); a gap (node offline) breaks it.
    let d = ''; let area = ''; let prev = null; let runStart = 0;
    const close = () => { if (prev !== null) area += `L${x(prev.t + 60).toFixed(1)},${H}L${x(runStart).toFixed(1)},${H}Z`; };
    for (const p of values) {
      const x0 = x(p.t).toFixed(1); const x1 = x(p.t + 60).toFixed(1); const py = y(p[spec.key]).toFixed(1);
      if (prev === null || p.t - prev.t > 120) {
        close();
        runStart = p.t;
        d += `M${x0},${py}`; area += `M${x0},${H}L${x0},${py}`;
      } else {
        d += `L${x0},${py}`; area += `L${x0},${py}`;
      }
      d += `L${x1},${py}`; area += `L${x1},${py}`;
      prev = p;
    }
    close();
    svg.append(h('path', { class: 'area s-' + spec.key, d: area }), h('path', { class: 'line s-' + spec.key, d }));
  }
  const latest = last === null ? 'no data' : (spec.unit === '%' ? fmt.pct(last) : fmt.num(last));
  const scale = spec.max ? spec.max + spec.unit : 'max ' + fmt.num(top);
  return h('figure', { class: 'chart', 'data-series': spec.key, 'data-points': values.length },
    h('figcaption', {}, spec.title, h('span', {}, latest)), svg,
    h('div', { class: 'axis' }, h('span', {}, fmt.duration(to - from) + ' ago'), h('span', {}, '0–' + scale), h('span', {}, 'now')));
}

// ------------------------------------------------------------------ clusters

// Registered clusters: GET /api/v1/clusters (and /{name}). The event stream carries each
// cluster agent's row (kind "cluster": liveness only, not the counts), so a cluster that
// reports or goes offline makes an open clusters page fetch again, at most once per
// CLUSTER_GAP; a slow poll covers whatever the stream does not say.
const CLUSTER_COLUMNS = [
  { field: 'name', label: 'Cluster' },
  { field: 'status', label: 'Status' },
  { field: 'version', label: 'Version' },
  { field: 'nodes_ready', label: 'Nodes ready' },
  { field: 'pods_running', label: 'Pods running' },
  { field: 'cpu_requested_cores', label: 'CPU requested' },
  { field: 'memory_requested_bytes', label: 'Memory requested' },
  { field: 'apiserver_healthy', label: 'API server' },
  { field: 'last_seen', label: 'Last seen' },
];
const PHASES = ['pending', 'running', 'succeeded', 'failed', 'unknown'];
const CLUSTER_GAP = 1000;  // ms: live updates fetch at most once a second
const CLUSTER_POLL = 5000;  // ms: the fallback poll while a clusters page is open

function currentCluster() {
  const m = location.hash.match(/^#\/clusters\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function followClusters(on) {
  clearInterval(state.clusterPoll);
  state.clusterPoll = on ? setInterval(clustersChanged, CLUSTER_POLL) : null;
}

function clustersChanged() {
  if (!document.getElementById('cluster-list') && !document.getElementById('cluster')) return;
  if (state.clusterPending) { state.clusterAgain = true; return; }
  state.clusterPending = true;
  loadClusters().catch(() => {}).finally(() => setTimeout(() => {
    state.clusterPending = false;
    if (state.clusterAgain) { state.clusterAgain = false; clustersChanged(); }
  }, CLUSTER_GAP));
}

async function loadClusters() {
  const name = currentCluster();
  if (name) {
    const detail = await api('/api/v1/clusters/' + encodeURIComponent(name));
    if (currentCluster() === name) renderClusterDetail(detail);
    return;
  }
  const page = await api('/api/v1/clusters?limit=5000');
  if (!document.getElementById('cluster-list')) return;
  state.clusters = new Map(page.clusters.map((c) => [c.name, c]));
  document.getElementById('cluster-error').replaceChildren();
  renderClusterRows();
}

const cores = (v) => (v === null || v === undefined ? '–' : String(Math.round(v * 100) / 100));

function ratio(part, whole) {
  return part === null || part === undefined || whole === null || whole === undefined ? '–' : part + ' / ' + whole;
}

// "1.75 / 9.5 cores" with a bar of the share; the share itself in the tooltip.
function usage(used, total, show, unit) {
  if (used === null || used === undefined || !total) return h('span', {}, '–');
  const share = (100 * used) / total;
  const bar = meter(share).firstChild;  // meter()'s bar without its percentage
  return h('span', { title: fmt.pct(share) + ' requested' }, bar, show(used) + ' / ' + show(total) + unit);
}

function health(c) {
  if (c.apiserver_healthy === true) return h('span', { class: 'badge online', 'data-health': 'healthy' }, 'healthy');
  if (c.apiserver_healthy === false) return h('span', { class: 'badge offline', 'data-health': 'unhealthy' }, 'unhealthy');
  return h('span', { class: 'badge', 'data-health': 'unknown' }, c.status === 'online' ? 'not reported' : 'unknown');
}

function renderClusterList() {
  const head = h('tr', {}, CLUSTER_COLUMNS.map((c) => h('th', { scope: 'col', 'data-field': c.field },
    h('button', { type: 'button', onclick: () => sortClustersBy(c.field) }, c.label))));
  mount(h('section', { id: 'cluster-list' },
    h('h1', {}, 'Clusters'),
    h('div', { id: 'cluster-cards' }),
    h('div', { id: 'cluster-error' }),
    h('h2', {}, 'All clusters'),
    h('div', { class: 'toolbar' }, h('span', { class: 'count', id: 'cluster-count' }, 'Loading…')),
    h('table', { id: 'clusters' }, h('thead', {}, head), h('tbody', {}))));
  renderClusterRows();
  loadClusters().catch((err) => {
    const box = document.getElementById('cluster-error');
    if (err.status !== 401 && box) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message));
  });
}

function sortClustersBy(field) {
  const s = state.clusterSort;
  state.clusterSort = s.field === field ? { field, dir: -s.dir } : { field, dir: 1 };
  renderClusterRows();
}

function renderClusterRows() {
  const table = document.getElementById('clusters');
  if (!table) return;
  const { field, dir } = state.clusterSort;
  for (const th of table.querySelectorAll('th')) {
    if (th.dataset.field === field) th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
  const rows = [...state.clusters.values()].sort((a, b) => {
    const x = a[field]; const y = b[field];
    if (x === y) return a.name.localeCompare(b.name);
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (typeof x === 'string' ? x.localeCompare(y) : Number(x) - Number(y)) * dir;
  });
  const sum = (key) => rows.reduce((n, c) => n + (c[key] || 0), 0);
  const count = (status) => rows.filter((c) => c.status === status).length;
  const unhealthy = rows.filter((c) => c.apiserver_healthy === false).length;
  morph(document.getElementById('cluster-cards'), [h('div', { class: 'cards' },
    card('Clusters', rows.length, ''),
    card('Online', count('online'), 'ok'),
    card('Offline', count('offline'), count('offline') ? 'bad' : ''),
    card('API server unhealthy', unhealthy, unhealthy ? 'bad' : ''),
    card('Nodes ready', sum('nodes_ready') + ' / ' + sum('nodes_total'), ''),
    card('Pods running', sum('pods_running') + ' / ' + sum('pods_total'), ''))]);
  document.getElementById('cluster-count').textContent = rows.length + (rows.length === 1 ? ' cluster' : ' clusters');
  const body = table.querySelector('tbody');
  if (!rows.length) {
    morph(body, [h('tr', {}, h('td', { class: 'empty', colspan: CLUSTER_COLUMNS.length },
      'No clusters yet. Register one: `tunnel-server token create --kind cluster --name NAME`, '
      + 'then run the agent in cluster mode inside that cluster (see docs/clusters.md).'))]);
    return;
  }
  morph(body, rows.map(clusterRow));
}

function clusterRow(c) {
  const worst = c.warnings.length ? c.warnings[0] : null;
  const warn = worst ? h('span', { class: 'w-dot ' + worst.severity, title: c.warnings.map((w) => w.message).join('\n') }, ' ⚠') : '';
  return h('tr', { 'data-cluster': c.name, 'data-status': c.status },
    h('td', { class: 'name', 'data-label': 'Cluster' }, h('a', { href: '#/clusters/' + encodeURIComponent(c.name) }, c.name), warn),
    h('td', { class: 'status', 'data-label': 'Status' }, badge(c.status)),
    h('td', { 'data-label': 'Version' }, c.version || '–'),
    h('td', { class: 'num', 'data-label': 'Nodes ready' }, ratio(c.nodes_ready, c.nodes_total)),
    h('td', { class: 'num', 'data-label': 'Pods running' }, ratio(c.pods_running, c.pods_total)),
    h('td', { class: 'num', 'data-label': 'CPU requested' }, usage(c.cpu_requested_cores, c.cpu_allocatable_cores, cores, ' cores')),
    h('td', { class: 'num', 'data-label': 'Memory requested' }, usage(c.memory_requested_bytes, c.memory_allocatable_bytes, fmt.bytes, '')),
    h('td', { 'data-label': 'API server' }, health(c)),
    h('td', { 'data-label': 'Last seen', title: fmt.time(c.last_seen) }, c.connected ? 'now' : fmt.ago(c.last_seen)));
}

async function renderCluster(name) {
  mount(h('section', { id: 'cluster', 'data-cluster': name },
    h('div', { class: 'crumbs' }, h('a', { href: '#/clusters' }, '← Clusters')),
    h('div', { class: 'head' }, h('h1', {}, name), h('span', { id: 'cluster-status' })),
    h('div', { id: 'cluster-warnings' }),
    h('h2', {}, 'Details'), h('div', { class: 'panel' }, h('dl', { class: 'facts', id: 'cluster-facts' }, h('div', {}, h('dt', {}, 'Loading…')))),
    h('h2', {}, 'Pods by phase'), h('div', { id: 'cluster-pods' }),
    h('details', { class: 'raw' }, h('summary', {}, 'All reported metrics'), h('pre', { id: 'cluster-raw' }))));
  try {
    const detail = await api('/api/v1/clusters/' + encodeURIComponent(name));
    if (currentCluster() === name) renderClusterDetail(detail);
  } catch (err) {
    if (err.status === 401) return;
    const view = document.getElementById('cluster');
    if (view) view.append(h('div', { class: 'error', role: 'alert', id: 'cluster-error' }, err.message));
  }
}

function renderClusterDetail(d) {
  const status = document.getElementById('cluster-status');
  if (!status) return;
  morph(status, [badge(d.status), d.offline_reason && d.status === 'offline'
    ? h('span', { class: 'count' }, ' ' + d.offline_reason + ' (' + fmt.ago(d.status_since) + ')') : '']);
  const latency = d.apiserver_latency_ms === null || d.apiserver_latency_ms === undefined ? '' : ' (' + fmt.num(d.apiserver_latency_ms, 1) + ' ms)';
  const facts = [
    ['Status', d.status + (d.connected ? ' (tunnel up)' : ' (no tunnel)')],
    ['API server', h('span', {}, health(d), latency)],
    ['Kubernetes version', d.version || '–'],
    ['Nodes ready', ratio(d.nodes_ready, d.nodes_total)],
    ['Pods running', ratio(d.pods_running, d.pods_total)],
    ['CPU requested', usage(d.cpu_requested_cores, d.cpu_allocatable_cores, cores, ' cores')],
    ['Memory requested', usage(d.memory_requested_bytes, d.memory_allocatable_bytes, fmt.bytes, '')],
    ['Counts sampled', d.sampled_at ? fmt.ago(d.sampled_at) : '–'],
    ['Last report', fmt.ago(d.last_report)],
    ['Agent version', d.agent_version || '–'],
    ['Certificate expires', d.cert_expires ? fmt.time(d.cert_expires) + ' (' + fmt.until(d.cert_expires) + ')' : '–'],
    ['Reports every', d.report_interval_seconds ? d.report_interval_seconds + ' s (offline after ' + d.lease_seconds + ' s silence)' : '–'],
    ['Joined', fmt.time(d.created_at)],
  ];
  morph(document.getElementById('cluster-facts'), facts.map(([k, v]) =>
    h('div', { 'data-fact': k }, h('dt', {}, k), h('dd', {}, v))));
  morph(document.getElementById('cluster-pods'), [h('div', { class: 'cards' },
    PHASES.map((p) => card(p[0].toUpperCase() + p.slice(1), d['pods_' + p] ?? '–', p === 'failed' && d.pods_failed ? 'bad' : '')))]);
  morph(document.getElementById('cluster-warnings'), [d.warnings.length ? h('ul', { class: 'warnings' },
    d.warnings.map((w) => h('li', { class: w.severity, 'data-code': w.code }, w.message))) : '']);
  document.getElementById('cluster-raw').textContent = JSON.stringify(d.metrics || {}, null, 2);
}

// ------------------------------------------------------------------ routing

function mount(el) {
  document.getElementById('view').replaceChildren(el);
}

let detailPending = false;

function refresh(changed) {
  if (document.getElementById('node-list')) { renderOverview(); renderRows(); return; }
  const name = currentNode();
  if (!name || !changed.has(name) || detailPending || !document.getElementById('node-status')) return;
  // The node changed: fetch its full detail (all metrics), at most once per second.
  detailPending = true;
  api('/api/v1/nodes/' + encodeURIComponent(name))
    .then((d) => { if (currentNode() === name) renderDetail(d); })
    .catch(() => {})
    .finally(() => setTimeout(() => { detailPending = false; }, 1000));
}

function route() {
  if (!session()) { renderSignIn(''); return; }
  document.getElementById('nav').hidden = false;
  startStream();
  const name = currentNode();
  const device = currentDevice();
  const cluster = currentCluster();
  if (state.twinFollow && !device) { state.twinFollow.abort(); state.twinFollow = null; }
  if (name) renderNode(name);
  else if (device) renderDevice(device);
  else if (location.hash === '#/devices') renderDeviceList();
  else if (cluster) renderCluster(cluster);
  else if (location.hash === '#/clusters') renderClusterList();
  else renderNodeList();
  followClusters(Boolean(cluster) || location.hash === '#/clusters');
  document.getElementById('view').focus({ preventScroll: true });
}

window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('signout').addEventListener('click', () => { signOutEverywhere(); });
  route();
});
// Re-draw relative times ("12 s ago") without waiting for a change.
setInterval(() => {
  if (document.getElementById('node-list')) renderRows();
  if (document.getElementById('cluster-list')) renderClusterRows();
}, 10000);
