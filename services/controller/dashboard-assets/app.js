// @ts-check
// The edgeplane fleet dashboard: plain DOM, no framework. Everything comes from this origin:
// JSON reads (/api/...) and one server-sent-events stream (/api/events) that carries live node,
// policy, rollout and counter changes. Data is only ever put into the page as text
// (textContent, SVG attributes), never as markup.

/** @type {Map<string, any>} */
const nodes = new Map();
/** @type {Map<string, any>} */
const policies = new Map();
/** @type {any[]} */
let services = [];
/** @type {Map<string, any>} */
const rollouts = new Map();
/** @type {{ at: number, rules: any[] }[]} */
let samples = [];
let counterIntervalMs = 5000;
let selector = '';
/** @type {EventSource | undefined} */
let stream;
let renderQueued = false;

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/**
 * @param {string} tag
 * @param {Record<string, string>} [attrs]
 * @param {(Node | string)[]} [children]
 */
function el(tag, attrs = {}, children = []) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
/** @param {string} tag @param {Record<string, string | number>} attrs */
function svg(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/** @param {string} text @param {string} kind */
const badge = (text, kind) => el('span', { class: `badge ${kind}` }, [text]);
/** @param {Record<string, string> | undefined} labels */
const chips = (labels) => el('span', {}, Object.entries(labels ?? {}).sort().map(([k, v]) => el('span', { class: 'chip' }, [`${k}=${v}`])));
/** @param {string | undefined} iso */
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '');
/** @param {string} name */
const short = (name) => (name ?? '').replace(/^[A-Z]+_[A-Z]+_/, '').replace(/^(ROLLOUT_STATE|ROLLOUT_KIND|ACTION|FORWARDING_MODE)_/, '').toLowerCase();

function currentView() {
  const h = location.hash.replace(/^#/, '') || 'nodes';
  return h.startsWith('rollout/') ? 'rollout' : h;
}

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render(false);
  });
}

/** @param {boolean} full also refetch what is not live (the open rollout's timeline) */
function render(full = true) {
  const view = currentView();
  for (const s of document.querySelectorAll('.view')) s.classList.toggle('active', s.id === `view-${view}`);
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.getAttribute('data-view') === (view === 'rollout' ? 'rollouts' : view));
  if (view === 'nodes') renderNodes();
  else if (view === 'policies') renderPolicies();
  else if (view === 'services') renderServices();
  else if (view === 'rollouts') renderRollouts();
  else if (view === 'rollout' && full) void renderRollout();
  else if (view === 'counters') renderCounters();
}

const MAX_ROWS = 1000;

