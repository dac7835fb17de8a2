'use strict';
// The console's Fleet section (issues 14, 16): ManagedClusters, Placements, WorkSets and the
// gateway's MultiClusterRoutes (with each backend's health and recent figures) as the hub
// keeps them (GET /api/v1/fleet/{plural}[/{name}]). Loaded after app.js, whose helpers (h,
// morph, api, listAll, mount, card, fmt) it uses. Live: an open page follows the kind's watch
// (SSE, ?watch=true from the list's resourceVersion) and fetches again on each event, at most
// once per FLEET_GAP; a slow poll covers a watch that cannot be held (410, a proxy cutting it).

const FLEET_GAP = 500;  // ms: live updates fetch at most twice a second
const FLEET_POLL = 5000;  // ms: the fallback poll while a fleet page is open
const FLEET_TABS = [
  ['managedclusters', 'Clusters'],
  ['placements', 'Placements'],
  ['worksets', 'WorkSets'],
  ['multiclusterroutes', 'Routes'],
];
const fleet = {
  poll: null,  // timer of the fallback poll
  watches: new Map(),  // plural -> AbortController of its open watch
  pending: false,  // a fetch is on its way
  again: false,  // something changed meanwhile: fetch once more afterwards
};

// #/fleet, #/fleet/placements, #/fleet/placements/web -> { plural, name }
function currentFleet() {
  const m = location.hash.match(/^#\/fleet(?:\/([a-z]+))?(?:\/(.+))?$/);
  if (!m) return null;
  const plural = FLEET_TABS.some(([p]) => p === m[1]) ? m[1] : 'managedclusters';
  return { plural, name: m[2] ? decodeURIComponent(m[2]) : null };
}

function fleetHref(plural, name) {
  return '#/fleet/' + plural + (name ? '/' + encodeURIComponent(name) : '');
}

// ------------------------------------------------------------------ small pieces

function fMeta(o) { return (o && o.metadata) || {}; }
function fSpec(o) { return (o && o.spec) || {}; }
function fStat(o) { return (o && o.status) || {}; }
function fList(v) { return Array.isArray(v) ? v : []; }

function conditionOf(o, type) {
  return fList(fStat(o).conditions).find((c) => c && c.type === type) || null;
}

// A condition's status as a badge; `good`: the status that is healthy (True for Available,
// False for Degraded).
function condBadge(o, type, good = 'True') {
  const c = conditionOf(o, type);
  const status = c ? String(c.status) : '–';
  const cls = !c ? '' : status === good ? 'online' : status === 'Unknown' ? 'pending' : 'offline';
  return h('span', { class: 'badge ' + cls, 'data-condition': type, 'data-value': status,
    title: c ? [c.reason, c.message].filter(Boolean).join(': ') : 'not reported' }, status);
}

function flagBadge(value, yes, no) {
  return h('span', { class: 'badge ' + (value ? 'online' : 'pending'), 'data-value': String(Boolean(value)) }, value ? yes : no);
}

function labelChips(labels) {
  const entries = Object.entries(labels || {});
  if (!entries.length) return h('span', { class: 'muted' }, '–');
  return h('span', { class: 'chips' }, entries.sort().map(([k, v]) => h('span', { class: 'chip', 'data-label-key': k }, k + '=' + v)));
}

function taintChips(taints) {
  if (!fList(taints).length) return h('span', { class: 'muted' }, '–');
  return h('span', { class: 'chips' }, fList(taints).map((t) => h('span', { class: 'chip bad', 'data-taint': t.key,
    title: 'added ' + fmt.time(t.timeAdded) }, t.key + (t.value ? '=' + t.value : '') + ':' + t.effect)));
}

function fFacts(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => h('div', { 'data-fact': k }, h('dt', {}, k), h('dd', {}, v))));
}

function simpleTable(id, headers, rows, empty) {
  const head = h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)));
  const body = rows.length ? rows : [h('tr', {}, h('td', { class: 'empty', colspan: headers.length }, empty))];
  return h('table', { id }, h('thead', {}, head), h('tbody', {}, body));
}

