// EdgeFleet console. Plain JavaScript, no build step, no third-party code.
// Every text from the server goes into the page with textContent, never as HTML.
'use strict';

const SESSION_KEY = 'edgefleet.session';
const COLUMNS = [  // field: the node row's field, also the list's sort key (`sort=-cpuPercent`)
  { field: 'name', label: 'Node' },
  { field: 'status', label: 'Status' },
  { field: 'cpuPercent', label: 'CPU', num: true },
  { field: 'memoryPercent', label: 'Memory', num: true },
  { field: 'diskPercent', label: 'Disk', num: true },
  { field: 'agentVersion', label: 'Agent' },
  { field: 'certExpiresAt', label: 'Cert expires' },
  { field: 'lastSeenAt', label: 'Last seen' },
];
// Which role may do what (docs/security.md): the console hides what the role may not do; the
// server decides anyway.
const MAY = {
  tokens: 'admin', rotate: 'admin', audit: 'admin', users: 'admin',
  nodeActions: 'write', devices: 'write', twin: 'write', modelUpload: 'write',
};
const ROLE_VERBS = { viewer: ['read'], operator: ['read', 'write'], admin: ['read', 'write', 'admin'] };
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
  me: null,  // GET /api/v1/me: { user, role, clusters, expiresAt }
  page: null,  // the node table's page: { items, tokens (continue per page), index, next }
  pageTimer: null,  // a reload of the node table's page is due
  telemetry: { property: '', window: 3600, loadedAt: 0 },  // the device page's chart
  flash: null,  // a message for the next page (a device removed with its twin)
  pageSize: 50,  // rows of the node table per page (GET /api/v1/nodes?limit=)
};

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const svg = ['svg', 'path', 'line', 'text', 'rect', 'g', 'title', 'circle'].includes(tag);
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

// Every error of the API is an RFC 9457 problem document: `detail` is shown to people,
// `reason` (a stable word) drives the console's logic (session expiry, conflicts).
class ApiError extends Error {
  constructor(status, reason, detail, body) {
    super(detail);
    this.status = status;
    this.reason = reason;
    this.problems = (body && Array.isArray(body.problems)) ? body.problems : [];
    this.body = body;
  }
}

function problemOf(body, status, statusText) {
  return {
    reason: (body && typeof body.reason === 'string' && body.reason) || 'http_' + status,
    detail: (body && typeof body.detail === 'string' && body.detail) || statusText || 'request failed',
  };
}

// `options.full`: answer { body, etag } instead of the body alone.
async function api(path, options = {}, token = null) {
  const s = session();
  const bearer = token || (s && s.token);
  const headers = Object.assign({ Accept: 'application/json' }, options.headers || {});
  if (bearer) headers.Authorization = 'Bearer ' + bearer;
  if (options.json !== undefined) headers['Content-Type'] = 'application/json';
  const init = Object.assign({}, options, { headers, credentials: 'omit', cache: 'no-store' });
  if (options.json !== undefined) init.body = JSON.stringify(options.json);
  delete init.json; delete init.full;
  let answer;
  try {
    answer = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, 'network', 'The server cannot be reached: ' + err.message);
  }
  let body = null;
  try { body = await answer.json(); } catch (_) { body = null; }
  if (!answer.ok) {
    const { reason, detail } = problemOf(body, answer.status, answer.statusText);
    // Parallel requests share one session: only the first 401 signs out, so its reason stays shown.
    if (answer.status === 401 && !token && session()) signOut(expiredText(reason, detail));
    throw new ApiError(answer.status, reason, detail, body);
  }
  return options.full ? { body, etag: answer.headers.get('ETag') } : body;
}

// Query string of `params` (empty values left out).
function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  const text = q.toString();
  return text ? '?' + text : '';
}

// One page of a list: { items, next } (next: the `continue` token, null on the last page).
async function listPage(path, params = {}, cont = null) {
  const body = await api(path + query(Object.assign({}, params, { continue: cont })));
  return { items: body.items || [], next: (body.metadata && body.metadata.continue) || null, remaining: body.metadata && body.metadata.remainingItemCount };
}

// A whole list, page after page (`continue`), up to `max` items.
async function listAll(path, params = {}, max = 10000) {
  const items = [];
  let next = null;
  do {
    const got = await listPage(path, Object.assign({ limit: 500 }, params), next);
    items.push(...got.items);
    next = got.next;
  } while (next && items.length < max);
  return items;
}

function may(what) {
  const role = state.me && state.me.role;
  return Boolean(role && (ROLE_VERBS[role] || []).includes(MAY[what]));
}

function expiredText(reason, detail) {
  if (reason === 'session_expired') return 'Your session expired. Sign in again with your token.';
  if (reason === 'session_revoked') {
    return 'This session was signed out (in another tab with the same session, or by a copy of its token). '
      + 'Sign in again with your token.';
  }
  return 'You were signed out: ' + detail;
}

// A time of the API as RFC 3339 text (older twin fields were UNIX seconds).
function isoOf(value) {
  if (value === null || value === undefined) return null;
  return typeof value === 'number' ? new Date(value * 1000).toISOString() : String(value);
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

// `extra`: a node shown under the form (the new admin token after a rotation).
function renderSignIn(message, extra = null) {
  stopStream();
  state.me = null;
  document.getElementById('nav').hidden = true;
  const error = h('div', { class: 'error', id: 'signin-error', role: 'alert', hidden: !message }, message || '');
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'off', spellcheck: 'false',
    required: true, maxlength: 512, placeholder: 'abc123.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx',
  });
  const button = h('button', { class: 'btn', type: 'submit', id: 'signin-button' }, 'Sign in');
  const sso = h('div', { id: 'sso', hidden: true });
  const form = h('form', { id: 'signin-form', class: 'panel', novalidate: true },
    h('label', { for: 'token' }, 'Token'), input,
    h('p', { class: 'hint' }, 'A user token from ',
      h('code', {}, 'tunnel-server users create'),
      ', or the admin token in the server\'s data folder: ',
      h('code', {}, 'cat /var/lib/tunnel-server/admin-token'),
      '. This tab keeps only a session that expires; closing the tab signs you out.'),
    error, button, sso);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    if (!token) { showError(error, 'Paste your token first.'); return; }
    button.disabled = true;
    try {
      const created = await api('/api/v1/sessions', { method: 'POST', json: {} }, token);
      keepSession(created.token, created.expiresAt);
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
  mount(h('section', { class: 'signin' }, h('h1', {}, 'Sign in to EdgeFleet'), extra, form));
  if (!extra) input.focus();
  showSso(sso);
}

function keepSession(token, expiresAt) {
  sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token, expiresAt: expiresAt || null }));
}

// "Sign in with SSO" when the server has an identity provider (GET /api/v1/sso, public).
async function showSso(box) {
  let sso = null;
  try {
    const answer = await fetch('/api/v1/sso', { credentials: 'omit', cache: 'no-store', headers: { Accept: 'application/json' } });
    if (answer.ok) sso = await answer.json();
  } catch (_) { return; }  // no SSO part on this server, or it cannot be reached: tokens only
  if (!sso || sso.enabled !== true || !box.isConnected) return;
  const name = typeof sso.providerName === 'string' && sso.providerName ? sso.providerName : 'SSO';
  box.replaceChildren(h('p', { class: 'or' }, 'or'),
    h('button', { type: 'button', class: 'btn secondary', id: 'sso-button', onclick: () => location.assign('/api/v1/sso/login') },
      'Sign in with ' + name));
  box.hidden = false;
}

// The SSO callback lands on `/#session=<token>`: keep it as this tab's session and take it out
// of the address bar (and so out of the history) before anything else runs.
function takeSessionFromFragment() {
  const m = location.hash.match(/^#session=([A-Za-z0-9._~+/=-]{1,1024})$/);
  if (!m) return;
  keepSession(decodeURIComponent(m[1]), null);
  history.replaceState(null, '', location.pathname + location.search + '#/');
}

function showError(el, text, cls = 'error') {
  el.className = cls;
  el.textContent = text;
  el.hidden = false;
}

function signOut(message, extra = null) {
  sessionStorage.removeItem(SESSION_KEY);
  state.nodes.clear();
  state.overview = null;
  renderSignIn(message || '', extra);
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
    const until = s.expiresAt ? ' until ' + fmt.time(s.expiresAt) : ' until it expires';
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
    const { reason, detail } = problemOf(body, 401, 'sign in again');
    signOut(expiredText(reason, detail));
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
    const { reason, detail } = problemOf(data, 401, 'the session ended');
    signOut(expiredText(reason === 'http_401' ? 'session_expired' : reason, detail));
    return;
  }
  if (name === 'snapshot') state.nodes.clear();
  if (name === 'snapshot' || name === 'nodes') {
    const rows = eventRows(data);
    const before = new Map(rows.map((r) => [r.name, state.nodes.get(r.name)]));
    for (const row of rows) state.nodes.set(row.name, row);
    state.overview = data.overview;
    state.retry = 0;
    setLive('live', 'on');
    refresh(new Set(rows.map((r) => r.name)), name === 'snapshot' || rows.some((r) => {
      const old = before.get(r.name);
      return !old || old.status !== r.status || old.state !== r.state;
    }));
    if (rows.some((r) => r.kind === 'cluster')) clustersChanged();
  }
}

// The rows of a `snapshot` or `nodes` event (Node rows, as GET /api/v1/nodes lists them).
function eventRows(data) {
  return data.items || data.nodes || [];
}

// ------------------------------------------------------------------ node list page