function renderNodes() {
  const all = [...nodes.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  const connected = all.filter((n) => n.connected).length;
  const rev = $('revision').dataset.revision ?? '';
  const current = all.filter((n) => n.appliedRevision === rev).length;
  $('nodes-summary').textContent = `${all.length} node${all.length === 1 ? '' : 's'}${selector ? ` matching ${selector}` : ''}: ${connected} connected, ${current} at revision ${rev}${all.length > MAX_ROWS ? ` (showing the first ${MAX_ROWS})` : ''}`;
  const body = /** @type {HTMLElement} */ ($('nodes-table').querySelector('tbody'));
  body.replaceChildren(
    ...all.slice(0, MAX_ROWS).map((n) => {
      const outcome = n.lastOutcome === 'ACK' ? badge(`ACK ${n.lastOutcomeRevision}`, 'ok') : n.lastOutcome === 'NACK' ? badge(`NACK ${n.lastOutcomeRevision}`, 'bad') : badge('none', 'off');
      const last = el('td', {}, [outcome]);
      if (n.lastOutcome === 'NACK' && n.lastError) last.append(el('div', { class: 'muted' }, [n.lastError]));
      return el('tr', { 'data-node': n.name }, [
        el('td', {}, [n.name]),
        el('td', {}, [n.connected ? badge('connected', 'ok') : badge('disconnected', 'bad')]),
        el('td', { class: 'applied' }, [n.appliedUnknown ? 'unknown' : n.appliedRevision]),
        last,
        el('td', {}, [chips(n.labels)]),
        el('td', {}, n.conditions.map((/** @type {any} */ c) => badge(c.type, 'warn'))),
      ]);
    }),
  );
}

function renderPolicies() {
  const all = [...policies.values()].sort((a, b) => (a.metadata.name < b.metadata.name ? -1 : 1));
  const body = /** @type {HTMLElement} */ ($('policies-table').querySelector('tbody'));
  body.replaceChildren(
    ...all.map((p) => {
      const strategy = p.spec?.rolloutStrategy?.staged ? `staged, ${p.spec.rolloutStrategy.staged.waves?.length ?? 0} waves` : 'all at once';
      const r = rollouts.get(p.metadata.name);
      const rolloutCell = el('td', {}, [strategy]);
      if (r?.rollout) rolloutCell.append(' ', el('a', { href: `#rollout/policy/${p.metadata.name}` }, [short(r.rollout.state)]));
      return el('tr', { 'data-policy': p.metadata.name }, [
        el('td', {}, [p.metadata.name]),
        el('td', {}, [p.metadata.resourceVersion ?? '']),
        el('td', { class: 'chip-cell' }, [el('span', { class: 'chip' }, [p.nodeSelectorText || 'all nodes'])]),
        el('td', {}, [String(p.spec?.rules?.length ?? 0)]),
        el('td', {}, [short(p.spec?.defaultAction ?? 'ACTION_ALLOW')]),
        rolloutCell,
        el('td', {}, [chips(p.metadata.labels)]),
      ]);
    }),
  );
}

function renderServices() {
  const body = /** @type {HTMLElement} */ ($('services-table').querySelector('tbody'));
  body.replaceChildren(
    ...services.map((s) =>
      el('tr', { 'data-service': s.metadata.name }, [
        el('td', {}, [s.metadata.name]),
        el('td', {}, [s.metadata.resourceVersion ?? '']),
        el('td', {}, [`${s.spec?.vip ?? ''}:${s.spec?.port ?? ''} ${short(s.spec?.protocol ?? '')}`]),
        el('td', {}, (s.spec?.backends ?? []).map((/** @type {any} */ b) => el('span', { class: 'chip' }, [`${b.address}${b.port ? `:${b.port}` : ''}`]))),
        el('td', {}, [el('span', { class: 'chip' }, [s.nodeSelectorText || 'all nodes'])]),
        el('td', {}, [short(s.spec?.forwardingMode ?? 'FORWARDING_MODE_UNSPECIFIED')]),
      ]),
    ),
  );
}

/** @param {string | undefined} state */
function stateBadge(state) {
  const s = short(state ?? '');
  return badge(s || 'unknown', s === 'succeeded' ? 'ok' : s === 'failed' || s === 'aborted' ? 'bad' : s === 'paused' ? 'warn' : 'off');
}

/** @param {any} st */
function rolloutCard(st) {
  const r = st.rollout;
  const kind = short(r.kind ?? 'ROLLOUT_KIND_POLICY') === 'service' ? 'service' : 'policy';
  const card = el('div', { class: 'card', 'data-rollout': `${kind}/${r.name}`, 'data-state': short(r.state) }, [
    el('h2', {}, [el('a', { href: `#rollout/${kind}/${r.name}` }, [`${kind} ${r.name}`]), ' ', stateBadge(r.state)]),
    el('div', { class: 'muted' }, [`revision ${r.changeRevision} · wave ${(r.currentWave ?? 0) + 1} of ${r.strategy?.waves?.length ?? st.waves?.length ?? 0} · started ${time(r.createTime)}${r.reason ? ` · ${r.reason}` : ''}`]),
  ]);
  for (const w of st.waves ?? []) {
    const total = w.nodes?.length ?? 0;
    const bar = el('div', { class: 'bar' });
    const done = el('div', { class: 'done' });
    done.style.width = total ? `${(100 * (w.nodesDone ?? 0)) / total}%` : '0';
    const failed = el('div', { class: 'failed' });
    failed.style.width = total ? `${(100 * (w.nodesFailed ?? 0)) / total}%` : '0';
    bar.append(done, failed);
    card.append(
      el('div', { class: 'wave', 'data-wave': String(w.index ?? 0) }, [
        el('span', {}, [`wave ${(w.index ?? 0) + 1}${w.name ? ` ${w.name}` : ''}`]),
        bar,
        el('span', { class: 'muted' }, [`${w.nodesDone ?? 0}/${total} done${w.nodesFailed ? `, ${w.nodesFailed} failed` : ''}${w.bakeUntilTime ? ` · bake until ${time(w.bakeUntilTime)}` : ''}`]),
      ]),
    );
  }
  if ((st.gateReadings ?? []).length) {
    card.append(
      el('table', {}, [
        el('thead', {}, [el('tr', {}, ['Gate: node', 'drop % before', 'drop % now', 'packets'].map((h) => el('th', {}, [h])))]),
        el('tbody', {}, st.gateReadings.map((/** @type {any} */ g) => el('tr', {}, [g.node, (g.baselineDropPercent ?? 0).toFixed(2), (g.currentDropPercent ?? 0).toFixed(2), g.packets ?? '0'].map((c) => el('td', {}, [String(c)]))))),
      ]),
    );
  }
  return card;
}

function renderRollouts() {
  const all = [...rollouts.values()].sort((a, b) => Number(b.rollout.changeRevision) - Number(a.rollout.changeRevision));
  $('rollouts').replaceChildren(...(all.length ? all.map(rolloutCard) : [el('p', { class: 'summary' }, ['No rollouts yet: a policy or service with a staged rollout strategy starts one.'])]));
}

let detailSeq = 0;
async function renderRollout() {
  const [, kind, name] = location.hash.replace(/^#/, '').split('/');
  const seq = ++detailSeq;
  const res = await fetch(`/api/rollout?kind=${encodeURIComponent(kind ?? '')}&name=${encodeURIComponent(name ?? '')}`);
  const body = await res.json();
  if (seq !== detailSeq) return;
  const box = $('rollout-detail');
  if (!res.ok) {
    box.replaceChildren(el('p', { class: 'error' }, [body.error?.message ?? res.statusText]));
    return;
  }
  const tl = body.timeline;
  const events = tl.events ?? [];
  const t0 = events[0]?.at ?? 0;
  const t1 = Math.max(t0 + 1, ...events.map((/** @type {any} */ e) => e.at));
  const W = 900;
  const H = 90;
  const x = (/** @type {number} */ t) => 20 + ((W - 40) * (t - t0)) / (t1 - t0);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': 'rollout timeline' });
  chart.append(svg('line', { class: 'axis', x1: 20, x2: W - 20, y1: 60, y2: 60 }));
  for (const e of events) {
    const cls = e.kind === 'ack' ? 'ack' : e.kind === 'nack' ? 'nack' : e.kind === 'wave' ? 'wave' : 'mark';
    const y = e.kind === 'ack' || e.kind === 'nack' ? 48 - 8 * ((e.wave ?? 0) % 4) : 60;
    const dot = svg('circle', { class: cls, cx: x(e.at).toFixed(1), cy: y, r: e.kind === 'ack' || e.kind === 'nack' ? 4 : 6 });
    const title = svg('title');
    title.textContent = e.text;
    dot.append(title);
    chart.append(dot);
  }
  const label0 = svg('text', { x: 20, y: 80 });
  label0.textContent = new Date(t0).toLocaleTimeString();
  const label1 = svg('text', { x: W - 20, y: 80, 'text-anchor': 'end' });
  label1.textContent = `+${((t1 - t0) / 1000).toFixed(1)} s`;
  chart.append(label0, label1);
  box.replaceChildren(
    rolloutCard(body.status),
    el('div', { class: 'card' }, [
      el('h2', {}, ['Timeline']),
      el('p', { class: 'muted', id: 'timeline-summary' }, [
        tl.toLastAckMs !== undefined ? `API call to the last node's ACK: ${(tl.toLastAckMs / 1000).toFixed(1)} s` : 'no node has ACKed the change yet',
        tl.pending?.length ? ` · waiting for ${tl.pending.join(', ')}` : '',
        tl.omitted ? ` · ${tl.omitted} more nodes not listed` : '',
      ]),
      chart,
      el('ol', { class: 'timeline' }, events.map((/** @type {any} */ e) => el('li', { 'data-kind': e.kind }, [el('span', { class: 't' }, [`+${((e.at - t0) / 1000).toFixed(2)} s`]), e.text]))),
    ]),
  );
}

function renderCounters() {
  const series = new Map();
  for (const s of samples) {
    for (const r of s.rules) {
      const key = `${r.policy}#${r.priority}`;
      if (!series.has(key)) series.set(key, { rule: r, points: [] });
      series.get(key).points.push({ at: s.at, packets: Number(r.packets) });
    }
  }
  $('counters-summary').textContent = `${series.size} rule${series.size === 1 ? '' : 's'} with traffic, ${samples.length} samples every ${counterIntervalMs / 1000} s (packets per second, fleet-wide)`;
  const W = 280;
  const H = 60;
  const t0 = samples[0]?.at ?? 0;
  const t1 = Math.max(t0 + 1, samples[samples.length - 1]?.at ?? 0);
  const charts = [...series.values()].map(({ rule, points }) => {
    /** @type {{ at: number, rate: number }[]} */
    const rates = [];
    for (let i = 1; i < points.length; i++) {
      const dt = (points[i].at - points[i - 1].at) / 1000;
      if (dt > 0) rates.push({ at: points[i].at, rate: Math.max(0, points[i].packets - points[i - 1].packets) / dt });
    }
    const max = Math.max(1, ...rates.map((r) => r.rate));
    const px = (/** @type {number} */ t) => ((W * (t - t0)) / (t1 - t0)).toFixed(1);
    const py = (/** @type {number} */ v) => (H - 2 - ((H - 4) * v) / max).toFixed(1);
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': `${rule.policy} rule ${rule.priority} packets per second` });
    s.append(svg('line', { class: 'axis', x1: 0, x2: W, y1: H - 1, y2: H - 1 }));
    if (rates.length) {
      const line = rates.map((r) => `${px(r.at)},${py(r.rate)}`).join(' ');
      s.append(svg('polygon', { class: 'area', points: `${px(rates[0].at)},${H - 1} ${line} ${px(rates[rates.length - 1].at)},${H - 1}` }), svg('polyline', { class: 'line', points: line }));
    }
    const latest = rates[rates.length - 1]?.rate ?? 0;
    return el('div', { class: 'chart', 'data-rule': `${rule.policy}#${rule.priority}` }, [
      el('div', {}, [el('span', { class: 'title' }, [`${rule.policy} #${rule.priority}${rule.ruleName ? ` ${rule.ruleName}` : ''}`]), el('span', { class: 'rate' }, [`${latest.toFixed(1)} pkt/s · ${points[points.length - 1].packets} total`])]),
      s,
    ]);
  });
  $('charts').replaceChildren(...(charts.length ? charts : [el('p', { class: 'summary' }, ['No rule has counted a packet yet.'])]));
}

async function loadServices() {
  const res = await fetch('/api/services?page_size=1000');
  if (res.ok) services = (await res.json()).services;
  scheduleRender();
}

function connect() {
  stream?.close();
  nodes.clear();
  const live = $('live');
  stream = new EventSource(`/api/events${selector ? `?label_selector=${encodeURIComponent(selector)}` : ''}`);
  const on = (/** @type {string} */ name, /** @type {(d: any) => void} */ fn) => stream?.addEventListener(name, (e) => {
    fn(JSON.parse(/** @type {MessageEvent} */ (e).data));
    scheduleRender();
  });
  on('hello', (d) => {
    nodes.clear();
    $('identity').textContent = d.identity;
    setRevision(d.revision);
    counterIntervalMs = d.counterIntervalMs;
    live.textContent = 'live';
    live.className = 'badge ok';
  });
  on('node', (d) => (d.type === 'DELETED' ? nodes.delete(d.node.name) : nodes.set(d.node.name, d.node)));
  on('policy', (d) => {
    if (d.type === 'POLICY_EVENT_TYPE_DELETED') policies.delete(d.policy.metadata.name);
    else if (d.policy) policies.set(d.policy.metadata.name, d.policy);
    if (d.revision) setRevision(d.revision);
  });
  on('revision', (d) => {
    setRevision(d.revision);
    void loadServices();
  });
  on('rollout', (d) => {
    const key = `${short(d.rollout.kind ?? 'ROLLOUT_KIND_POLICY') === 'service' ? 'service/' : ''}${d.rollout.name}`;
    rollouts.set(key, d);
  });
  on('counters', (d) => {
    samples.push(d);
    if (samples.length > 120) samples = samples.slice(-120);
  });
  on('denied', () => stream?.close());
  stream.onerror = () => {
    live.textContent = 'reconnecting';
    live.className = 'badge warn';
  };
}

/** @param {string} r */
function setRevision(r) {
  const e = $('revision');
  e.dataset.revision = String(r);
  e.textContent = `revision ${r}`;
}

async function applySelector() {
  const text = /** @type {HTMLInputElement} */ ($('selector')).value.trim();
  // The server parses it (the project's one selector parser) and says what is wrong.
  const res = await fetch(`/api/nodes?page_size=1&label_selector=${encodeURIComponent(text)}`);
  if (!res.ok) {
    const body = await res.json();
    $('selector-error').textContent = body.error?.violations?.[0]?.description ?? body.error?.message ?? res.statusText;
    return;
  }
  $('selector-error').textContent = '';
  selector = text;
  connect();
}

async function start() {
  const [c] = await Promise.all([fetch('/api/counters').then((r) => r.json()), loadServices()]);
  samples = c.samples;
  counterIntervalMs = c.intervalMs;
  $('apply-selector').addEventListener('click', () => void applySelector());
  $('selector').addEventListener('keydown', (e) => {
    if (/** @type {KeyboardEvent} */ (e).key === 'Enter') void applySelector();
  });
  window.addEventListener('hashchange', () => {
    detailSeq++;
    render();
  });
  connect();
  render();
  // The open rollout's timeline follows its live status.
  setInterval(() => {
    if (currentView() === 'rollout') void renderRollout();
  }, 2000);
}

void start();