function fTd(label, ...children) {
  return h('td', { 'data-label': label }, ...children);
}

function conditionsTable(id, o) {
  return simpleTable(id, ['Type', 'Status', 'Reason', 'Message', 'Since'],
    fList(fStat(o).conditions).map((c) => h('tr', { 'data-condition': c.type },
      fTd('Type', c.type), fTd('Status', condBadge(o, c.type, c.type === 'Degraded' || c.type === 'RolloutHalted' || c.type === 'PlacementMisconfigured' ? 'False' : 'True')),
      fTd('Reason', c.reason || '–'), h('td', { 'data-label': 'Message', class: 'wrap' }, c.message || '–'),
      fTd('Since', h('span', { title: fmt.time(c.lastTransitionTime) }, fmt.ago(c.lastTransitionTime))))),
    'No conditions reported yet.');
}

function progressBar(done, total) {
  if (!total) return h('span', { class: 'muted' }, '–');
  const share = Math.max(0, Math.min(100, (100 * done) / total));
  const bar = h('svg', { viewBox: '0 0 100 10', preserveAspectRatio: 'none', 'aria-hidden': 'true' },
    h('rect', { x: 0, y: 0, width: share, height: 10, fill: '#1a7f37' }));
  return h('span', { class: 'progress', 'data-done': done, 'data-total': total, title: Math.round(share) + '%' },
    h('span', { class: 'meter' }, bar), done + ' / ' + total);
}

// ------------------------------------------------------------------ the section

function renderFleet() {
  const where = currentFleet();
  const tabs = h('nav', { class: 'tabs', id: 'fleet-tabs' }, FLEET_TABS.map(([plural, label]) =>
    h('a', { href: fleetHref(plural), 'data-tab': plural, 'aria-current': plural === where.plural ? 'page' : null }, label)));
  mount(h('section', { id: 'fleet', 'data-kind': where.plural, 'data-name': where.name || '' },
    h('h1', {}, 'Fleet'), tabs,
    h('div', { id: 'fleet-error' }),
    h('div', { id: 'fleet-body' }, h('p', { class: 'muted' }, 'Loading…'))));
  fleetChanged();
}

function followFleet(on) {
  clearInterval(fleet.poll);
  fleet.poll = on ? setInterval(fleetChanged, FLEET_POLL) : null;
  if (!on) stopFleetWatch();
}

function fleetChanged() {
  if (!document.getElementById('fleet')) return;
  if (fleet.pending) { fleet.again = true; return; }
  fleet.pending = true;
  loadFleet().then(() => {
    const box = document.getElementById('fleet-error');
    if (box) box.replaceChildren();
  }).catch((err) => {
    const box = document.getElementById('fleet-error');
    if (err.status !== 401 && box) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, err.message));
  }).finally(() => setTimeout(() => {
    fleet.pending = false;
    if (fleet.again) { fleet.again = false; fleetChanged(); }
  }, FLEET_GAP));
}

async function loadFleet() {
  const where = currentFleet();
  if (!where) return;
  const base = '/api/v1/fleet/' + where.plural;
  let view;
  if (where.name) {
    const doc = await api(base + '/' + encodeURIComponent(where.name));
    const extra = where.plural === 'worksets' ? await worksetWorks(where.name) : null;
    view = FLEET_DETAIL[where.plural](doc, extra);
  } else {
    view = FLEET_LIST[where.plural](await listAll(base));
  }
  const now = currentFleet();
  const body = document.getElementById('fleet-body');
  if (!body || !now || now.plural !== where.plural || now.name !== where.name) return;
  morph(body, [view]);
  followFleetKinds(where.plural === 'worksets' && where.name ? ['worksets', 'works'] : [where.plural]);
}

async function worksetWorks(name) {
  try {
    return await listAll('/api/v1/fleet/works', { labelSelector: 'fleet.edgefleet.io/workset=' + name });
  } catch (err) {
    if (err.status === 403) return [];
    throw err;
  }
}

