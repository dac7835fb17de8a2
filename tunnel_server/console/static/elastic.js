'use strict';
// The cluster page's "Node pools" and "Resource policies" (issue 15): a registered member
// cluster's elastic.edgefleet.io objects with their usage, as the cluster agent wrote it in
// their status. Read through the cluster's tunnel as the signed-in user
// (GET /api/v1/clusters/{name}/nodepools and .../resourcepolicies), so the member's RBAC
// decides what shows; its refusal, the cluster being offline or the CRDs not installed there
// are said in the section instead. Loaded after app.js, whose helpers (h, morph, listAll,
// badge, meter, currentCluster) it uses; app.js calls elasticSections() when it builds the
// cluster page and elasticChanged(name) each time that page is updated (live events and its
// poll), which fetches again at most once per ELASTIC_GAP (and once more afterwards if an
// update came meanwhile).

const ELASTIC_GAP = 2000;  // ms: each fetch is two LISTs in the member cluster
const elastic = { pending: false, again: false, connected: true };
// Conditions that mean trouble when their status is this (the others are shown muted).
const ELASTIC_BAD = { ProviderReady: 'False', AtMax: 'True', Accepted: 'False', Overlapping: 'True', UnitsFull: 'True' };

function elasticSections() {
  return [
    h('h2', {}, 'Node pools'),
    h('div', { id: 'cluster-nodepools' }, h('p', { class: 'count' }, 'Loading…')),
    h('h2', {}, 'Resource policies'),
    h('div', { id: 'cluster-policies' }, h('p', { class: 'count' }, 'Loading…')),
  ];
}

// `connected`: the cluster's agent has a tunnel session; without one nothing can be read
// (the API would answer 503 cluster_offline), so the sections say so without asking.
function elasticChanged(name, connected = true) {
  if (!name || !document.getElementById('cluster-nodepools')) return;
  elastic.connected = connected;
  if (!connected) {
    elastic.again = false;
    for (const [id, what] of [['cluster-nodepools', 'node pools'], ['cluster-policies', 'resource policies']]) {
      morph(document.getElementById(id), [h('p', { class: 'notice', 'data-reason': 'cluster_offline' },
        'The cluster is not connected: its ' + what + ' are read from it live, and show again when its agent is back.')]);
    }
    return;
  }
  if (elastic.pending) { elastic.again = true; return; }
  elastic.pending = true;
  loadElastic(name).catch(() => {}).finally(() => setTimeout(() => {
    elastic.pending = false;
    if (elastic.again) { elastic.again = false; elasticChanged(currentCluster(), elastic.connected); }
  }, ELASTIC_GAP));
}

async function loadElastic(name) {
  const base = '/api/v1/clusters/' + encodeURIComponent(name);
  const [pools, policies] = await Promise.allSettled([
    listAll(base + '/nodepools'), listAll(base + '/resourcepolicies')]);
  if (currentCluster() !== name) return;
  const poolBox = document.getElementById('cluster-nodepools');
  const policyBox = document.getElementById('cluster-policies');
  if (!poolBox || !policyBox) return;
  morph(poolBox, pools.status === 'fulfilled' ? poolTable(pools.value) : [elasticProblem(pools.reason, 'nodepools')]);
  morph(policyBox, policies.status === 'fulfilled' ? policyTable(policies.value) : [elasticProblem(policies.reason, 'resourcepolicies')]);
}

// What the API said instead of a list: not installed, or an agent that does not offer its
// API server, is a fact about the cluster; the rest (offline, the member's RBAC refusing, the
// tunnel failing) an error to show as such.
function elasticProblem(err, what) {
  const reason = (err && err.reason) || 'failed';
  const text = (err && err.message) || 'the request failed';
  if (reason === 'elastic_not_installed') {
    return h('p', { class: 'notice', 'data-reason': reason, id: 'elastic-' + what + '-problem' },
      'Elastic clusters are not installed in this cluster: ' + text);
  }
  if (reason === 'apiserver_not_served') {
    return h('p', { class: 'notice', 'data-reason': reason, id: 'elastic-' + what + '-problem' }, text);
  }
  return h('div', { class: 'error', role: 'alert', 'data-reason': reason, id: 'elastic-' + what + '-problem' }, text);
}

