// Rollouts: the list; a plan (selector and target, a preview of eligible and excluded instances
// with the reasons) then a start; a rollout's page with its waves as progress bars, its
// instances, its gates (soak countdown, approval), updated live from the watch stream, and the
// controls (pause, resume, cancel, approve), each confirmed first.

import { api, watch } from './api.js';
import { badge, confirmAction, errorPanel, h, replace, stateName, table, when } from './view.js';

const ROLLOUT_TONE = {
  ROLLOUT_STATE_RUNNING: 'busy',
  ROLLOUT_STATE_WAITING: 'warn',
  ROLLOUT_STATE_PAUSED: 'pause',
  ROLLOUT_STATE_STOPPING: 'busy',
  ROLLOUT_STATE_CANCELLED: 'idle',
  ROLLOUT_STATE_COMPLETED: 'good',
  ROLLOUT_STATE_FAILED: 'bad',
};
const INSTANCE_TONE = {
  INSTANCE_STATE_PENDING: 'idle',
  INSTANCE_STATE_UPGRADING: 'busy',
  INSTANCE_STATE_DONE: 'good',
  INSTANCE_STATE_FAILED: 'bad',
  INSTANCE_STATE_SKIPPED: 'idle',
};
const WAVE_TONE = {
  WAVE_STATE_RUNNING: 'busy',
  WAVE_STATE_SOAKING: 'warn',
  WAVE_STATE_WAITING_APPROVAL: 'warn',
  WAVE_STATE_COMPLETED: 'good',
  WAVE_STATE_STOPPED: 'bad',
};
const ENDED = ['ROLLOUT_STATE_CANCELLED', 'ROLLOUT_STATE_COMPLETED', 'ROLLOUT_STATE_FAILED'];

export function rolloutBadge(state) {
  return badge(stateName(state, 'ROLLOUT_STATE_') || 'unknown', ROLLOUT_TONE[state] || 'idle');
}

function progress(rollout) {
  const all = rollout.instances || [];
  const finished = all.filter((i) => ['INSTANCE_STATE_DONE', 'INSTANCE_STATE_SKIPPED'].includes(i.state)).length;
  return `${finished} of ${all.length} done`;
}

export async function rolloutsView(ctx) {
  const { main, signal, caller } = ctx;
  const heading = h('h2', {}, 'Rollouts');
  const plan = caller.mayRollOut ? h('p', {}, h('a', { href: '#/rollouts/new', class: 'button primary', id: 'plan-link' }, 'Plan a rollout')) : null;
  replace(main, heading, plan, h('p', { class: 'muted' }, 'Loading...'));
  let list;
  try {
    list = (await api.get('/v1/rollouts', signal)).rollouts || [];
  } catch (err) {
    replace(main, heading, plan, errorPanel(err, 'Listing the rollouts'));
    return;
  }
  const rows = list.map((r) => [
    h('a', { href: `#/rollouts/${encodeURIComponent(r.rolloutId)}` }, r.rolloutId),
    rolloutBadge(r.state),
    r.targetEngineVersion,
    progress(r),
    r.createdBy || '',
    when(r.createTime),
  ]);
  replace(main, heading, plan,
    table('Rollouts, newest first', ['Rollout', 'State', 'Target', 'Progress', 'Started by', 'Started'], rows, 'No rollouts yet.'));
}

const list = (text) => text.split(',').map((s) => s.trim()).filter(Boolean);

function tags(text) {
  return list(text).map((t) => {
    const [key, ...value] = t.split('=');
    return { key: key.trim(), value: value.join('=').trim() };
  });
}

// "1, 50%, 100%" → [{size: 1}, {percent: 50}, {percent: 100}].
function waves(text) {
  return list(text).map((w) => (w.endsWith('%') ? { percent: Number(w.slice(0, -1)) } : { size: Number(w) }));
}

function field(id, label, input, hint) {
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    hint ? h('small', { id: `${id}-hint` }, hint) : null);
}

function input(id, attrs) {
  return h('input', { id, name: id, autocomplete: 'off', ...(attrs || {}), 'aria-describedby': `${id}-hint` });
}

function plannedRows(instances, withReason) {
  return instances.map((i) => [i.dbInstanceId, i.regionId, i.engineVersion, i.status || '',
    withReason ? h('span', {}, h('span', { 'aria-hidden': 'true' }, '⊘ '), i.reason) : (i.warnings || []).join(' ')]);
}