// ------------------------------------------------------------------ the watch

// One watch per kind the open page draws from (a workset's page: worksets and works). Each
// starts from the store's revision of the moment (a list of one item tells it), so it only
// says what changes from now on; any event makes the page read its objects again.
function followFleetKinds(plurals) {
  for (const [plural, controller] of fleet.watches) {
    if (!plurals.includes(plural)) { controller.abort(); fleet.watches.delete(plural); }
  }
  for (const plural of plurals) if (!fleet.watches.has(plural)) startFleetWatch(plural);
}

function stopFleetWatch() {
  followFleetKinds([]);
}

function startFleetWatch(plural) {
  const controller = new AbortController();
  fleet.watches.set(plural, controller);
  readFleetWatch(controller, plural).catch(() => {}).finally(() => {
    // Ended (its timeout, a 410, the server going away): the next load starts it again.
    if (fleet.watches.get(plural) === controller) fleet.watches.delete(plural);
  });
}

async function readFleetWatch(controller, plural) {
  const first = await api('/api/v1/fleet/' + plural + query({ limit: 1 }));
  const revision = first && first.metadata && first.metadata.resourceVersion;
  const s = session();
  if (!revision || !s || controller.signal.aborted) return;
  const answer = await fetch('/api/v1/fleet/' + plural + query({ watch: 'true', resourceVersion: revision, timeoutSeconds: 290 }), {
    headers: { Authorization: 'Bearer ' + s.token, Accept: 'text/event-stream' },
    credentials: 'omit', cache: 'no-store', signal: controller.signal,
  });
  if (!answer.ok || !answer.body) return;
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    const cut = buffer.lastIndexOf('\n\n');
    if (cut >= 0) {
      // An event has data; `retry:` and comments (keep-alives) are no change.
      if (/(^|\n)data:/.test(buffer.slice(0, cut))) fleetChanged();
      buffer = buffer.slice(cut + 2);
    }
    if (buffer.length > 4 * 1024 * 1024) return;  // one event is far smaller: not a watch
  }
}

// ------------------------------------------------------------------ ManagedClusters

function clusterClaims(o) {
  return Object.fromEntries(fList(fStat(o).clusterClaims).map((c) => [c.name, c.value]));
}

function managedClusterList(items) {
  const accepted = items.filter((c) => fSpec(c).hubAcceptsClient === true).length;
  const available = items.filter((c) => (conditionOf(c, 'Available') || {}).status === 'True').length;
  const tainted = items.filter((c) => fList(fSpec(c).taints).length).length;
  return h('div', { id: 'fleet-clusters' },
    h('div', { class: 'cards' },
      card('Clusters', items.length, ''),
      card('Accepted', accepted, ''),
      card('Available', available, 'ok'),
      card('Tainted', tainted, tainted ? 'bad' : '')),
    h('h2', {}, 'Managed clusters'),
    simpleTable('managedclusters', ['Cluster', 'Accepted', 'Joined', 'Available', 'Labels', 'Taints', 'Kubernetes', 'Claims'],
      items.map((c) => {
        const claims = clusterClaims(c);
        return h('tr', { 'data-fleet-name': fMeta(c).name },
          h('td', { class: 'name', 'data-label': 'Cluster' }, h('a', { href: fleetHref('managedclusters', fMeta(c).name) }, fMeta(c).name)),
          fTd('Accepted', flagBadge(fSpec(c).hubAcceptsClient === true, 'accepted', 'not accepted')),
          fTd('Joined', condBadge(c, 'ManagedClusterJoined')),
          fTd('Available', condBadge(c, 'Available')),
          fTd('Labels', labelChips(fMeta(c).labels)),
          fTd('Taints', taintChips(fSpec(c).taints)),
          fTd('Kubernetes', (fStat(c).version || {}).kubernetes || claims['kubernetes.version'] || '–'),
          fTd('Claims', Object.keys(claims).length ? Object.entries(claims).map(([k, v]) => k + '=' + v).join(', ') : '–'));
      }),
      'No managed clusters yet: a cluster appears here when its agent joins (docs/clusters.md); accept it with `tunnel-server clusters accept NAME`.'));
}

