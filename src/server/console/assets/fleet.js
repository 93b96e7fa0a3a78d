// The fleet: instances by region, engine version and state, a chart of the fleet by engine
// version marking versions past or near their end of life, filters by tag, type and version;
// and an instance's page (status, versions offered, live watch).

import { api, query, watch } from './api.js';
import { badge, errorPanel, h, replace, svg, table } from './view.js';

const LIFECYCLE = {
  LIFECYCLE_END_OF_LIFE: { label: 'past end of life', tone: 'bad' },
  LIFECYCLE_NEAR_END_OF_LIFE: { label: 'near end of life', tone: 'warn' },
  LIFECYCLE_SUPPORTED: { label: 'supported', tone: 'good' },
};

function lifecycleOf(versions, version) {
  const info = versions.find((v) => v.engineVersion === version);
  return { info, ...(LIFECYCLE[info && info.lifecycle] || { label: 'end of life unknown', tone: 'idle' }) };
}

export function statusBadge(status) {
  if (!status) return badge('unknown', 'idle');
  if (status === 'Running') return badge(status, 'good');
  if (/Upgrading|Creating|Rebooting|Restarting|Changing/i.test(status)) return badge(status, 'busy');
  return badge(status, 'warn');
}

function tagsText(tags) {
  return (tags || []).map((t) => (t.value ? `${t.key}=${t.value}` : t.key)).join(', ');
}

function instanceStatus(instance) {
  return instance.status || instance.dbInstanceStatus || '';
}

function instanceType(instance) {
  return instance.instanceType || instance.dbInstanceType || '';
}

// "env=prod" matches the tag env with value prod; "env" any value of env.
function matchesTag(instance, filter) {
  if (!filter) return true;
  const [key, value] = filter.split('=').map((s) => s.trim());
  return (instance.tags || []).some((t) => t.key === key && (value === undefined || t.value === value));
}

// Bars of the fleet by engine version: one row per version, its count, its end of life as text
// and an icon, so that the chart reads without colour.
function chart(instances, versions) {
  const counts = new Map();
  for (const v of versions) counts.set(v.engineVersion, 0);
  for (const i of instances) counts.set(i.engineVersion, (counts.get(i.engineVersion) || 0) + 1);
  const rows = [...counts.entries()].filter(([, n]) => n > 0);
  const max = Math.max(1, ...rows.map(([, n]) => n));
  const rowHeight = 34;
  const width = 640;
  const labelWidth = 60;
  const barSpace = 300;
  const height = Math.max(1, rows.length) * rowHeight + 8;
  const summary = rows.map(([version, n]) => `${version}: ${n} (${lifecycleOf(versions, version).label})`).join('; ');
  const figure = svg('svg', {
    viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': 'chart-title', class: 'chart', id: 'fleet-chart',
  }, svg('title', { id: 'chart-title' }, `Instances by engine version: ${summary || 'none'}`));
  rows.forEach(([version, n], index) => {
    const y = index * rowHeight + 4;
    const life = lifecycleOf(versions, version);
    const barWidth = Math.max(4, Math.round((n / max) * barSpace));
    const eol = life.info && life.info.endOfLife ? ` · EOL ${life.info.endOfLife}` : '';
    const icon = { bad: '✖', warn: '⚠', good: '✔' }[life.tone] || '•';
    figure.append(
      svg('g', { class: `bar ${life.tone}`, 'data-version': version },
        svg('text', { x: 0, y: y + 20, class: 'bar-label' }, version),
        svg('rect', { x: labelWidth, y, width: barWidth, height: rowHeight - 10, rx: 3 }),
        svg('text', { x: labelWidth + barWidth + 8, y: y + 20, class: 'bar-value' }, `${n} ${icon} ${life.label}${eol}`)));
  });
  return h('figure', { class: 'chart-box' }, figure,
    h('figcaption', {}, 'Instances by engine version. ✖ past end of life, ⚠ within 180 days of it, ✔ supported.'));
}

function summaryTable(instances) {
  const groups = new Map();
  for (const i of instances) {
    const key = `${i.regionId}\u0000${i.engineVersion}\u0000${instanceStatus(i)}`;
    groups.set(key, (groups.get(key) || 0) + 1);
  }
  const rows = [...groups.entries()].sort().map(([key, n]) => {
    const [region, version, status] = key.split('\u0000');
    return [region, version, statusBadge(status), String(n)];
  });
  return table('Instances by region, engine version and state', ['Region', 'Engine version', 'State', 'Instances'], rows);
}