export async function planView(ctx) {
  const { main, caller, navigate } = ctx;
  if (!caller.mayRollOut) {
    replace(main, h('h2', {}, 'Plan a rollout'), h('p', {}, 'Your caller may not start rollouts.'));
    return;
  }
  const versions = caller.engineVersions || [];
  const preview = h('section', { id: 'plan-preview', 'aria-live': 'polite' });
  const form = h('form', { id: 'plan-form', 'aria-label': 'Rollout plan' },
    h('fieldset', {}, h('legend', {}, 'Which instances (every condition given must hold)'),
      field('sel-regions', 'Regions', input('sel-regions', { placeholder: 'cn-hangzhou' }), 'Comma-separated; the default region when empty.'),
      field('sel-versions', 'Current engine versions', input('sel-versions', { placeholder: '4.2, 4.4' }), 'Comma-separated.'),
      field('sel-ids', 'Instance ids', input('sel-ids'), 'Comma-separated.'),
      field('sel-patterns', 'Instance id patterns', input('sel-patterns', { placeholder: 'dds-bp1*' }), '* any run, ? one character.'),
      field('sel-tags', 'Tags', input('sel-tags', { placeholder: 'env=prod' }), 'key=value, comma-separated; all must be carried.'),
      field('sel-group', 'Resource group', input('sel-group'), '')),
    field('target', 'Target engine version',
      h('select', { id: 'target', required: true }, versions.map((v) => h('option', { value: v }, v))), 'The versions your caller may upgrade to.'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'plan-preview-button' }, 'Preview')));
  const value = (id) => form.querySelector(`#${id}`).value;
  const selector = () => {
    const s = {
      regionIds: list(value('sel-regions')),
      engineVersions: list(value('sel-versions')),
      instanceIds: list(value('sel-ids')),
      instancePatterns: list(value('sel-patterns')),
      tags: tags(value('sel-tags')),
    };
    if (value('sel-group').trim()) s.resourceGroupId = value('sel-group').trim();
    return s;
  };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const request = { selector: selector(), targetEngineVersion: value('target') };
    replace(preview, h('p', { class: 'muted' }, 'Planning...'));
    let plan;
    try {
      plan = await api.post('/v1/rollouts:plan', request);
    } catch (err) {
      replace(preview, errorPanel(err, 'Planning'));
      return;
    }
    showPlan(preview, plan, request, navigate);
  });
  replace(main, h('p', {}, h('a', { href: '#/rollouts' }, '← Rollouts')), h('h2', {}, 'Plan a rollout'), form, preview);
}

function showPlan(preview, plan, request, navigate) {
  const eligible = plan.eligible || [];
  const excluded = plan.excluded || [];
  const start = h('form', { id: 'start-form', 'aria-label': 'Start the rollout' },
    h('h3', {}, 'Start'),
    field('waves', 'Waves', input('waves', { value: eligible.length > 1 ? `1, ${eligible.length - 1}` : '1' }), 'Sizes or percentages in order, e.g. 1, 50%, 100%; the first is the canary.'),
    field('max-parallel', 'Upgrades at once per wave', input('max-parallel', { type: 'number', min: '1', value: '1' }), ''),
    field('max-failures', 'Failures tolerated', input('max-failures', { type: 'number', min: '0', value: '0' }), 'The rollout stops when failures exceed it.'),
    field('soak', 'Soak after each wave', input('soak', { placeholder: '30s' }), 'A wait before the next wave, e.g. 30s or 10m.'),
    h('div', { class: 'field check' }, h('input', { type: 'checkbox', id: 'approval' }), h('label', { for: 'approval' }, 'Each wave after the first waits for an approval')),
    field('start-comment', 'Why (recorded in the audit trail)', input('start-comment'), ''),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'start-button' }, `Start rollout of ${eligible.length} instances`)));
  const errors = h('div');
  start.addEventListener('submit', async (event) => {
    event.preventDefault();
    const v = (id) => start.querySelector(`#${id}`).value.trim();
    const body = {
      planHash: plan.planHash,
      selector: request.selector,
      targetEngineVersion: request.targetEngineVersion,
      waves: waves(v('waves')),
      maxParallel: Number(v('max-parallel') || '1'),
      maxFailures: Number(v('max-failures') || '0'),
      approvalRequired: start.querySelector('#approval').checked,
      comment: v('start-comment'),
    };
    if (v('soak')) body.soak = v('soak');
    const rollout = await confirmAction({
      title: 'Start the rollout',
      body: [
        `This upgrades ${eligible.length} instances to MongoDB ${request.targetEngineVersion} in ${body.waves.length} wave(s).`,
        'An engine upgrade cannot be undone, and each instance restarts two to three times.',
      ],
      confirmLabel: 'Start rollout',
      run: () => api.post('/v1/rollouts', body),
    });
    if (rollout) navigate(`#/rollouts/${encodeURIComponent(rollout.rolloutId)}`);
  });
  replace(preview,
    h('h3', {}, `Preview: ${eligible.length} eligible, ${excluded.length} excluded`),
    h('p', { class: 'muted' }, `Plan ${plan.planHash ? plan.planHash.slice(0, 12) : ''}: the start is refused if the fleet changes before it.`),
    table('Eligible instances', ['Instance', 'Region', 'Now', 'State', 'Notes'], plannedRows(eligible, false), 'No instance is eligible.'),
    table('Excluded instances and why', ['Instance', 'Region', 'Now', 'State', 'Reason'], plannedRows(excluded, true), 'No instance is excluded.'),
    eligible.length ? start : null, errors);
}