function managedClusterDetail(c) {
  const lease = fStat(c).lease || {};
  const claims = fList(fStat(c).clusterClaims);
  const resources = (section) => Object.entries(fStat(c)[section] || {}).map(([k, v]) => k + ' ' + v).join(', ') || '–';
  return h('div', { id: 'fleet-cluster', 'data-fleet-name': fMeta(c).name },
    h('div', { class: 'crumbs' }, h('a', { href: fleetHref('managedclusters') }, '← Managed clusters')),
    h('div', { class: 'head' }, h('h2', {}, fMeta(c).name), flagBadge(fSpec(c).hubAcceptsClient === true, 'accepted', 'not accepted'), ' ', condBadge(c, 'Available'),
      acceptButton(c)),
    h('div', { id: 'fleet-result', role: 'status', 'aria-live': 'polite' }),
    h('div', { class: 'panel' }, fFacts([
      ['Accepted', fSpec(c).hubAcceptsClient === true ? 'yes (hubAcceptsClient)' : 'no: `tunnel-server clusters accept ' + fMeta(c).name + '`'],
      ['Labels', labelChips(fMeta(c).labels)],
      ['Taints', taintChips(fSpec(c).taints)],
      ['Kubernetes', (fStat(c).version || {}).kubernetes || '–'],
      ['Allocatable', resources('allocatable')],
      ['Capacity', resources('capacity')],
      ['Lease', lease.renewTime ? 'renewed ' + fmt.ago(lease.renewTime) + ' (every ' + (lease.durationSeconds || fSpec(c).leaseDurationSeconds || '?') + ' s)' : 'never renewed'],
    ])),
    h('h3', {}, 'Conditions'), conditionsTable('cluster-conditions', c),
    h('h3', {}, 'Taints'),
    simpleTable('cluster-taints', ['Key', 'Value', 'Effect', 'Added'], fList(fSpec(c).taints).map((t) => h('tr', { 'data-taint': t.key },
      fTd('Key', t.key), fTd('Value', t.value || '–'), fTd('Effect', t.effect), fTd('Added', h('span', { title: fmt.time(t.timeAdded) }, fmt.ago(t.timeAdded))))),
    'No taints.'),
    h('h3', {}, 'Claims'),
    simpleTable('cluster-claims', ['Name', 'Value'], claims.map((k) => h('tr', { 'data-claim': k.name }, fTd('Name', k.name), fTd('Value', k.value))),
      'No claims reported yet.'));
}

// The double opt-in, as `tunnel-server clusters accept|deny NAME` (admins only): a merge patch
// of spec.hubAcceptsClient; the hub approves the registration or cuts the cluster off.
function acceptButton(c) {
  if (!(state.me && state.me.role === 'admin')) return null;
  const name = fMeta(c).name;
  const accepted = fSpec(c).hubAcceptsClient === true;
  return h('span', { class: 'actions' }, accepted
    ? h('button', { type: 'button', class: 'btn danger', id: 'fleet-deny', onclick: () => confirmThen('Deny ' + name + '?',
      'The hub cuts the cluster off at once and stops pushing it works (hubAcceptsClient=false).', 'Deny',
      () => setAccepted(name, false)) }, 'Deny…')
    : h('button', { type: 'button', class: 'btn', id: 'fleet-accept', onclick: () => setAccepted(name, true) }, 'Accept'));
}

async function setAccepted(name, accepted) {
  const box = document.getElementById('fleet-result');
  try {
    await api('/api/v1/fleet/managedclusters/' + encodeURIComponent(name), {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/merge-patch+json' },
      body: JSON.stringify({ spec: { hubAcceptsClient: accepted } }),
    });
    if (box) box.replaceChildren(h('div', { class: 'notice' }, accepted ? 'Accepted: the hub lets it in and pushes it works.' : 'Denied: the hub cuts it off.'));
  } catch (err) {
    if (box && err.status !== 401) box.replaceChildren(h('div', { class: 'error', role: 'alert' }, 'Refused: ' + err.message));
  }
  fleetChanged();
}