function conditionBadges(conditions) {
  return h('span', { class: 'conditions' }, (conditions || []).map((c) => {
    const bad = ELASTIC_BAD[c.type] === c.status;
    const cls = bad ? 'offline' : c.status === 'True' ? 'online' : '';
    const title = [c.reason, c.message].filter(Boolean).join(': ');
    return h('span', { class: 'badge ' + cls, 'data-condition': c.type, 'data-status': c.status, title }, c.type + (c.status === 'True' ? '' : ' ' + c.status.toLowerCase()));
  }));
}

const num = (v) => (v === null || v === undefined ? '–' : String(v));

function poolNodes(p) {
  if (p.nodes === null || p.nodes === undefined) return h('span', { class: 'count' }, 'not reported');
  const share = p.max ? (100 * p.nodes) / p.max : null;
  const bar = share === null ? '' : meter(share).firstChild;
  return h('span', { title: 'min ' + num(p.min) + ', max ' + num(p.max) }, bar, p.nodes + ' / ' + num(p.max));
}

function poolTable(pools) {
  if (!pools.length) return [h('p', { class: 'empty-state', id: 'nodepools-empty' }, 'No node pools in this cluster.')];
  const head = ['Pool', 'Priority', 'Nodes', 'Creating', 'Removing', 'Provider', 'Conditions'];
  return [h('table', { id: 'nodepools' },
    h('thead', {}, h('tr', {}, head.map((label) => h('th', { scope: 'col' }, label)))),
    h('tbody', {}, pools.map((p) => h('tr', { 'data-pool': p.name },
      h('td', { class: 'name', 'data-label': 'Pool' }, p.name),
      h('td', { class: 'num', 'data-label': 'Priority' }, num(p.priority)),
      h('td', { class: 'num', 'data-label': 'Nodes' }, poolNodes(p)),
      h('td', { class: 'num', 'data-label': 'Creating' }, num(p.creating)),
      h('td', { class: 'num', 'data-label': 'Removing' }, num(p.removing)),
      h('td', { 'data-label': 'Provider' }, p.provider || '–'),
      h('td', { 'data-label': 'Conditions' }, conditionBadges(p.conditions))))))];
}

// "local 4 / 4 · cloud 2 / 4 · virtual 2": pods per unit, over its max when it has one.
function policyUnits(p) {
  return h('span', {}, (p.units || []).flatMap((u, i) => [i ? ' · ' : '', h('span', { class: 'unit', 'data-unit': u.name },
    u.name + ' ' + (u.pods === null || u.pods === undefined ? '?' : u.pods) + (u.max === null || u.max === undefined ? '' : ' / ' + u.max))]));
}

function policyTable(policies) {
  if (!policies.length) return [h('p', { class: 'empty-state', id: 'policies-empty' }, 'No resource policies in this cluster (or none you may read).')];
  const head = ['Namespace', 'Policy', 'Pods per unit', 'Waiting', 'Conditions'];
  return [h('table', { id: 'policies' },
    h('thead', {}, h('tr', {}, head.map((label) => h('th', { scope: 'col' }, label)))),
    h('tbody', {}, policies.map((p) => h('tr', { 'data-policy': p.namespace + '/' + p.name },
      h('td', { 'data-label': 'Namespace' }, p.namespace),
      h('td', { class: 'name', 'data-label': 'Policy' }, p.name),
      h('td', { 'data-label': 'Pods per unit' }, policyUnits(p)),
      h('td', { class: 'num', 'data-label': 'Waiting' }, num(p.waiting)),
      h('td', { 'data-label': 'Conditions' }, conditionBadges(p.conditions))))))];
}