// A countdown to an RFC 3339 time, in words; updated by the page's ticker.
function countdown(until) {
  const left = Math.max(0, Math.round((new Date(until).getTime() - Date.now()) / 1000));
  return left > 0 ? `${Math.floor(left / 60)}m ${String(left % 60).padStart(2, '0')}s left` : 'ending now';
}

function waveBlock(rollout, wave) {
  const members = (rollout.instances || []).filter((i) => (i.wave || 0) === (wave.index || 0));
  const done = members.filter((i) => ['INSTANCE_STATE_DONE', 'INSTANCE_STATE_SKIPPED'].includes(i.state)).length;
  const failed = members.filter((i) => i.state === 'INSTANCE_STATE_FAILED').length;
  const total = members.length || wave.size || 0;
  const index = wave.index || 0;
  const name = index === 0 ? 'Wave 1 (canary)' : `Wave ${index + 1}`;
  const gate = [];
  if (wave.state === 'WAVE_STATE_SOAKING' && wave.soakUntil) {
    gate.push(h('p', { class: 'gate' }, h('span', { 'aria-hidden': 'true' }, '⟳ '), 'Soaking: ',
      h('span', { class: 'countdown', 'data-until': wave.soakUntil }, countdown(wave.soakUntil))));
  }
  if (wave.state === 'WAVE_STATE_WAITING_APPROVAL') {
    gate.push(h('p', { class: 'gate' }, h('span', { 'aria-hidden': 'true' }, '⚠ '), 'Waiting for an approval'));
  }
  if (wave.approvedBy) {
    gate.push(h('p', { class: 'muted' }, `Approved by ${wave.approvedBy}${wave.approvalComment ? `: “${wave.approvalComment}”` : ''}`));
  }
  return h('section', { class: 'wave', 'data-wave': String(index), 'aria-label': name },
    h('h4', {}, `${name} `, badge(stateName(wave.state, 'WAVE_STATE_') || 'not started', WAVE_TONE[wave.state] || 'idle')),
    h('div', { class: 'progress-row' },
      h('progress', { max: String(Math.max(total, 1)), value: String(done), 'aria-label': `${name} progress` }),
      h('span', { class: 'wave-count' }, `${done} of ${total} done${failed ? `, ${failed} failed` : ''}`)),
    gate);
}