// ------------------------------------------------------------------ Placements

function placementList(items) {
  return h('div', { id: 'fleet-placements' },
    h('h2', {}, 'Placements'),
    simpleTable('placements', ['Placement', 'Selected', 'Satisfied', 'Clusters', 'Groups', 'Not selected'],
      items.map((p) => h('tr', { 'data-fleet-name': fMeta(p).name },
        h('td', { class: 'name', 'data-label': 'Placement' }, h('a', { href: fleetHref('placements', fMeta(p).name) }, fMeta(p).name)),
        h('td', { class: 'num', 'data-label': 'Selected' }, fStat(p).numberOfSelectedClusters ?? '–'),
        fTd('Satisfied', condBadge(p, 'PlacementSatisfied')),
        fTd('Clusters', fList(fStat(p).decisions).map((d) => d.clusterName).join(', ') || '–'),
        h('td', { class: 'num', 'data-label': 'Groups' }, fList(fStat(p).decisionGroups).length),
        h('td', { class: 'num', 'data-label': 'Not selected' }, fList(fStat(p).notSelected).length))),
      'No placements yet: `tunnel-server apply -f placement.yaml` (docs/fleet.md).'));
}

function placementDetail(p) {
  const scores = new Map(fList(fStat(p).decisions).map((d) => [d.clusterName, d]));
  const groups = fList(fStat(p).decisionGroups);
  return h('div', { id: 'fleet-placement', 'data-fleet-name': fMeta(p).name },
    h('div', { class: 'crumbs' }, h('a', { href: fleetHref('placements') }, '← Placements')),
    h('div', { class: 'head' }, h('h2', {}, fMeta(p).name), condBadge(p, 'PlacementSatisfied')),
    h('div', { class: 'panel' }, fFacts([
      ['Selected', String(fStat(p).numberOfSelectedClusters ?? '–') + (fSpec(p).numberOfClusters != null ? ' of ' + fSpec(p).numberOfClusters + ' asked' : ' (all that fit)')],
      ['Cluster sets', fList(fSpec(p).clusterSets).join(', ') || 'all'],
      ['Next evaluation', fStat(p).nextEvaluationAt ? fmt.time(fStat(p).nextEvaluationAt) : '–'],
    ])),
    h('h3', {}, 'Decisions by group'),
    groups.length ? groups.map((g) => h('div', { class: 'group', 'data-group': g.decisionGroupIndex },
      h('h4', {}, 'Group ' + g.decisionGroupIndex + (g.decisionGroupName ? ' · ' + g.decisionGroupName : '')),
      simpleTable('group-' + g.decisionGroupIndex, ['Cluster', 'Score'], fList(g.clusters).map((name) => h('tr', { 'data-cluster': name },
        h('td', { 'data-label': 'Cluster' }, h('a', { href: fleetHref('managedclusters', name) }, name)),
        h('td', { class: 'num', 'data-label': 'Score' }, (scores.get(name) || {}).score ?? '–'))), 'No cluster in this group.')))
      : simpleTable('decisions', ['Cluster', 'Score', 'Group'], fList(fStat(p).decisions).map((d) => h('tr', { 'data-cluster': d.clusterName },
        fTd('Cluster', d.clusterName), h('td', { class: 'num', 'data-label': 'Score' }, d.score ?? '–'), fTd('Group', d.groupName || d.groupIndex || '–'))),
      'No cluster chosen.'),
    h('h3', {}, 'Not selected, and why'),
    simpleTable('not-selected', ['Cluster', 'Reason'], fList(fStat(p).notSelected).map((n) => h('tr', { 'data-cluster': n.clusterName },
      fTd('Cluster', h('a', { href: fleetHref('managedclusters', n.clusterName) }, n.clusterName)),
      h('td', { class: 'wrap', 'data-label': 'Reason' }, n.reason))),
    'Every known cluster is selected.'),
    h('h3', {}, 'Conditions'), conditionsTable('placement-conditions', p));
}

