// Recent activity: the last upgrades and rollout actions (who, what, outcome) for the instances
// the caller may read, newest first.

import { api } from './api.js';
import { badge, errorPanel, h, replace, table, when } from './view.js';

function outcome(entry) {
  const text = entry.grpcCode && entry.grpcCode !== 'OK' ? `${entry.outcome} (${entry.grpcCode})` : entry.outcome;
  if (entry.outcome === 'failed') return badge(text || 'failed', 'bad');
  return badge(text || 'done', 'good');
}

function what(entry) {
  const parts = [entry.action];
  if (entry.dbInstanceId) parts.push(entry.dbInstanceId);
  if (entry.rolloutId) parts.push(`rollout ${entry.rolloutId}`);
  if (entry.toEngineVersion) parts.push(`${entry.fromEngineVersion ? `${entry.fromEngineVersion} → ` : 'to '}${entry.toEngineVersion}`);
  return parts.join(' · ');
}

export async function activityView(ctx) {
  const { main, signal } = ctx;
  const heading = h('h2', {}, 'Recent activity');
  replace(main, heading, h('p', { class: 'muted' }, 'Loading...'));
  let entries;
  try {
    entries = (await api.get('/v1/activity', signal)).activities || [];
  } catch (err) {
    replace(main, heading, errorPanel(err, 'Reading the activity'));
    return;
  }
  const rows = entries.map((e) => [
    when(e.time),
    e.caller || '(no callers)',
    what(e),
    outcome(e),
    e.alibabaCode ? h('code', {}, e.alibabaCode) : '—',
    e.comment || '',
  ]);
  replace(main, heading,
    h('p', { class: 'muted' }, 'The last upgrades and rollout actions on the instances you may read. The audit trail is the full record.'),
    table('Recent activity, newest first', ['When', 'Who', 'What', 'Outcome', 'Alibaba code', 'Comment'], rows, 'No activity yet.'));
}