function renderNodeList() {
  const filter = h('input', {
    id: 'filter', type: 'search', placeholder: 'Filter by name', value: state.filter,
    'aria-label': 'Filter nodes by name',
    oninput: (e) => { state.filter = e.target.value; firstPage(); },
  });
  const status = h('select', {
    id: 'status-filter', 'aria-label': 'Status',
    onchange: (e) => { state.status = e.target.value; firstPage(); },
  }, [['', 'All statuses'], ['online', 'Online'], ['offline', 'Offline'], ['unknown', 'Never reported'],
    ['pending', 'Pending'], ['revoked', 'Revoked']].map(([v, t]) => h('option', { value: v, selected: v === state.status }, t)));
  const sortSelect = h('select', {
    id: 'sort-select', 'aria-label': 'Sort by',
    onchange: (e) => { const [f, d] = e.target.value.split(':'); state.sort = { field: f, dir: Number(d) }; firstPage(); },
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
    h('div', { id: 'nodes-error' }),
    h('table', { id: 'nodes' }, h('thead', {}, head), h('tbody', {})),
    h('div', { class: 'pager', role: 'group', 'aria-label': 'Pages' },
      h('button', { type: 'button', class: 'btn secondary', id: 'page-prev', onclick: prevPage }, '← Previous'),
      h('span', { class: 'count', id: 'page-label' }),
      h('button', { type: 'button', class: 'btn secondary', id: 'page-next', onclick: nextPage }, 'Next →'))));
  renderOverview();
  renderRows();
  firstPage();
}

// The node table shows one page of GET /api/v1/nodes (filtered, sorted and paged by the
// server: `q`, `status`, `sort`, `limit`, `continue`); the live stream patches the rows shown
// and makes the page load again when a node joins or changes status.
function firstPage() {
  state.page = { items: state.page ? state.page.items : null, tokens: [null], index: 0, next: null, remaining: null };
  loadPage();
}

function nextPage() {
  const p = state.page;
  if (!p || !p.next) return;
  p.tokens = p.tokens.slice(0, p.index + 1).concat([p.next]);
  p.index += 1;
  loadPage();
}

function prevPage() {
  const p = state.page;
  if (!p || p.index === 0) return;
  p.index -= 1;
  loadPage();
}

function nodeQuery() {
  return {
    q: state.filter.trim(),
    status: state.status,
    sort: (state.sort.dir < 0 ? '-' : '') + state.sort.field,
    limit: state.pageSize,
  };
}

let pageSeq = 0;
async function loadPage() {
  const p = state.page;
  const seq = ++pageSeq;
  try {
    const got = await listPage('/api/v1/nodes', nodeQuery(), p.tokens[p.index]);
    if (seq !== pageSeq || state.page !== p || !document.getElementById('node-list')) return;
    p.items = got.items.filter((r) => r.kind !== 'cluster');
    p.next = got.next;
    p.remaining = got.remaining;
    const box = document.getElementById('nodes-error');
    if (box) box.replaceChildren();
  } catch (err) {
    if (err.status === 401 || seq !== pageSeq) return;
    if (err.reason === 'bad_continue') { firstPage(); return; }  // the query changed under it
    const box = document.getElementById('nodes-error');
    if (box) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message));
  }
  renderRows();
}

// Load the page again, at most once a second (live changes that may move rows in or out).
function reloadPageSoon() {
  if (state.pageTimer || !document.getElementById('node-list') || !state.page) return;
  state.pageTimer = setTimeout(() => { state.pageTimer = null; if (document.getElementById('node-list')) loadPage(); }, 1000);
}

function sortBy(field) {
  state.sort = state.sort.field === field ? { field, dir: -state.sort.dir } : { field, dir: 1 };
  const select = document.getElementById('sort-select');
  if (select) select.value = state.sort.field + ':' + state.sort.dir;
  firstPage();
}

function renderOverview() {
  const box = document.getElementById('overview');
  if (!box) return;
  let o = state.overview;
  if (!o) { box.replaceChildren(h('p', { class: 'notice' }, 'Loading the overview…')); return; }
  // Counted here from the stream's rows, not taken from o.nodes: the server's overview counts
  // the registered clusters' agents too, and they have their own page.
  const rows = nodeRows();
  const n = { total: rows.length };
  for (const key of ['online', 'offline', 'unknown', 'pending']) n[key] = rows.filter((r) => r.status === key).length;
  const clusters = new Set([...state.nodes.values()].filter((r) => r.kind === 'cluster').map((r) => r.name));
  o = Object.assign({}, o, { warnings: (o.warnings || []).filter((w) => !clusters.has(w.node)) });
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
      firstPage();
    });
  }
  return el;
}

// The event stream's rows include registered clusters (kind "cluster"): they have their own page.
function nodeRows() {
  return [...state.nodes.values()].filter((r) => r.kind !== 'cluster');
}

// The rows of the page shown, each as fresh as the live stream has it.
function visibleRows() {
  const items = (state.page && state.page.items) || [];
  return items.map((item) => state.nodes.get(item.name) || item);
}