// ------------------------------------------------------------------ WorkSets

function rolloutDone(w) {
  return fList((fStat(w).rollout || {}).clusters).filter((c) => c.status === 'Succeeded').length;
}

function worksetList(items) {
  return h('div', { id: 'fleet-worksets' },
    h('h2', {}, 'WorkSets'),
    simpleTable('worksets', ['WorkSet', 'Phase', 'Rollout', 'Clusters', 'Applied', 'Available', 'Degraded', 'Placements'],
      items.map((w) => {
        const summary = fStat(w).summary || {};
        const rollout = fStat(w).rollout || {};
        return h('tr', { 'data-fleet-name': fMeta(w).name, 'data-phase': rollout.phase || '' },
          h('td', { class: 'name', 'data-label': 'WorkSet' }, h('a', { href: fleetHref('worksets', fMeta(w).name) }, fMeta(w).name)),
          fTd('Phase', phaseBadge(rollout.phase)),
          fTd('Rollout', progressBar(rolloutDone(w), fList(rollout.clusters).length)),
          h('td', { class: 'num', 'data-label': 'Clusters' }, summary.total ?? '–'),
          h('td', { class: 'num', 'data-label': 'Applied' }, summary.applied ?? '–'),
          h('td', { class: 'num', 'data-label': 'Available' }, summary.available ?? '–'),
          h('td', { class: 'num', 'data-label': 'Degraded' }, summary.degraded ?? '–'),
          fTd('Placements', fList(fSpec(w).placementRefs).map((r) => r.name).join(', ') || '–'));
      }),
      'No worksets yet: `tunnel-server apply -f workset.yaml` (docs/fleet.md).'));
}

function phaseBadge(phase) {
  const cls = { Succeeded: 'online', Progressing: 'pending', Halted: 'offline' }[phase] || '';
  return h('span', { class: 'badge ' + cls, 'data-phase': phase || '' }, phase || '–');
}

function rolloutBadge(status) {
  const cls = { Succeeded: 'online', Progressing: 'pending', ToApply: '', Removing: 'pending', Failed: 'offline', TimeOut: 'offline' }[status] || '';
  return h('span', { class: 'badge ' + cls, 'data-rollout': status || '' }, status || '–');
}

function feedbackText(fb) {
  return fList((fb || {}).values).map((v) => {
    const f = v.fieldValue || {};
    const value = f.type === 'Integer' ? f.integer : f.type === 'Boolean' ? f.boolean : f.type === 'JsonRaw' ? f.jsonRaw : f.string;
    return v.name + '=' + value;
  }).join(', ') || '–';
}