export async function fleetView(ctx) {
  const { main, signal } = ctx;
  replace(main, h('h2', {}, 'Fleet'), h('p', { class: 'muted' }, 'Loading the fleet...'));
  let versions = [];
  let instances;
  try {
    const [v, list] = await Promise.all([api.get('/v1/engineVersions', signal), api.get('/v1/instances', signal)]);
    versions = v.engineVersions || [];
    instances = list.instances || [];
  } catch (err) {
    replace(main, h('h2', {}, 'Fleet'), errorPanel(err, 'Listing the fleet'));
    return;
  }
  const filters = { tag: '', type: '', version: '' };
  const types = [...new Set(instances.map(instanceType).filter(Boolean))].sort();
  const found = [...new Set(instances.map((i) => i.engineVersion))].sort();
  const results = h('div', { id: 'fleet-results', 'aria-live': 'polite' });
  const render = () => {
    const shown = instances.filter((i) => matchesTag(i, filters.tag)
      && (!filters.type || instanceType(i) === filters.type)
      && (!filters.version || i.engineVersion === filters.version));
    const rows = shown.map((i) => {
      const life = lifecycleOf(versions, i.engineVersion);
      return [
        h('a', { href: `#/instances/${encodeURIComponent(i.dbInstanceId)}${query({ region: i.regionId })}` }, i.dbInstanceId),
        i.regionId || '',
        h('span', {}, `${i.engineVersion} `, badge(life.label, life.tone)),
        h('span', {}, statusBadge(instanceStatus(i)), i.lockMode && i.lockMode !== 'Unlock' ? [' ', badge(`lock: ${i.lockMode}`, 'warn')] : null),
        instanceType(i),
        tagsText(i.tags),
      ];
    });
    replace(results,
      h('p', {}, `${shown.length} of ${instances.length} instances shown.`),
      chart(shown, versions),
      summaryTable(shown),
      table('Instances', ['Instance', 'Region', 'Engine version', 'State', 'Type', 'Tags'], rows, 'No instance matches the filters.'));
  };
  const select = (id, label, options, key) => h('div', { class: 'field' },
    h('label', { for: id }, label),
    h('select', { id, onchange: (e) => { filters[key] = e.target.value; render(); } },
      h('option', { value: '' }, 'All'), options.map((o) => h('option', { value: o }, o))));
  replace(main,
    h('h2', {}, 'Fleet'),
    h('form', { class: 'filters', 'aria-label': 'Filter the fleet', onsubmit: (e) => e.preventDefault() },
      h('div', { class: 'field' },
        h('label', { for: 'filter-tag' }, 'Tag (key or key=value)'),
        h('input', { id: 'filter-tag', type: 'search', autocomplete: 'off', oninput: (e) => { filters.tag = e.target.value.trim(); render(); } })),
      select('filter-type', 'Type', types, 'type'),
      select('filter-version', 'Engine version', found, 'version')),
    results);
  render();
}

export async function instanceView(ctx, id, params) {
  const { main, signal } = ctx;
  const region = params.get('region') || '';
  const title = h('h2', {}, `Instance ${id}`);
  replace(main, title, h('p', { class: 'muted' }, 'Loading...'));
  let status;
  try {
    status = await api.get(`/v1/instances/${encodeURIComponent(id)}/engineVersion${query({ regionId: region })}`, signal);
  } catch (err) {
    replace(main, title, errorPanel(err, 'Reading the instance'), h('p', {}, h('a', { href: '#/fleet' }, '← Fleet')));
    return;
  }
  const offered = status.availableEngineVersions || [];
  const log = h('ol', { class: 'watch-log', 'aria-live': 'polite', id: 'watch-log' });
  const watchErrors = h('div');
  const target = h('select', { id: 'watch-target' }, offered.concat(offered.length ? [] : [status.engineVersion]).map((v) => h('option', { value: v }, v)));
  let running = null;
  const button = h('button', { type: 'submit', id: 'watch-start' }, 'Watch');
  const start = async (event) => {
    event.preventDefault();
    if (running) {
      running.abort();
      return;
    }
    running = new AbortController();
    signal.addEventListener('abort', () => running && running.abort());
    button.textContent = 'Stop watching';
    watchErrors.replaceChildren();
    const path = `/v1/instances/${encodeURIComponent(id)}/engineVersion:watch${query({ engineVersion: target.value, regionId: region })}`;
    try {
      await watch(path, (m) => {
        log.append(h('li', {}, `${new Date().toLocaleTimeString()} `, statusBadge(m.status), ` on ${m.engineVersion}`, m.done ? ' — done' : ''));
      }, running.signal);
    } catch (err) {
      const panel = errorPanel(err, 'Watching');
      if (panel) watchErrors.append(panel);
    } finally {
      running = null;
      button.textContent = 'Watch';
    }
  };
  replace(main,
    h('p', {}, h('a', { href: '#/fleet' }, '← Fleet')),
    title,
    h('dl', { class: 'facts' },
      h('dt', {}, 'Region'), h('dd', {}, status.regionId || region),
      h('dt', {}, 'Engine version'), h('dd', { id: 'instance-version' }, status.engineVersion),
      h('dt', {}, 'State'), h('dd', {}, statusBadge(status.status)),
      h('dt', {}, 'Versions offered'), h('dd', {}, offered.length ? offered.join(', ') : 'none (it runs the latest)')),
    h('h3', {}, 'Live watch'),
    h('form', { class: 'inline', onsubmit: start },
      h('label', { for: 'watch-target' }, 'Until it runs'), target, button),
    watchErrors,
    log);
}
