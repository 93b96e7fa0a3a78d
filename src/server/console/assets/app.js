// The console's entry: who the caller is (GET /v1/caller), signing in with a bearer token when
// the gateway asks for one, and the hash routes of the views. Every view stops its requests and
// watches when another one takes its place.

import { ApiError, api, session } from './api.js';
import { activityView } from './activity.js';
import { fleetView, instanceView } from './fleet.js';
import { planView, rolloutView, rolloutsView } from './rollouts.js';
import { errorPanel, h, replace } from './view.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
let caller = null;
let running = null;

const ROUTES = [
  [/^#\/fleet$/, 'fleet', (ctx) => fleetView(ctx)],
  [/^#\/instances\/([^/?]+)$/, 'fleet', (ctx, m, params) => instanceView(ctx, decodeURIComponent(m[1]), params)],
  [/^#\/rollouts$/, 'rollouts', (ctx) => rolloutsView(ctx)],
  [/^#\/rollouts\/new$/, 'rollouts', (ctx) => planView(ctx)],
  [/^#\/rollouts\/([^/?]+)$/, 'rollouts', (ctx, m) => rolloutView(ctx, decodeURIComponent(m[1]))],
  [/^#\/activity$/, 'activity', (ctx) => activityView(ctx)],
];

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function signInForm(problem) {
  nav.hidden = true;
  who.replaceChildren();
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'token-hint' });
  const form = h('form', { id: 'signin-form', 'aria-label': 'Sign in' },
    h('div', { class: 'field' },
      h('label', { for: 'token' }, 'Bearer token'),
      token,
      h('small', { id: 'token-hint' }, 'The token of your [[callers]] entry. It is kept for this tab only and sent only to this gateway.')),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'signin-button' }, 'Sign in')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    session.signIn(token.value.trim());
    await start();
  });
  replace(main, h('h2', {}, 'Sign in'), problem ? errorPanel(problem, 'Signing in') : null, form);
  token.focus();
}

function showCaller() {
  nav.hidden = false;
  if (!caller.authenticated) {
    replace(who, h('span', { class: 'muted' }, 'No sign-in: this gateway has no callers (loopback only).'));
    return;
  }
  replace(who,
    h('span', {}, 'Signed in as ', h('strong', { id: 'caller-name' }, caller.name)),
    ' ',
    h('button', {
      type: 'button', id: 'signout',
      onclick: () => {
        session.signOut();
        caller = null;
        signInForm(null);
      },
    }, 'Sign out'));
}

async function route() {
  if (running) running.abort();
  if (!caller) return;
  running = new AbortController();
  const hash = location.hash || '#/fleet';
  const [path, search] = hash.split('?');
  const params = new URLSearchParams(search || '');
  if (path === '#/signin') {
    session.signOut();
    caller = null;
    signInForm(null);
    return;
  }
  const found = ROUTES.map(([re, section, view]) => [path.match(re), section, view]).find(([m]) => m);
  for (const link of nav.querySelectorAll('a')) {
    if (found && link.dataset.section === found[1]) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  // Each view draws into a box of its own: one that was replaced (its requests aborted) may
  // still finish drawing, but into a box no longer on the page.
  const box = h('div');
  main.replaceChildren(box);
  const ctx = { main: box, caller, signal: running.signal, navigate };
  if (!found) {
    replace(main, h('h2', {}, 'Not found'), h('p', {}, h('a', { href: '#/fleet' }, 'Go to the fleet')));
    return;
  }
  const [match, , view] = found;
  try {
    await view(ctx, match, params);
  } catch (err) {
    if (err.name === 'AbortError') return;
    if (err instanceof ApiError && err.unauthenticated) {
      caller = null;
      signInForm(err);
      return;
    }
    replace(box, errorPanel(err, 'Showing the page') || '');
  }
}

async function start() {
  try {
    caller = await api.get('/v1/caller');
  } catch (err) {
    caller = null;
    if (err instanceof ApiError && err.unauthenticated) {
      // A token that was tried and refused says why; no token yet is just the form.
      signInForm(session.token() ? err : null);
      return;
    }
    replace(main, errorPanel(err, 'Reaching the gateway'));
    return;
  }
  showCaller();
  await route();
}

window.addEventListener('hashchange', route);
start();