function worksetDetail(w, works) {
  const summary = fStat(w).summary || {};
  const rollout = fStat(w).rollout || {};
  const byCluster = new Map(fList(works).map((k) => [fSpec(k).clusterName, k]));
  const clusters = fList(rollout.clusters);
  for (const name of byCluster.keys()) if (!clusters.some((c) => c.cluster === name)) clusters.push({ cluster: name });
  return h('div', { id: 'fleet-workset', 'data-fleet-name': fMeta(w).name },
    h('div', { class: 'crumbs' }, h('a', { href: fleetHref('worksets') }, '← WorkSets')),
    h('div', { class: 'head' }, h('h2', {}, fMeta(w).name), phaseBadge(rollout.phase)),
    h('div', { class: 'panel' }, fFacts([
      ['Rollout', progressBar(rolloutDone(w), fList(rollout.clusters).length)],
      ['Message', rollout.message || '–'],
      ['Placements', fList(fSpec(w).placementRefs).map((r) => r.name + ' (' + ((r.rolloutStrategy || {}).type || 'All') + ')').join(', ') || '–'],
      ['Clusters', 'total ' + (summary.total ?? 0) + ' · applied ' + (summary.applied ?? 0) + ' · available ' + (summary.available ?? 0)
        + ' · degraded ' + (summary.degraded ?? 0) + ' · progressing ' + (summary.progressing ?? 0)],
    ])),
    h('h3', {}, 'Per cluster'),
    simpleTable('workset-clusters', ['Cluster', 'Rollout', 'Since', 'Applied', 'Available', 'Degraded'], clusters.map((c) => {
      const work = byCluster.get(c.cluster);
      return h('tr', { 'data-cluster': c.cluster },
        fTd('Cluster', h('a', { href: fleetHref('managedclusters', c.cluster) }, c.cluster)),
        fTd('Rollout', rolloutBadge(c.status)),
        fTd('Since', c.since ? h('span', { title: fmt.time(c.since) }, fmt.ago(c.since)) : '–'),
        fTd('Applied', work ? condBadge(work, 'Applied') : '–'),
        fTd('Available', work ? condBadge(work, 'Available') : '–'),
        fTd('Degraded', work ? condBadge(work, 'Degraded', 'False') : '–'));
    }), 'No cluster chosen yet.'),
    h('h3', {}, 'Per resource'),
    simpleTable('workset-resources', ['Cluster', 'Resource', 'Applied', 'Available', 'Status feedback'], fList(works).flatMap((k) =>
      fList((fStat(k).resourceStatus || {}).manifests).map((m) => {
        const r = m.resourceMeta || {};
        const id = (r.kind || r.resource || '?') + ' ' + (r.namespace ? r.namespace + '/' : '') + (r.name || '');
        const asDoc = { status: { conditions: m.conditions } };
        return h('tr', { 'data-cluster': fSpec(k).clusterName, 'data-resource': id },
          fTd('Cluster', fSpec(k).clusterName), fTd('Resource', id),
          fTd('Applied', condBadge(asDoc, 'Applied')), fTd('Available', condBadge(asDoc, 'Available')),
          h('td', { class: 'wrap', 'data-label': 'Status feedback' }, feedbackText(m.statusFeedback)));
      })), 'No resource status reported yet.'),
    h('h3', {}, 'Conditions'), conditionsTable('workset-conditions', w));
}

// ------------------------------------------------------------------ MultiClusterRoutes

// status.backends[]: {name, state, health, reasons?, requests?, errors?, latencyP50Ms?,
// latencyP99Ms?} as the gateway's router writes them (docs/gateway.md); figures it has not
// written yet show as –.
function routeBackends(r) { return fList(fStat(r).backends); }

function healthBadge(b) {
  const cls = { Healthy: 'online', Unhealthy: 'offline' }[b.state] || 'pending';
  return h('span', { class: 'badge ' + cls, 'data-state': b.state || '', title: b.health || '' }, b.state || '–');
}

function sumOf(backends, key) {
  const values = backends.map((b) => b[key]).filter((v) => typeof v === 'number');
  return values.length ? values.reduce((a, b) => a + b, 0) : '–';
}

function routeNum(label, value) {
  return h('td', { class: 'num', 'data-label': label }, value ?? '–');
}

function routeList(items) {
  return h('div', { id: 'fleet-routes' },
    h('h2', {}, 'Gateway routes'),
    simpleTable('multiclusterroutes', ['Route', 'Hostnames', 'Accepted', 'Resolved', 'Healthy backends', 'Requests', 'Errors'],
      items.map((r) => {
        const backends = routeBackends(r);
        const healthy = backends.filter((b) => b.state === 'Healthy').length;
        return h('tr', { 'data-fleet-name': fMeta(r).name },
          h('td', { class: 'name', 'data-label': 'Route' }, h('a', { href: fleetHref('multiclusterroutes', fMeta(r).name) }, fMeta(r).name)),
          fTd('Hostnames', fList(fSpec(r).hostnames).join(', ') || 'any'),
          fTd('Accepted', condBadge(r, 'Accepted')),
          fTd('Resolved', condBadge(r, 'ResolvedRefs')),
          h('td', { class: 'num', 'data-label': 'Healthy backends', 'data-healthy': healthy, 'data-total': backends.length },
            backends.length ? healthy + ' / ' + backends.length : '–'),
          routeNum('Requests', sumOf(backends, 'requests')),
          routeNum('Errors', sumOf(backends, 'errors')));
      }),
      'No routes yet: `tunnel-server apply -f route.yaml` with kind MultiClusterRoute (docs/gateway.md).'));
}