function renderRows() {
  const table = document.getElementById('nodes');
  if (!table) return;
  for (const th of table.querySelectorAll('th')) {
    const sorted = th.dataset.field === state.sort.field;
    if (sorted) th.setAttribute('aria-sort', state.sort.dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
  const p = state.page;
  const rows = visibleRows();
  const body = table.querySelector('tbody');
  const total = nodeRows().length;
  const filtered = state.filter.trim() || state.status;
  const prev = document.getElementById('page-prev');
  const next = document.getElementById('page-next');
  prev.disabled = !p || p.index === 0;
  next.disabled = !p || !p.next;
  document.getElementById('page-label').textContent = p && (p.index || p.next) ? 'Page ' + (p.index + 1) : '';
  document.getElementById('count').textContent = !p || p.items === null ? 'Loading…'
    : rows.length + ' of ' + total + ' nodes' + (p.next ? ' on this page' : '');
  if (!rows.length) {
    if (!p || p.items === null) { morph(body, []); return; }
    const text = total || filtered
      ? 'No node matches the filter.'
      : 'No nodes yet. Create a bootstrap token (Tokens page, or `tunnel-server token create`) and run `edge-agent join` on a machine.';
    morph(body, [h('tr', {}, h('td', { class: 'empty', colspan: COLUMNS.length }, text))]);
    return;
  }
  morph(body, rows.map(row));
}

function row(r) {
  const warnings = r.warnings || [];
  const worst = warnings.length ? warnings[0] : null;
  const warn = worst ? h('span', { class: 'w-dot ' + worst.severity, title: warnings.map((w) => w.message).join('\n') }, ' ⚠') : '';
  const seen = r.connected ? 'now' : fmt.ago(r.lastSeenAt);
  return h('tr', { 'data-node': r.name, 'data-status': r.status },
    h('td', { class: 'name', 'data-label': 'Node' }, h('a', { href: '#/nodes/' + encodeURIComponent(r.name) }, r.name), warn),
    h('td', { class: 'status', 'data-label': 'Status' }, badge(r.status)),
    h('td', { class: 'num', 'data-label': 'CPU' }, meter(r.cpuPercent)),
    h('td', { class: 'num', 'data-label': 'Memory' }, meter(r.memoryPercent)),
    h('td', { class: 'num', 'data-label': 'Disk' }, meter(r.diskPercent)),
    h('td', { 'data-label': 'Agent' }, r.agentVersion || '–'),
    h('td', { 'data-label': 'Cert expires', title: fmt.time(r.certExpiresAt) }, fmt.until(r.certExpiresAt)),
    h('td', { 'data-label': 'Last seen', title: fmt.time(r.lastSeenAt) }, seen));
}

// ------------------------------------------------------------------ node page

async function renderNode(name) {
  mount(h('section', { id: 'node', 'data-node': name },
    h('div', { class: 'crumbs' }, h('a', { href: '#/' }, '← Nodes')),
    h('div', { class: 'head' }, h('h1', {}, name), h('span', { id: 'node-status' }),
      h('span', { class: 'actions', id: 'node-actions' })),
    h('div', { id: 'node-result', role: 'status', 'aria-live': 'polite' }),
    h('div', { id: 'node-warnings' }),
    h('h2', {}, 'Details'), h('div', { class: 'panel' }, h('dl', { class: 'facts', id: 'facts' }, h('div', {}, h('dt', {}, 'Loading…')))),
    h('h2', {}, 'Usage over time ', h('span', { class: 'windows', role: 'group', 'aria-label': 'Time window' },
      WINDOWS.map(([seconds, label]) => h('button', {
        type: 'button', 'data-window': seconds, 'aria-pressed': String(seconds === state.window),
        onclick: () => { state.window = seconds; renderNode(name); },
      }, label)))),
    h('div', { class: 'charts', id: 'charts' }),
    h('div', { id: 'devices' }),
    h('h2', {}, 'Events'),
    h('div', { id: 'node-events' }, h('p', { class: 'count' }, 'Loading…')),
    h('details', { class: 'raw' }, h('summary', {}, 'All reported metrics'), h('pre', { id: 'raw' }))));
  try {
    const detail = await api('/api/v1/nodes/' + encodeURIComponent(name));
    if (currentNode() !== name) return;
    renderDetail(detail);
    loadNodeEvents(name);
    await loadHistory(name);
  } catch (err) {
    if (err.status === 401) return;
    const view = document.getElementById('node');
    if (view) view.append(h('div', { class: 'error', role: 'alert', id: 'node-error' }, err.message));
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
  const failed = document.getElementById('node-error');  // an earlier read failed: this one did not
  if (failed) failed.remove();
  morph(status, [badge(d.status), d.offlineReason && d.status === 'offline'
    ? h('span', { class: 'count' }, ' ' + d.offlineReason + ' (' + fmt.ago(d.statusChangedAt) + ')') : '']);
  renderNodeActions(d);
  const m = d.metrics || {};
  const facts = [
    ['Status', d.status + (d.connected ? ' (tunnel up)' : ' (no tunnel)')],
    ['Last report', fmt.ago(d.lastReportAt)],
    ['OS', d.os || m['os.system'] || '–'],
    ['Kernel', d.kernel || '–'],
    ['Architecture', m['host.arch'] || '–'],
    ['Agent version', d.agentVersion || '–'],
    ['Certificate expires', d.certExpiresAt ? fmt.time(d.certExpiresAt) + ' (' + fmt.until(d.certExpiresAt) + ')' : '–'],
    ['Uptime', fmt.duration(d.uptimeSeconds)],
    ['CPU', fmt.pct(d.cpuPercent) + (m['cpu.count'] ? ' of ' + m['cpu.count'] + ' cores' : '')],
    ['Load (1/5/15 min)', [m['load.1'], m['load.5'], m['load.15']].map((v) => fmt.num(v)).join(' / ')],
    ['Memory', fmt.pct(d.memoryPercent) + (m['memory.total'] ? ' of ' + fmt.bytes(m['memory.total']) : '')],
    ['Disk ' + (m['disk.path'] || ''), fmt.pct(d.diskPercent) + (m['disk.total'] ? ' of ' + fmt.bytes(m['disk.total']) : '')],
    ['Network in / out', fmt.bytes(m['net.rx_bps']) + '/s / ' + fmt.bytes(m['net.tx_bps']) + '/s'],
    ['Tunnel RTT', d.rttMs === null || d.rttMs === undefined ? '–' : fmt.num(d.rttMs, 1) + ' ms'],
    ['Reports every', d.reportIntervalSeconds ? d.reportIntervalSeconds + ' s (offline after ' + d.leaseSeconds + ' s silence)' : '–'],
    ['Joined', fmt.time(d.createdAt)],
  ];
  morph(document.getElementById('facts'), facts.map(([k, v]) =>
    h('div', { 'data-fact': k }, h('dt', {}, k), h('dd', {}, v))));
  const warnings = document.getElementById('node-warnings');
  const list = d.warnings || [];
  morph(warnings, [list.length ? h('ul', { class: 'warnings' },
    list.map((w) => h('li', { class: w.severity }, w.message))) : '']);
  document.getElementById('raw').textContent = JSON.stringify(m, null, 2);
  renderDevices(d.devices, m);
}

// Approve or deny a node (or registered cluster) waiting for approval; revoke a joined one
// (operator or admin). `kind`: 'node' or 'cluster'.
const ACTIONS = {
  node: { things: 'nodes', box: 'node-actions', result: 'node-result', current: () => currentNode() },
  cluster: { things: 'clusters', box: 'cluster-actions', result: 'cluster-result', current: () => currentCluster() },
};

function renderNodeActions(d, kind = 'node') {
  const box = document.getElementById(ACTIONS[kind].box);
  if (!box) return;
  if (!may('nodeActions')) { morph(box, []); return; }
  const name = d.name;
  const buttons = [];
  if (d.state === 'pending') {
    buttons.push(h('button', { type: 'button', class: 'btn', id: kind + '-approve', onclick: () => nodeAction(kind, name, 'approve') }, 'Approve'));
    buttons.push(h('button', { type: 'button', class: 'btn secondary', id: kind + '-deny',
      onclick: () => confirmThen('Deny ' + name + '?', 'Its join is refused; the agent has to join again with a new token.', 'Deny', () => nodeAction(kind, name, 'deny')) }, 'Deny…'));
  } else if (d.state !== 'revoked') {
    buttons.push(h('button', { type: 'button', class: 'btn danger', id: kind + '-revoke',
      onclick: () => confirmThen('Revoke ' + name + '?', 'Its certificate stops working and its tunnel is cut at once. '
        + 'To bring it back, create a new token and join it again.', 'Revoke', () => nodeAction(kind, name, 'revoke')) }, 'Revoke…'));
  }
  morph(box, buttons);
}

const NODE_DONE = { approve: 'Approved: the agent gets its certificate and connects.', deny: 'Denied: its join is refused.', revoke: 'Revoked: it is cut off.' };

async function nodeAction(kind, name, verb) {
  const spec = ACTIONS[kind];
  const path = '/api/v1/' + spec.things + '/' + encodeURIComponent(name);
  const result = document.getElementById(spec.result);
  try {
    await api(path + '/' + verb, { method: 'POST', json: {} });
    if (result) result.replaceChildren(h('p', { class: 'notice ok', id: kind + '-done' }, NODE_DONE[verb]));
  } catch (err) {
    if (err.status === 401) return;
    if (result) result.replaceChildren(h('div', { class: 'error', role: 'alert', id: kind + '-action-error' }, err.message));
  }
  if (spec.current() !== name) return;
  if (kind === 'cluster') { clustersChanged(); return; }
  fetchDetail(name);
  loadNodeEvents(name);
}

// A modal confirm dialog (<dialog>: focus stays inside; Escape cancels). `choices`: more
// options as [label, value] radio buttons, the chosen value goes to `then`.
function confirmThen(title, text, label, then, choices = null) {
  const form = h('form', { method: 'dialog', class: 'dialog-form' },
    h('h2', { id: 'dialog-title' }, title), h('p', {}, text),
    choices ? h('fieldset', {}, h('legend', {}, choices.legend), choices.options.map(([value, text2], i) =>
      h('label', { class: 'choice' }, h('input', { type: 'radio', name: 'choice', value, checked: i === 0 }), ' ', text2))) : null,
    h('div', { class: 'form-buttons' },
      h('button', { type: 'submit', class: 'btn danger', value: 'ok', id: 'dialog-ok' }, label),
      h('button', { type: 'submit', class: 'btn secondary', value: 'cancel', id: 'dialog-cancel' }, 'Cancel')));
  const dialog = h('dialog', { id: 'confirm', 'aria-labelledby': 'dialog-title' }, form);
  document.body.append(dialog);
  dialog.addEventListener('close', () => {
    const picked = form.querySelector('input[name="choice"]:checked');
    dialog.remove();
    if (dialog.returnValue === 'ok') then(picked ? picked.value : undefined);
  });
  dialog.showModal();
  form.querySelector('#dialog-cancel').focus();
}

// The node's events (joined, approved, online, offline, certificate renewed, revoked).
async function loadNodeEvents(name) {
  const box = document.getElementById('node-events');
  if (!box) return;
  let items;
  try {
    items = await listAll('/api/v1/nodes/' + encodeURIComponent(name) + '/events', {}, 200);
  } catch (err) {
    if (err.status !== 401 && currentNode() === name) box.replaceChildren(h('p', { class: 'count' }, 'Events cannot be read: ' + err.message));
    return;
  }
  if (currentNode() !== name) return;
  if (!items.length) { box.replaceChildren(h('p', { class: 'count' }, 'No events yet.')); return; }
  morph(box, [h('ol', { class: 'events', id: 'node-event-list' }, items.map((e) =>
    h('li', { 'data-type': e.type },
      h('time', { datetime: e.at, title: fmt.time(e.at) }, fmt.time(e.at)), ' ',
      h('strong', {}, eventLabel(e.type)), e.detail ? ' — ' + e.detail : '')))]);
}

function eventLabel(type) {
  return { certificateRenewed: 'certificate renewed' }[type] || String(type);
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
        h('td', { 'data-label': 'Updated' }, dev.updatedAt ? fmt.ago(isoOf(dev.updatedAt)) : '–'));
    })));
}

// ------------------------------------------------------------------ devices

async function renderDeviceList() {
  const flash = state.flash;
  state.flash = null;
  mount(h('section', { id: 'devices-page' },
    h('h1', {}, 'Devices'),
    h('p', { class: 'count' }, 'Every device twin, by node. Open one to see its desired and reported state and change desired values.'),
    flash ? h('p', { class: 'notice ok', id: 'device-done', role: 'status' }, flash) : null,
    may('devices') ? registerForm() : null,
    h('div', { id: 'device-list' }, h('p', { class: 'count' }, 'Loading…'))));
  await loadDeviceList();
}

async function loadDeviceList() {
  const box = document.getElementById('device-list');
  if (!box) return;
  try {
    const items = await listAll('/api/v1/devices');
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
    const text = err.status === 404 && err.reason === 'not_found'
      ? 'This server runs no device twins.' : err.message;
    box.replaceChildren(h('div', { class: 'error', role: 'alert' }, text));
  }
}