function controls(ctx, rollout, refresh) {
  const { caller } = ctx;
  if (!caller.mayRollOut || ENDED.includes(rollout.state)) return null;
  const id = rollout.rolloutId;
  const act = (verb, title, body, options) => h('button', {
    type: 'button', id: `rollout-${verb}`, class: options && options.primary ? 'primary' : '',
    onclick: async () => {
      const answer = await confirmAction({
        title, body, confirmLabel: title, comment: options && options.comment,
        run: (comment) => api.post(`/v1/rollouts/${encodeURIComponent(id)}:${verb}`, { comment }),
      });
      if (answer) refresh(answer);
    },
  }, title);
  const waiting = (rollout.waves || []).some((w) => w.state === 'WAVE_STATE_WAITING_APPROVAL');
  const buttons = [];
  if (waiting) {
    buttons.push(act('approve', 'Approve', ['The next wave starts as soon as you approve.', 'Your name and comment are recorded in the audit trail.'], { comment: true, primary: true }));
  }
  if (rollout.state === 'ROLLOUT_STATE_PAUSED') {
    buttons.push(act('resume', 'Resume', ['The rollout sends upgrades again where it stopped.']));
  } else if (rollout.state !== 'ROLLOUT_STATE_STOPPING') {
    buttons.push(act('pause', 'Pause', ['No new upgrades are sent; those under way finish and are followed.']));
  }
  if (rollout.state !== 'ROLLOUT_STATE_STOPPING') {
    buttons.push(act('cancel', 'Cancel', ['The rollout stops for good: nothing new is sent, upgrades under way finish.', 'Upgrades already done stay done: an engine upgrade cannot be undone.']));
  }
  return h('div', { class: 'actions', role: 'group', 'aria-label': 'Rollout controls' }, buttons);
}

export async function rolloutView(ctx, id) {
  const { main, signal } = ctx;
  const back = h('p', {}, h('a', { href: '#/rollouts' }, '← Rollouts'));
  const body = h('div', { id: 'rollout' });
  const live = h('p', { class: 'muted', id: 'live', 'aria-live': 'polite' }, 'Connecting...');
  replace(main, back, h('h2', {}, `Rollout ${id}`), live, body);
  const render = (rollout) => {
    const instances = (rollout.instances || []).map((i) => [
      i.dbInstanceId,
      String((i.wave || 0) + 1),
      badge(stateName(i.state, 'INSTANCE_STATE_') || 'pending', INSTANCE_TONE[i.state] || 'idle'),
      i.alibabaCode ? h('code', {}, i.alibabaCode) : '—',
      i.message || '',
    ]);
    replace(body,
      h('dl', { class: 'facts' },
        h('dt', {}, 'State'), h('dd', { id: 'rollout-state' }, rolloutBadge(rollout.state)),
        rollout.waitingReason ? [h('dt', {}, 'Why'), h('dd', {}, rollout.waitingReason)] : null,
        h('dt', {}, 'Target'), h('dd', {}, rollout.targetEngineVersion),
        h('dt', {}, 'Progress'), h('dd', {}, progress(rollout)),
        h('dt', {}, 'Failures'), h('dd', {}, `${rollout.failures || 0} (tolerated: ${rollout.maxFailures || 0})`),
        h('dt', {}, 'Started by'), h('dd', {}, `${rollout.createdBy || '—'} ${when(rollout.createTime)}`)),
      controls(ctx, rollout, render),
      h('h3', {}, 'Waves'),
      (rollout.waves || []).map((w) => waveBlock(rollout, w)),
      h('h3', {}, 'Instances'),
      table('Instances of the rollout', ['Instance', 'Wave', 'State', 'Last Alibaba code', 'What happened'], instances),
      (rollout.excluded || []).length
        ? table('Excluded by the plan', ['Instance', 'Region', 'Now', 'State', 'Reason'], plannedRows(rollout.excluded, true))
        : null);
  };
  const ticker = setInterval(() => {
    for (const el of body.querySelectorAll('.countdown')) el.textContent = countdown(el.dataset.until);
  }, 1000);
  signal.addEventListener('abort', () => clearInterval(ticker));
  // Follow the rollout until it ends or the page changes; reconnect when the stream ends early.
  let last = null;
  while (!signal.aborted) {
    try {
      await watch(`/v1/rollouts/${encodeURIComponent(id)}:watch`, (rollout) => {
        last = rollout;
        live.textContent = `Live: updated ${new Date().toLocaleTimeString()}`;
        render(rollout);
      }, signal);
    } catch (err) {
      if (signal.aborted) return;
      const panel = errorPanel(err, 'Following the rollout');
      replace(live, panel || '');
      if (err.httpStatus >= 400 && err.httpStatus < 500 && err.httpStatus !== 429) return;
    }
    if (last && ENDED.includes(last.state)) {
      live.textContent = 'The rollout has ended.';
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