function backendText(ref) {
  return ref.cluster + '/' + ref.namespace + '/' + ref.name + ':' + ref.port;
}

function matchText(m) {
  const parts = [];
  if (m.path) parts.push('path ' + (m.path.type || 'PathPrefix') + ' ' + m.path.value);
  for (const x of fList(m.headers)) parts.push('header ' + x.name + (x.type === 'RegularExpression' ? ' ~ ' : ' = ') + x.value);
  for (const x of fList(m.queryParams)) parts.push('query ' + x.name + (x.type === 'RegularExpression' ? ' ~ ' : ' = ') + x.value);
  if (m.method) parts.push('method ' + m.method);
  return parts.join(', ') || 'everything';
}

function routeDetail(r) {
  const backends = routeBackends(r);
  return h('div', { id: 'fleet-route', 'data-fleet-name': fMeta(r).name },
    h('div', { class: 'crumbs' }, h('a', { href: fleetHref('multiclusterroutes') }, '← Gateway routes')),
    h('div', { class: 'head' }, h('h2', {}, fMeta(r).name), h('span', { class: 'muted' }, 'accepted'), condBadge(r, 'Accepted'), ' ',
      h('span', { class: 'muted' }, 'backends resolved'), condBadge(r, 'ResolvedRefs')),
    h('div', { class: 'panel' }, fFacts([
      ['Hostnames', fList(fSpec(r).hostnames).join(', ') || 'any'],
      ['Rules', String(fList(fSpec(r).rules).length)],
      ['Healthy backends', backends.filter((b) => b.state === 'Healthy').length + ' of ' + backends.length],
    ])),
    h('h3', {}, 'Backends'),
    simpleTable('route-backends', ['Backend', 'Health', 'Why', 'Requests', 'Errors', 'p50 ms', 'p99 ms'], backends.map((b) => h('tr', { 'data-backend': b.name },
      fTd('Backend', b.name), fTd('Health', healthBadge(b)), h('td', { class: 'wrap', 'data-label': 'Why' }, b.state === 'Healthy' ? '–' : (b.health || '–')),
      routeNum('Requests', b.requests), routeNum('Errors', b.errors), routeNum('p50 ms', b.latencyP50Ms), routeNum('p99 ms', b.latencyP99Ms))),
    'The gateway has not reported on this route yet (is `tunnel-server run --gateway-listen` on?).'),
    h('h3', {}, 'Rules'),
    simpleTable('route-rules', ['#', 'Matches', 'Backends (weight)'], fList(fSpec(r).rules).map((rule, i) => h('tr', { 'data-rule': i },
      routeNum('#', i + 1),
      h('td', { class: 'wrap', 'data-label': 'Matches' }, fList(rule.matches).map(matchText).join(' or ') || 'everything'),
      h('td', { class: 'wrap', 'data-label': 'Backends (weight)' }, fList(rule.backendRefs).map((ref) => backendText(ref) + ' (' + (ref.weight ?? 1) + ')').join(', ') || '–'))),
    'No rules.'),
    h('h3', {}, 'Conditions'), conditionsTable('route-conditions', r));
}

const FLEET_LIST = { managedclusters: managedClusterList, placements: placementList, worksets: worksetList, multiclusterroutes: routeList };
const FLEET_DETAIL = { managedclusters: managedClusterDetail, placements: placementDetail, worksets: worksetDetail, multiclusterroutes: routeDetail };