// Register a device: POST /api/v1/devices {node, device, model} answers the device's one-time
// claim credential, shown this once.
function registerForm() {
  const field = (id, label, hint) => [h('label', { for: id }, label),
    h('input', { id, name: id, required: true, maxlength: 128, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': id + '-hint' }),
    h('span', { class: 'hint', id: id + '-hint' }, hint)];
  const result = h('div', { id: 'register-result', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { id: 'register-form', class: 'panel grid-form' },
    h('h2', {}, 'Register a device'),
    ...field('register-node', 'Node', 'the node whose broker the device connects to'),
    ...field('register-device', 'Device name', 'unique on that node, e.g. th-1'),
    ...field('register-model', 'Model', 'a device model name, e.g. thermostat'),
    h('button', { type: 'submit', class: 'btn', id: 'register-submit' }, 'Register'), result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const value = (id) => form.querySelector('#' + id).value.trim();
    const body = { node: value('register-node'), device: value('register-device'), model: value('register-model') };
    const button = form.querySelector('#register-submit');
    button.disabled = true;
    try {
      const created = await api('/api/v1/devices', { method: 'POST', json: body });
      const claim = claimOf(created);
      result.replaceChildren(h('div', { class: 'notice ok secret', id: 'register-done' },
        h('p', {}, 'Registered ' + (created.id || body.node + ':' + body.device) + '. Give the device this claim credential; it is shown this once:'),
        ...claim.map(([label, text]) => secretLine(label, text, 'claim-secret')),
        h('p', { class: 'hint' }, 'The device claims with the site\'s claim credential and this secret (docs/mqtt.md).')));
      loadDeviceList();
    } catch (err) {
      if (err.status !== 401) result.replaceChildren(problemBox(err, 'register-error'));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// The one-time secret of a register answer, as [label, value] lines.
function claimOf(created) {
  return [['Claim secret', String(created.claimSecret)]];
}

// A secret shown once, with a copy button.
function secretLine(label, text, id) {
  return h('div', { class: 'secret-line' },
    h('span', { class: 'secret-label' }, label),
    h('code', { id, class: 'secret-value' }, text),
    h('button', { type: 'button', class: 'btn secondary copy', 'aria-label': 'Copy ' + label.toLowerCase(), onclick: (e) => copy(text, e.currentTarget) }, 'Copy'));
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch (_) {
    // No clipboard permission (plain http, an old browser): select the text for Ctrl+C.
    const code = button.previousElementSibling;
    const range = document.createRange();
    range.selectNodeContents(code);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = 'Selected: press Ctrl+C';
  }
}

function problemBox(err, id) {
  const list = (err.problems || []).map((p) => h('li', { 'data-path': p.path }, h('code', {}, p.path), ': ', p.reason));
  return h('div', { class: 'error', role: 'alert', id },
    h('strong', {}, 'Refused (' + err.status + ' ' + err.reason + '): '), err.message,
    list.length ? h('ul', { class: 'problems' }, list) : '');
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
    h('div', { class: 'head' }, h('h1', {}, id), h('span', { id: 'device-status' }),
      may('devices') ? h('span', { class: 'actions', id: 'device-actions' },
        h('button', { type: 'button', class: 'btn danger', id: 'device-revoke', onclick: () => deviceEnd(id, 'revoke') }, 'Revoke…'),
        h('button', { type: 'button', class: 'btn secondary', id: 'device-remove', onclick: () => deviceEnd(id, 'remove') }, 'Remove…')) : null),
    h('div', { id: 'device-result', role: 'status', 'aria-live': 'polite' }),
    h('div', { class: 'panel' }, h('dl', { class: 'facts', id: 'device-facts' }, h('div', {}, h('dt', {}, 'Loading…')))),
    h('h2', {}, 'Telemetry ', h('span', { class: 'windows', role: 'group', 'aria-label': 'Telemetry window' },
      WINDOWS.map(([seconds, label]) => h('button', {
        type: 'button', 'data-telemetry-window': seconds, 'aria-pressed': String(seconds === state.telemetry.window),
        onclick: (e) => {
          state.telemetry.window = seconds;
          for (const b of e.currentTarget.parentNode.children) b.setAttribute('aria-pressed', String(b === e.currentTarget));
          loadTelemetry(id);
        },
      }, label)))),
    h('div', { class: 'toolbar' }, h('label', { for: 'telemetry-property' }, 'Property'),
      h('select', { id: 'telemetry-property', onchange: (e) => { state.telemetry.property = e.target.value; loadTelemetry(id); } })),
    h('div', { class: 'charts', id: 'telemetry' }),
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
  loadTelemetry(id);
  followDevice(id);
}

// Remove (the device is forgotten: DELETE ?twin=) or revoke (its broker credential is removed
// at once: POST .../revoke {twin}); either keeps or deletes the twin, as the operator picks.
function deviceEnd(id, how) {
  const title = how === 'revoke' ? 'Revoke ' + id + '?' : 'Remove ' + id + '?';
  const text = how === 'revoke'
    ? 'The device\'s broker credential is removed at once: its next publish is refused. It has to be registered again to come back.'
    : 'The device is removed from its node and the cloud.';
  confirmThen(title, text, how === 'revoke' ? 'Revoke' : 'Remove', async (twin) => {
    const result = document.getElementById('device-result');
    const path = '/api/v1/devices/' + encodeURIComponent(id);
    try {
      if (how === 'revoke') await api(path + '/revoke', { method: 'POST', json: { twin } });
      else await api(path + query({ twin }), { method: 'DELETE' });
      const text = (how === 'revoke' ? 'Revoked ' + id + ': its credential no longer works.' : 'Removed ' + id + '.')
        + (twin === 'delete' ? ' Its twin is deleted.' : ' Its twin is kept.');
      if (twin === 'delete') {
        // Nothing left to show here: the devices list says what happened.
        if (state.twinFollow) { state.twinFollow.abort(); state.twinFollow = null; }
        state.flash = text;
        location.hash = '#/devices';
        return;
      }
      if (result) result.replaceChildren(h('p', { class: 'notice ok', id: 'device-done' }, text));
      loadDevice(id, false).catch(() => {});
    } catch (err) {
      if (err.status !== 401 && result) result.replaceChildren(problemBox(err, 'device-action-error'));
    }
  }, { legend: 'The device twin', options: [['keep', 'Keep the twin (desired and reported values)'], ['delete', 'Delete the twin']] });
}

// The device page follows its twin by long-poll: the server answers as soon as desired or
// reported moves past what the page shows, or after TWIN_WAIT seconds, and each answer
// re-reads the device (availability and pending changes carry no twin version). A device
// reporting many times a second redraws the page at most once per TWIN_MIN_GAP.
const TWIN_WAIT = 10;
const TELEMETRY_EVERY = 15000;  // ms: the telemetry chart follows the device at most this often
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
          + '&reportedVersion=' + (seen.reported + 1), { signal: follow.signal, full: true });
      } else {
        await pause(2000, follow.signal);  // the first load failed: try again soon
      }
      if (follow.signal.aborted || currentDevice() !== id) return;
      await loadDevice(id, false, twin);
      if (Date.now() - state.telemetry.loadedAt >= TELEMETRY_EVERY) loadTelemetry(id);
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

// `known`: the twin a long-poll just answered with ({ body, etag }), so only the device facts
// are read again.
async function loadDevice(id, resetForm, known = null) {
  const path = '/api/v1/devices/' + encodeURIComponent(id);
  let info; let got;
  try {
    [info, got] = await Promise.all([api(path), known || api(path + '/twin', { full: true })]);
  } catch (err) {
    if (err.status === 401 || currentDevice() !== id) return;
    const view = document.getElementById('device');
    if (view && resetForm) view.append(h('div', { class: 'error', role: 'alert', id: 'device-error' }, err.message));
    return;
  }
  if (currentDevice() !== id || !document.getElementById('device')) return;
  const twin = got.body;
  const avail = info.state === 'removed' || info.state === 'revoked' ? info.state : (info.availability || 'unknown');
  morph(document.getElementById('device-status'), [badge(avail === 'online' ? 'online' : avail === 'unknown' ? 'unknown' : 'offline'),
    h('span', { class: 'count', id: 'device-availability' }, ' ' + avail)]);
  const revoke = document.getElementById('device-revoke');
  if (revoke) revoke.hidden = info.state === 'revoked';  // nothing left to revoke
  const facts = [
    ['Node', h('a', { href: '#/nodes/' + encodeURIComponent(info.node) }, info.node)],
    ['Model', info.model + (info.modelVersion ? ' ' + info.modelVersion : '')],
    ['State', info.state],
    ['Availability', avail + (info.availabilityAt ? ' (' + fmt.ago(isoOf(info.availabilityAt)) + ')' : '')],
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
  telemetryProperties(id, twin.reported);
  if (resetForm || !state.form || state.form.id !== id) {
    state.form = { id, version: twin.desired.$version, etag: got.etag || twinEtag(twin.desired.$version), values: values(twin.desired) };
    document.getElementById('desired-input').value = JSON.stringify(state.form.values, null, 2);
    if (resetForm !== 'keep-result') document.getElementById('desired-result').replaceChildren();
  }
  const base = document.getElementById('desired-base');
  base.textContent = 'Editing desired $version ' + state.form.version + '.';
  if (twin.desired.$version !== state.form.version) {
    base.append(h('strong', { class: 'stale' }, ' Desired has changed since (now $version ' + twin.desired.$version + '): applying will be refused; reload first.'));
  }
  const submit = document.getElementById('desired-submit');
  if (!may('twin')) {
    submit.disabled = true;
    submit.title = 'Your role (' + (state.me ? state.me.role : '?') + ') may read twins, not change them';
  }
}

// The twin's ETag is its desired `$version`, quoted (used when an answer lacks the header).
function twinEtag(version) {
  return '"' + version + '"';
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
    // Applied only while desired is still at the version the form was loaded at (If-Match).
    const got = await api('/api/v1/devices/' + encodeURIComponent(id) + '/twin', {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/merge-patch+json', 'If-Match': form.etag },
      body: JSON.stringify({ desired: patch }),
      full: true,
    });
    const twin = got.body;
    result.replaceChildren(h('p', { class: 'notice ok', id: 'desired-ok' },
      'Applied: desired is now at $version ' + twin.desired.$version + '. The node passes it on to the device.'));
    await loadDevice(id, false);
    state.form = { id, version: twin.desired.$version, etag: got.etag || twinEtag(twin.desired.$version), values: values(twin.desired) };
    document.getElementById('desired-input').value = JSON.stringify(state.form.values, null, 2);
    document.getElementById('desired-base').textContent = 'Editing desired $version ' + state.form.version + '.';
  } catch (err) {
    if (err.status === 412 || (err.status === 409 && err.reason === 'version_conflict')) {
      // Someone changed desired after the form was loaded: nothing was written. Show what is
      // there now; the edit stays in the message so it can be applied again.
      const mine = form.version;
      result.replaceChildren(h('div', { class: 'error conflict', role: 'alert', id: 'desired-conflict' },
        h('strong', {}, 'Changed meanwhile — reloaded. '),
        'Desired was changed by someone else after you opened this form (you edited $version ' + mine
        + '). Nothing was written; the form now holds the current values. Your edit was: ',
        h('code', { id: 'desired-lost' }, JSON.stringify(patch))));
      await loadDevice(id, 'keep-result');
    } else {
      result.replaceChildren(problemBox(err, 'desired-error'));
    }
  } finally {
    button.disabled = !may('twin');
  }
}

// ------------------------------------------------------------------ telemetry

// The numeric reported properties are the chart's choices (the first one by default).
function telemetryProperties(id, reported) {
  const select = document.getElementById('telemetry-property');
  if (!select) return;
  const names = Object.keys(reported || {}).filter((k) => !k.startsWith('$') && typeof reported[k] === 'number').sort();
  const have = [...select.options].map((o) => o.value);
  if (JSON.stringify(have) === JSON.stringify(names)) return;
  if (!names.includes(state.telemetry.property)) state.telemetry.property = names[0] || '';
  select.replaceChildren(...names.map((n) => h('option', { value: n, selected: n === state.telemetry.property }, n)));
  if (!have.length && names.length) loadTelemetry(id);
}

async function loadTelemetry(id) {
  const box = document.getElementById('telemetry');
  const property = state.telemetry.property;
  if (!box) return;
  if (!property) { box.replaceChildren(h('p', { class: 'count', id: 'telemetry-empty' }, 'No numeric property reported yet.')); return; }
  const windowSeconds = state.telemetry.window;
  state.telemetry.loadedAt = Date.now();
  let body;
  try {
    body = await api('/api/v1/devices/' + encodeURIComponent(id) + '/telemetry' + query({ property, windowSeconds }));
  } catch (err) {
    if (err.status !== 401 && currentDevice() === id) box.replaceChildren(h('p', { class: 'count', id: 'telemetry-error' }, 'Telemetry cannot be read: ' + err.message));
    return;
  }
  if (currentDevice() !== id || state.telemetry.property !== property) return;
  const now = Date.now() / 1000;
  const series = telemetrySeries(body, property);
  box.replaceChildren(chart({ key: 'v', id: 'telemetry-chart', title: property, unit: '', max: null },
    series.points, now - windowSeconds, now, series.step));
}

// GET .../telemetry answers the series of one property, oldest first; each point a time and a
// value (downsampled: a mean per step). Read here, in one place, as [{t, v}] in UNIX seconds.
function telemetrySeries(body, property) {
  let points = body.points || body.items || [];
  if (!Array.isArray(points) && typeof points === 'object') points = points[property] || [];
  if (body.series && Array.isArray(body.series)) {
    const one = body.series.find((s) => s.property === property) || body.series[0];
    points = (one && (one.points || one.items)) || [];
  }
  const out = points.map((p) => ({
    t: p.at !== undefined ? Date.parse(p.at) / 1000 : p.t,
    v: p.value !== undefined ? p.value : (p.mean !== undefined ? p.mean : p.avg),
  })).filter((p) => Number.isFinite(p.t) && typeof p.v === 'number');
  const step = Number(body.stepSeconds || body.resolutionSeconds) || null;
  return { points: out, step };
}

async function loadHistory(name) {
  const data = await api('/api/v1/nodes/' + encodeURIComponent(name) + '/history' + query({ windowSeconds: state.window }));
  const box = document.getElementById('charts');
  if (!box || currentNode() !== name) return;
  const now = Math.ceil(Date.now() / 60000) * 60;  // the end of the current minute
  box.replaceChildren(...CHARTS.map((c) => chart(c, historyPoints(data), now - state.window, now)));
}

// The node history's per-minute points, each with `t` (UNIX seconds of the minute).
function historyPoints(data) {
  const points = data.points || data.items || [];
  return points.map((p) => (p.t !== undefined ? p : Object.assign({ t: Date.parse(p.at) / 1000 }, p)));
}

// `step`: seconds each point stands for (a step is drawn that wide; a longer gap breaks the line).
function chart(spec, points, from, to, step = 60) {
  const W = 600; const H = 140;
  step = step || Math.max(1, (to - from) / 300);
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
    const close = () => { if (prev !== null) area += `L${x(prev.t + step).toFixed(1)},${H}L${x(runStart).toFixed(1)},${H}Z`; };
    for (const p of values) {
      const x0 = x(p.t).toFixed(1); const x1 = x(Math.min(p.t + step, to)).toFixed(1); const py = y(p[spec.key]).toFixed(1);
      if (prev === null || p.t - prev.t > 2 * step) {
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
  return h('figure', { class: 'chart', id: spec.id, 'data-series': spec.key, 'data-points': values.length },
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
  { field: 'nodesReady', label: 'Nodes ready' },
  { field: 'podsRunning', label: 'Pods running' },
  { field: 'cpuRequestedCores', label: 'CPU requested' },
  { field: 'memoryRequestedBytes', label: 'Memory requested' },
  { field: 'apiserverHealthy', label: 'API server' },
  { field: 'lastSeenAt', label: 'Last seen' },
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
  const items = await listAll('/api/v1/clusters');
  if (!document.getElementById('cluster-list')) return;
  state.clusters = new Map(items.map((c) => [c.name, c]));
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
  if (c.apiserverHealthy === true) return h('span', { class: 'badge online', 'data-health': 'healthy' }, 'healthy');
  if (c.apiserverHealthy === false) return h('span', { class: 'badge offline', 'data-health': 'unhealthy' }, 'unhealthy');
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
  const unhealthy = rows.filter((c) => c.apiserverHealthy === false).length;
  morph(document.getElementById('cluster-cards'), [h('div', { class: 'cards' },
    card('Clusters', rows.length, ''),
    card('Online', count('online'), 'ok'),
    card('Offline', count('offline'), count('offline') ? 'bad' : ''),
    card('API server unhealthy', unhealthy, unhealthy ? 'bad' : ''),
    card('Nodes ready', sum('nodesReady') + ' / ' + sum('nodesTotal'), ''),
    card('Pods running', sum('podsRunning') + ' / ' + sum('podsTotal'), ''))]);
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
  const warnings = c.warnings || [];
  const worst = warnings.length ? warnings[0] : null;
  const warn = worst ? h('span', { class: 'w-dot ' + worst.severity, title: warnings.map((w) => w.message).join('\n') }, ' ⚠') : '';
  return h('tr', { 'data-cluster': c.name, 'data-status': c.status },
    h('td', { class: 'name', 'data-label': 'Cluster' }, h('a', { href: '#/clusters/' + encodeURIComponent(c.name) }, c.name), warn),
    h('td', { class: 'status', 'data-label': 'Status' }, badge(c.status)),
    h('td', { 'data-label': 'Version' }, c.version || '–'),
    h('td', { class: 'num', 'data-label': 'Nodes ready' }, ratio(c.nodesReady, c.nodesTotal)),
    h('td', { class: 'num', 'data-label': 'Pods running' }, ratio(c.podsRunning, c.podsTotal)),
    h('td', { class: 'num', 'data-label': 'CPU requested' }, usage(c.cpuRequestedCores, c.cpuAllocatableCores, cores, ' cores')),
    h('td', { class: 'num', 'data-label': 'Memory requested' }, usage(c.memoryRequestedBytes, c.memoryAllocatableBytes, fmt.bytes, '')),
    h('td', { 'data-label': 'API server' }, health(c)),
    h('td', { 'data-label': 'Last seen', title: fmt.time(c.lastSeenAt) }, c.connected ? 'now' : fmt.ago(c.lastSeenAt)));
}

async function renderCluster(name) {
  mount(h('section', { id: 'cluster', 'data-cluster': name },
    h('div', { class: 'crumbs' }, h('a', { href: '#/clusters' }, '← Clusters')),
    h('div', { class: 'head' }, h('h1', {}, name), h('span', { id: 'cluster-status' }),
      h('span', { class: 'actions', id: 'cluster-actions' })),
    h('div', { id: 'cluster-result', role: 'status', 'aria-live': 'polite' }),
    h('div', { id: 'cluster-warnings' }),
    h('h2', {}, 'Details'), h('div', { class: 'panel' }, h('dl', { class: 'facts', id: 'cluster-facts' }, h('div', {}, h('dt', {}, 'Loading…')))),
    h('h2', {}, 'Pods by phase'), h('div', { id: 'cluster-pods' }),
    typeof elasticSections === 'function' ? elasticSections() : [],  // elastic.js
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
  morph(status, [badge(d.status), d.offlineReason && d.status === 'offline'
    ? h('span', { class: 'count' }, ' ' + d.offlineReason + ' (' + fmt.ago(d.statusChangedAt) + ')') : '']);
  renderNodeActions(d, 'cluster');
  const latency = d.apiserverLatencyMs === null || d.apiserverLatencyMs === undefined ? '' : ' (' + fmt.num(d.apiserverLatencyMs, 1) + ' ms)';
  const facts = [
    ['Status', d.status + (d.connected ? ' (tunnel up)' : ' (no tunnel)')],
    ['API server', h('span', {}, health(d), latency)],
    ['Kubernetes version', d.version || '–'],
    ['Nodes ready', ratio(d.nodesReady, d.nodesTotal)],
    ['Pods running', ratio(d.podsRunning, d.podsTotal)],
    ['CPU requested', usage(d.cpuRequestedCores, d.cpuAllocatableCores, cores, ' cores')],
    ['Memory requested', usage(d.memoryRequestedBytes, d.memoryAllocatableBytes, fmt.bytes, '')],
    ['Counts sampled', d.sampledAt ? fmt.ago(d.sampledAt) : '–'],
    ['Last report', fmt.ago(d.lastReportAt)],
    ['Agent version', d.agentVersion || '–'],
    ['Certificate expires', d.certExpiresAt ? fmt.time(d.certExpiresAt) + ' (' + fmt.until(d.certExpiresAt) + ')' : '–'],
    ['Reports every', d.reportIntervalSeconds ? d.reportIntervalSeconds + ' s (offline after ' + d.leaseSeconds + ' s silence)' : '–'],
    ['Joined', fmt.time(d.createdAt)],
  ];
  morph(document.getElementById('cluster-facts'), facts.map(([k, v]) =>
    h('div', { 'data-fact': k }, h('dt', {}, k), h('dd', {}, v))));
  morph(document.getElementById('cluster-pods'), [h('div', { class: 'cards' },
    PHASES.map((p) => card(p[0].toUpperCase() + p.slice(1), d['pods' + p[0].toUpperCase() + p.slice(1)] ?? '–', p === 'failed' && d.podsFailed ? 'bad' : '')))]);
  morph(document.getElementById('cluster-warnings'), [(d.warnings || []).length ? h('ul', { class: 'warnings' },
    d.warnings.map((w) => h('li', { class: w.severity, 'data-code': w.code }, w.message))) : '']);
  document.getElementById('cluster-raw').textContent = JSON.stringify(d.metrics || {}, null, 2);
  if (typeof elasticChanged === 'function') elasticChanged(d.name, d.connected);  // elastic.js
}

// ------------------------------------------------------------------ tokens (admin)

const TTLS = [[3600, '1 hour'], [86400, '1 day'], [7 * 86400, '7 days'], [30 * 86400, '30 days']];

function renderTokens() {
  const form = h('form', { id: 'token-form', class: 'panel grid-form' },
    h('h2', {}, 'Create a bootstrap token'),
    h('label', { for: 'token-name' }, 'Name'),
    h('input', { id: 'token-name', required: true, maxlength: 63, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'token-name-hint' }),
    h('span', { class: 'hint', id: 'token-name-hint' }, 'the name the node or cluster joins under'),
    h('label', { for: 'token-kind' }, 'Kind'),
    h('select', { id: 'token-kind' }, h('option', { value: 'node' }, 'node (edge-agent on a machine)'), h('option', { value: 'cluster' }, 'cluster (agent in cluster mode)')),
    h('span', { class: 'hint' }, ''),
    h('label', { for: 'token-ttl' }, 'Valid for'),
    h('select', { id: 'token-ttl' }, TTLS.map(([v, t]) => h('option', { value: v }, t))),
    h('span', { class: 'hint' }, 'unused, it stops working then'),
    h('span', {}),
    h('label', { class: 'choice' }, h('input', { type: 'checkbox', id: 'token-approval' }), ' Require approval: the join waits until an operator approves it'),
    h('span', {}),
    h('button', { type: 'submit', class: 'btn', id: 'token-create' }, 'Create token'),
    h('div', { id: 'token-result', role: 'status', 'aria-live': 'polite' }));
  form.addEventListener('submit', (event) => { event.preventDefault(); createToken(form); });
  const rotate = may('rotate') ? h('div', { class: 'panel', id: 'rotate-panel' },
    h('h2', {}, 'Admin token'),
    h('p', {}, 'Rotating makes a new admin token at once: the old one and every console session made from it stop working '
      + '(this one too, if you signed in with it). The new token is shown once and written to the server\'s data folder.'),
    h('button', { type: 'button', class: 'btn danger', id: 'rotate-admin', onclick: () => confirmThen(
      'Rotate the admin token?', 'The current admin token and its console sessions stop working at once.', 'Rotate', rotateAdminToken) }, 'Rotate the admin token…'),
    h('div', { id: 'rotate-result', role: 'status', 'aria-live': 'polite' })) : null;
  mount(h('section', { id: 'tokens-page' },
    h('h1', {}, 'Bootstrap tokens'),
    h('p', { class: 'count' }, 'A token lets one machine or cluster join once. Its secret is shown only when it is created.'),
    form,
    h('h2', {}, 'Tokens'),
    h('div', { id: 'token-list' }, h('p', { class: 'count' }, 'Loading…')),
    rotate));
  loadTokens();
}

async function createToken(form) {
  const result = form.querySelector('#token-result');
  const button = form.querySelector('#token-create');
  const body = {
    name: form.querySelector('#token-name').value.trim(),
    kind: form.querySelector('#token-kind').value,
    ttlSeconds: Number(form.querySelector('#token-ttl').value),
    requireApproval: form.querySelector('#token-approval').checked,
  };
  button.disabled = true;
  try {
    const created = await api('/api/v1/tokens', { method: 'POST', json: body });
    result.replaceChildren(h('div', { class: 'notice ok secret', id: 'token-created' },
      h('p', {}, 'Token for ' + created.name + ' (' + created.kind + '), valid until ' + fmt.time(created.expiresAt)
        + (created.requireApproval ? ', joins wait for approval' : '') + '. Copy it now: it is shown this once.'),
      secretLine('Token', created.token, 'new-token'),
      created.joinCommand ? secretLine('Join command', created.joinCommand, 'join-command') : null));
    form.querySelector('#token-name').value = '';
    loadTokens();
  } catch (err) {
    if (err.status !== 401) result.replaceChildren(problemBox(err, 'token-error'));
  } finally {
    button.disabled = false;
  }
}

async function loadTokens() {
  const box = document.getElementById('token-list');
  if (!box) return;
  let items;
  try {
    items = await listAll('/api/v1/tokens');
  } catch (err) {
    if (err.status !== 401) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message));
    return;
  }
  if (!document.getElementById('tokens-page')) return;
  if (!items.length) { box.replaceChildren(h('p', { class: 'count', id: 'tokens-empty' }, 'No tokens yet.')); return; }
  box.replaceChildren(h('table', { id: 'tokens' },
    h('thead', {}, h('tr', {}, ['Name', 'Kind', 'Status', 'Approval', 'Created', 'Expires', 'Used', ''].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, items.map((t) => h('tr', { 'data-token': t.id, 'data-name': t.name, 'data-status': t.status },
      h('td', { class: 'name', 'data-label': 'Name' }, t.name),
      h('td', { 'data-label': 'Kind' }, t.kind),
      h('td', { 'data-label': 'Status' }, h('span', { class: 'badge ' + (t.status === 'valid' ? 'online' : ''), 'data-status': t.status }, t.status)),
      h('td', { 'data-label': 'Approval' }, t.requireApproval ? 'required' : '–'),
      h('td', { 'data-label': 'Created', title: fmt.time(t.createdAt) }, fmt.ago(t.createdAt)),
      h('td', { 'data-label': 'Expires', title: fmt.time(t.expiresAt) }, fmt.until(t.expiresAt)),
      h('td', { 'data-label': 'Used', title: fmt.time(t.usedAt) }, t.usedAt ? fmt.ago(t.usedAt) : '–'),
      h('td', { 'data-label': '' }, t.status === 'valid' ? h('button', {
        type: 'button', class: 'btn secondary small', 'aria-label': 'Revoke the token for ' + t.name,
        onclick: () => confirmThen('Revoke the token for ' + t.name + '?', 'A join with it is refused from now on.', 'Revoke', () => revokeToken(t)),
      }, 'Revoke') : ''))))));
}

async function revokeToken(t) {
  try {
    await api('/api/v1/tokens/' + encodeURIComponent(t.id), { method: 'DELETE' });
  } catch (err) {
    const box = document.getElementById('token-list');
    if (err.status !== 401 && box) box.prepend(problemBox(err, 'token-revoke-error'));
    return;
  }
  loadTokens();
}

// POST /api/v1/admin-token/rotate answers the new token. The sessions made from the old one
// end at once: when this console's was one of them, it is back at sign-in, the new token shown.
async function rotateAdminToken() {
  const result = document.getElementById('rotate-result');
  const s = session();
  stopStream();  // its end ('revoked') must not take the page away before the token is shown
  let created;
  try {
    created = await api('/api/v1/admin-token/rotate', { method: 'POST', json: {} }, s && s.token);
  } catch (err) {
    if (result && err.status !== 401) result.replaceChildren(problemBox(err, 'rotate-error'));
    startStream();
    return;
  }
  const shown = h('div', { class: 'notice ok secret', id: 'rotated' },
    h('p', {}, 'The admin token was rotated. The new admin token, shown this once (also in the server\'s data folder, file admin-token):'),
    secretLine('Admin token', created.token, 'new-admin-token'));
  let alive = true;
  try { await api('/api/v1/me', {}, s && s.token); } catch (err) { alive = err.status !== 401; }
  if (!alive) {
    sessionStorage.removeItem(SESSION_KEY);
    signOut('The admin token was rotated: this console\'s session was made from the old one and has ended. '
      + 'Sign in again with the new admin token.', shown);
    return;
  }
  if (result) result.replaceChildren(shown);
  startStream();
}

// ------------------------------------------------------------------ users (admin)

const USER_ROLES = [['viewer', 'viewer (read only)'], ['operator', 'operator (read and write)'], ['admin', 'admin (everything, every cluster)']];
const USER_TTLS = [[7776000, '90 days'], [30 * 86400, '30 days'], [7 * 86400, '7 days'], [86400, '1 day']];

function renderUsers() {
  const form = h('form', { id: 'user-form', class: 'panel grid-form' },
    h('h2', {}, 'Create a user'),
    h('label', { for: 'user-name' }, 'Name'),
    h('input', { id: 'user-name', required: true, maxlength: 63, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'user-name-hint' }),
    h('span', { class: 'hint', id: 'user-name-hint' }, 'who signs in with the token, e.g. alice'),
    h('label', { for: 'user-role' }, 'Role'),
    h('select', { id: 'user-role' }, USER_ROLES.map(([v, t]) => h('option', { value: v }, t))),
    h('span', { class: 'hint' }, ''),
    h('label', { for: 'user-clusters' }, 'Clusters'),
    h('input', { id: 'user-clusters', maxlength: 4096, autocomplete: 'off', spellcheck: 'false', 'aria-describedby': 'user-clusters-hint' }),
    h('span', { class: 'hint', id: 'user-clusters-hint' }, 'names separated by commas; empty: every cluster (an admin has no scope)'),
    h('label', { for: 'user-ttl' }, 'Valid for'),
    h('select', { id: 'user-ttl' }, USER_TTLS.map(([v, t]) => h('option', { value: v }, t))),
    h('span', { class: 'hint' }, 'the user and its tokens stop working then'),
    h('span', {}),
    h('button', { type: 'submit', class: 'btn', id: 'user-create' }, 'Create user'),
    h('div', { id: 'user-result', role: 'status', 'aria-live': 'polite' }));
  form.addEventListener('submit', (event) => { event.preventDefault(); createUser(form); });
  mount(h('section', { id: 'users-page' },
    h('h1', {}, 'Users'),
    h('p', { class: 'count' }, 'A user signs in to the console and the API with its token. The token is shown only when the user is created.'),
    form,
    h('h2', {}, 'Users'),
    h('div', { id: 'user-list' }, h('p', { class: 'count' }, 'Loading…'))));
  loadUsers();
}

async function createUser(form) {
  const result = form.querySelector('#user-result');
  const button = form.querySelector('#user-create');
  const clusters = form.querySelector('#user-clusters').value.split(',').map((c) => c.trim()).filter(Boolean);
  const body = {
    name: form.querySelector('#user-name').value.trim(),
    role: form.querySelector('#user-role').value,
    ttlSeconds: Number(form.querySelector('#user-ttl').value),
  };
  if (clusters.length) body.clusters = clusters;  // omitted: every cluster
  button.disabled = true;
  try {
    const created = await api('/api/v1/users', { method: 'POST', json: body });
    result.replaceChildren(h('div', { class: 'notice ok secret', id: 'user-created' },
      h('p', {}, 'User ' + created.name + ' (' + created.role + '), valid until ' + fmt.time(created.expiresAt)
        + '. Copy the token now: it is shown this once.'),
      secretLine('Token', created.token, 'new-user-token')));
    form.querySelector('#user-name').value = '';
    form.querySelector('#user-clusters').value = '';
    loadUsers();
  } catch (err) {
    if (err.status !== 401) result.replaceChildren(problemBox(err, 'user-error'));
  } finally {
    button.disabled = false;
  }
}

async function loadUsers() {
  const box = document.getElementById('user-list');
  if (!box) return;
  let items;
  try {
    items = await listAll('/api/v1/users');
  } catch (err) {
    if (err.status !== 401) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message));
    return;
  }
  if (!document.getElementById('users-page')) return;
  if (!items.length) { box.replaceChildren(h('p', { class: 'count', id: 'users-empty' }, 'No users yet.')); return; }
  box.replaceChildren(h('table', { id: 'users' },
    h('thead', {}, h('tr', {}, ['Name', 'Role', 'Clusters', 'State', 'Created', 'Expires', 'Tokens', ''].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, items.map((u) => h('tr', { 'data-name': u.name, 'data-state': u.state },
      h('td', { class: 'name', 'data-label': 'Name' }, u.name),
      h('td', { 'data-label': 'Role' }, u.role),
      h('td', { 'data-label': 'Clusters' }, Array.isArray(u.clusters) ? (u.clusters.join(', ') || 'none') : 'all'),
      h('td', { 'data-label': 'State' }, h('span', { class: 'badge ' + (u.state === 'active' ? 'online' : ''), 'data-state': u.state }, u.state)),
      h('td', { 'data-label': 'Created', title: fmt.time(u.createdAt) }, fmt.ago(u.createdAt)),
      h('td', { 'data-label': 'Expires', title: fmt.time(u.expiresAt) }, u.revokedAt ? 'revoked ' + fmt.ago(u.revokedAt) : fmt.until(u.expiresAt)),
      h('td', { 'data-label': 'Tokens', class: 'num' }, String(u.tokenCount)),
      h('td', { 'data-label': '' }, u.state === 'active' ? h('button', {
        type: 'button', class: 'btn secondary small', 'aria-label': 'Revoke the user ' + u.name,
        onclick: () => confirmThen('Revoke the user ' + u.name + '?',
          'Every token and console session of ' + u.name + ' is refused from now on.', 'Revoke', () => revokeUser(u)),
      }, 'Revoke') : ''))))));
}

async function revokeUser(u) {
  try {
    await api('/api/v1/users/' + encodeURIComponent(u.name), { method: 'DELETE' });
  } catch (err) {
    const box = document.getElementById('user-list');
    if (err.status !== 401 && box) box.prepend(problemBox(err, 'user-revoke-error'));
    return;
  }
  loadUsers();
}

// ------------------------------------------------------------------ device models

const MODEL_EXAMPLE = 'apiVersion: edgefleet.io/v1\nkind: DeviceModel\nname: pump\nversion: "1.0.0"\n'
  + 'description: Water pump.\nproperties:\n  - name: flow\n    type: float\n    unit: l/min\n    kind: telemetry\n';

function currentModel() {
  const m = location.hash.match(/^#\/models\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function renderModelList() {
  mount(h('section', { id: 'models-page' },
    h('h1', {}, 'Device models'),
    h('p', { class: 'count' }, 'What each kind of device reports and what the cloud may set on it (docs/device-models.md).'),
    h('div', { id: 'model-list' }, h('p', { class: 'count' }, 'Loading…')),
    may('modelUpload') ? uploadForm() : null));
  loadModels();
}

async function loadModels() {
  const box = document.getElementById('model-list');
  if (!box) return;
  let items;
  try {
    items = await listAll('/api/v1/device-models');
  } catch (err) {
    if (err.status !== 401) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message));
    return;
  }
  if (!document.getElementById('models-page')) return;
  if (!items.length) { box.replaceChildren(h('p', { class: 'count', id: 'models-empty' }, 'No device models.')); return; }
  box.replaceChildren(h('table', { id: 'models' },
    h('thead', {}, h('tr', {}, ['Name', 'Version', 'Source', 'Properties', 'Description', 'Uploaded'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, items.map((m) => h('tr', { 'data-name': m.name, 'data-version': m.version, 'data-source': m.source },
      h('td', { class: 'name', 'data-label': 'Name' }, h('a', { href: '#/models/' + encodeURIComponent(m.name) }, m.name)),
      h('td', { 'data-label': 'Version' }, m.version),
      h('td', { 'data-label': 'Source' }, m.source),
      h('td', { 'data-label': 'Properties', class: 'num' }, String(m.propertyCount)),
      h('td', { 'data-label': 'Description' }, m.description || '–'),
      h('td', { 'data-label': 'Uploaded', title: m.createdAt ? fmt.time(m.createdAt) : null },
        m.createdAt ? fmt.ago(m.createdAt) + (m.createdBy ? ' by ' + m.createdBy : '') : '–'))))));
}

function uploadForm() {
  const result = h('div', { id: 'model-result', role: 'status', 'aria-live': 'polite' });
  const form = h('form', { id: 'model-form', class: 'panel' },
    h('h2', {}, 'Upload a model or a new version'),
    h('label', { for: 'model-yaml' }, 'Model (YAML)'),
    h('textarea', { id: 'model-yaml', required: true, rows: 14, maxlength: 65536, spellcheck: 'false', class: 'code', 'aria-describedby': 'model-yaml-hint' }, MODEL_EXAMPLE),
    h('p', { class: 'hint', id: 'model-yaml-hint' }, 'A new name, or a known name with a higher version. At most 64 KiB.'),
    h('button', { type: 'submit', class: 'btn', id: 'model-upload' }, 'Upload'), result);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('#model-upload');
    button.disabled = true;
    try {
      const created = await api('/api/v1/device-models', {
        method: 'POST', headers: { 'Content-Type': 'application/yaml' }, body: form.querySelector('#model-yaml').value,
      });
      result.replaceChildren(h('div', { class: 'notice ok', id: 'model-uploaded' },
        'Uploaded ', h('a', { href: '#/models/' + encodeURIComponent(created.name) }, created.name), ' version ' + created.version + '.'));
      loadModels();
    } catch (err) {
      if (err.status !== 401) result.replaceChildren(problemBox(err, 'model-error'));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

async function renderModel(name) {
  mount(h('section', { id: 'model-page' },
    h('p', {}, h('a', { href: '#/models' }, '← Device models')),
    h('h1', {}, name),
    h('div', { id: 'model-detail' }, h('p', { class: 'count' }, 'Loading…'))));
  let m;
  try {
    m = await api('/api/v1/device-models/' + encodeURIComponent(name));
  } catch (err) {
    const box = document.getElementById('model-detail');
    if (err.status !== 401 && box && currentModel() === name) box.replaceChildren(h('div', { class: 'error', role: 'alert', id: 'model-missing' }, err.message));
    return;
  }
  const box = document.getElementById('model-detail');
  if (!box || currentModel() !== name) return;
  const doc = m.model || {};
  box.replaceChildren(
    h('dl', { class: 'facts' },
      [['Version', m.version], ['Source', m.source], ['Description', m.description || '–'],
        ['Uploaded', m.createdAt ? fmt.time(m.createdAt) + (m.createdBy ? ' by ' + m.createdBy : '') : '–']]
        .map(([k, v]) => h('div', { 'data-fact': k }, h('dt', {}, k), h('dd', {}, v)))),
    h('h2', {}, 'Properties'),
    h('table', { id: 'model-properties' },
      h('thead', {}, h('tr', {}, ['Property', 'Type', 'Access', 'Kind', 'Unit', 'Range or values', 'Description'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, modelRows(doc.properties || [], ''))));
}

// The model document's properties, nested ones dotted (schedule.comfort), one row each.
function modelRows(properties, prefix) {
  return properties.flatMap((p) => {
    const path = prefix + p.name;
    const range = p.type === 'enum' ? (p.values || []).join(', ')
      : p.type === 'string' && p.maxLength ? 'at most ' + p.maxLength + ' characters'
        : (p.min !== undefined && p.min !== null) || (p.max !== undefined && p.max !== null)
          ? (p.min ?? '…') + ' to ' + (p.max ?? '…') : '–';
    const row = h('tr', { 'data-property': path },
      h('td', { class: 'name', 'data-label': 'Property' }, path),
      h('td', { 'data-label': 'Type' }, p.type),
      h('td', { 'data-label': 'Access' }, p.access || 'read-only'),
      h('td', { 'data-label': 'Kind' }, p.kind || 'state'),
      h('td', { 'data-label': 'Unit' }, p.unit || '–'),
      h('td', { 'data-label': 'Range or values' }, range),
      h('td', { 'data-label': 'Description' }, p.description || '–'));
    return [row, ...(Array.isArray(p.properties) ? modelRows(p.properties, path + '.') : [])];
  });
}

// ------------------------------------------------------------------ audit (admin)

const AUDIT_FILTERS = [['user', 'User'], ['action', 'Action'], ['target', 'Target'], ['result', 'Result']];

function renderAudit() {
  const form = h('form', { id: 'audit-filters', class: 'toolbar', role: 'search' },
    AUDIT_FILTERS.map(([key, label]) => h('input', { id: 'audit-' + key, name: key, type: 'search', placeholder: label, 'aria-label': 'Filter by ' + label.toLowerCase() })),
    h('button', { type: 'submit', class: 'btn secondary', id: 'audit-apply' }, 'Filter'));
  form.addEventListener('submit', (e) => { e.preventDefault(); loadAudit(true); });
  mount(h('section', { id: 'audit-page' },
    h('h1', {}, 'Audit log'),
    h('p', { class: 'count' }, 'Every write through the API, newest first: who, with which role, what, on what, and the answer. '
      + 'Filters match exactly; Result takes a status (403), a class (4xx) or a reason (forbidden).'),
    form,
    h('div', { id: 'audit-error' }),
    h('table', { id: 'audit' }, h('thead', {}, h('tr', {}, ['Time', 'User', 'Role', 'Action', 'Target', 'Result', 'Request']
      .map((t) => h('th', { scope: 'col' }, t)))), h('tbody', {})),
    h('div', { class: 'pager' }, h('button', { type: 'button', class: 'btn secondary', id: 'audit-more', hidden: true, onclick: () => loadAudit(false) }, 'Older entries'))));
  loadAudit(true);
}

async function loadAudit(fresh) {
  const table = document.getElementById('audit');
  if (!table) return;
  const params = { limit: 100 };
  for (const [key] of AUDIT_FILTERS) params[key] = document.getElementById('audit-' + key).value.trim();
  if (fresh) state.audit = { next: null, params };
  let got;
  try {
    got = await listPage('/api/v1/audit', state.audit.params, fresh ? null : state.audit.next);
  } catch (err) {
    const box = document.getElementById('audit-error');
    if (err.status !== 401 && box) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message));
    return;
  }
  document.getElementById('audit-error').replaceChildren();
  state.audit.next = got.next;
  const body = table.querySelector('tbody');
  const rows = got.items.map(auditRow);
  if (fresh) body.replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { class: 'empty', colspan: 7 }, 'No entries.'))]));
  else body.append(...rows);
  document.getElementById('audit-more').hidden = !got.next;
}

// One audit entry: { id, at, user, role, method, route, action, target, status, reason, requestId, peer }.
function auditRow(e) {
  const ok = typeof e.status === 'number' && e.status < 400;
  return h('tr', { 'data-action': e.action, 'data-status': e.status },
    h('td', { 'data-label': 'Time', title: fmt.time(e.at) }, fmt.time(e.at)),
    h('td', { 'data-label': 'User' }, e.user || '–'),
    h('td', { 'data-label': 'Role' }, e.role || '–'),
    h('td', { 'data-label': 'Action', title: (e.method || '') + ' ' + (e.route || '') }, e.action || '–'),
    h('td', { 'data-label': 'Target' }, e.target || '–'),
    h('td', { 'data-label': 'Result' }, h('span', { class: 'badge ' + (ok ? 'online' : 'offline') }, String(e.status ?? '–')),
      e.reason ? ' ' + e.reason : ''),
    h('td', { 'data-label': 'Request' }, h('code', {}, e.requestId || '–')));
}

// ------------------------------------------------------------------ routing

function mount(el) {
  document.getElementById('view').replaceChildren(el);
}

let detailPending = false;
let detailAgain = false; // a change came while a fetch was pending: fetch once more after it
let eventsAgain = false;
let detailSeq = 0;

// The node's full detail; only the answer to the latest request is drawn, so an older
// answer that arrives late (another connection) never overwrites a newer one.
function fetchDetail(name) {
  const seq = ++detailSeq;
  return api('/api/v1/nodes/' + encodeURIComponent(name))
    .then((d) => { if (seq === detailSeq && currentNode() === name) renderDetail(d); })
    .catch(() => {});
}

// `moved`: a node joined or changed status or state, so the node table's page may change.
function refresh(changed, moved) {
  if (document.getElementById('node-list')) {
    renderOverview();
    renderRows();
    if (moved) reloadPageSoon();
    return;
  }
  const name = currentNode();
  if (!name || !changed.has(name) || !document.getElementById('node-status')) return;
  if (detailPending) {
    // Deferred, not dropped: a revoke right after a status report must still be drawn.
    detailAgain = true;
    eventsAgain = eventsAgain || moved;
    return;
  }
  // The node changed: fetch its full detail (all metrics), at most once per second.
  detailPending = true;
  fetchDetail(name).finally(() => setTimeout(() => {
    detailPending = false;
    if (detailAgain) {
      const events = eventsAgain;
      detailAgain = eventsAgain = false;
      refresh(new Set([name]), events);
    }
  }, 1000));
  if (moved) loadNodeEvents(name);
}

// Who this session is (GET /api/v1/me), read once per session: the role decides which pages
// and buttons the console offers.
async function whoAmI() {
  const s = session();
  if (state.me && state.me.token === s.token) return true;
  try {
    const me = await api('/api/v1/me');
    state.me = Object.assign({}, me, { token: s.token });
  } catch (err) {
    if (err.status === 401) return false;
    state.me = { role: 'viewer', user: '?', token: s.token };  // unknown: offer reading only
  }
  for (const link of document.querySelectorAll('#nav [data-may]')) link.hidden = !may(link.dataset.may);
  const who = document.getElementById('whoami');
  who.textContent = (state.me.user || '?') + ' (' + (state.me.role || '?') + ')';
  return true;
}

async function route() {
  takeSessionFromFragment();
  if (!session()) { renderSignIn(''); return; }
  if (!(await whoAmI()) || !session()) return;
  document.getElementById('nav').hidden = false;
  startStream();
  const name = currentNode();
  const device = currentDevice();
  const cluster = currentCluster();
  const hash = location.hash;
  if (state.twinFollow && !device) { state.twinFollow.abort(); state.twinFollow = null; }
  if (name) renderNode(name);
  else if (device) renderDevice(device);
  else if (hash === '#/devices') renderDeviceList();
  else if (cluster) renderCluster(cluster);
  else if (hash === '#/clusters') renderClusterList();
  else if (hash === '#/tokens' && may('tokens')) renderTokens();
  else if (hash === '#/audit' && may('audit')) renderAudit();
  else if (hash === '#/users' && may('users')) renderUsers();
  else if (hash === '#/models') renderModelList();
  else if (currentModel()) renderModel(currentModel());
  else if (currentFleet()) renderFleet();  // fleet.js
  else if (['#/tokens', '#/audit', '#/users'].includes(hash)) {
    mount(h('section', {}, h('div', { class: 'error', role: 'alert', id: 'not-allowed' },
      'Your role (' + state.me.role + ') may not open this page: it needs an admin.')));
  } else renderNodeList();
  followClusters(Boolean(cluster) || hash === '#/clusters');
  followFleet(Boolean(currentFleet()));
  document.getElementById('view').focus({ preventScroll: true });
}

takeSessionFromFragment();  // at once, before anything else sees the address
window.addEventListener('hashchange', route);
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('signout').addEventListener('click', () => { signOutEverywhere(); });
  route();
});
// Re-draw relative times ("12 s ago") without waiting for a change; a table sorted by a
// value that moves (CPU, ...) is loaded again.
setInterval(() => {
  if (document.getElementById('node-list')) {
    renderRows();
    if (!['name', 'status'].includes(state.sort.field)) reloadPageSoon();
  }
  if (document.getElementById('cluster-list')) renderClusterRows();
}, 10000);
