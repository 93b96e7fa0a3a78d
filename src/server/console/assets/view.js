// Small DOM helpers shared by the views: elements without innerHTML (every text is a text
// node), error panels that say what the gateway refused and why, status labels that do not
// rely on colour, and the confirmation dialog.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const SVG_NS = 'http://www.w3.org/2000/svg';

export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) el.setAttribute(name, value);
  }
  append(el, children);
  return el;
}

export function replace(container, ...children) {
  container.replaceChildren();
  append(container, children);
}

// What the gateway refused, for people: the reason and message, each field violation, the
// retry delay; a sign-in prompt for an unknown token.
export function errorPanel(err, doing) {
  if (err && err.name === 'AbortError') return null;
  const title = err.reason
    ? `${doing ? `${doing}: ` : ''}refused (${err.reason})`
    : `${doing ? `${doing}: ` : ''}failed${err.code ? ` (${err.code})` : ''}`;
  const panel = h('div', { class: 'error', role: 'alert' },
    h('p', { class: 'error-title' }, h('span', { 'aria-hidden': 'true' }, '✖ '), title),
    h('p', { class: 'error-message' }, err.message || String(err)),
  );
  if (err.violations && err.violations.length) {
    panel.append(h('ul', { class: 'violations', 'aria-label': 'Fields to correct' },
      err.violations.map((v) => h('li', {}, h('code', {}, v.field), `: ${v.description}`))));
  }
  const rule = err.metadata && err.metadata.rule;
  if (rule) panel.append(h('p', {}, `Rule of your caller policy: ${rule}`));
  if (err.retryDelay) panel.append(h('p', {}, `Try again in ${err.retryDelay}.`));
  if (err.unauthenticated) panel.append(h('p', {}, h('a', { href: '#/signin' }, 'Sign in again')));
  return panel;
}

// A state shown with an icon and its name, never by colour alone.
const TONES = {
  good: '✔', bad: '✖', warn: '⚠', busy: '⟳', idle: '•', pause: '⏸',
};

export function badge(text, tone) {
  return h('span', { class: `badge ${tone}` }, h('span', { 'aria-hidden': 'true' }, `${TONES[tone] || '•'} `), text);
}

export function stateName(value, prefix) {
  return String(value || '').replace(prefix, '').replaceAll('_', ' ').toLowerCase();
}

export function table(caption, headings, rows, empty) {
  if (!rows.length) return h('p', { class: 'muted' }, empty || 'Nothing to show.');
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': caption, tabindex: '0' },
    h('table', {},
      h('caption', {}, caption),
      h('thead', {}, h('tr', {}, headings.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c) => h('td', {}, c)))))));
}

// Asks before an action: `body` says what will happen; with `comment`, a comment is asked for
// and passed to `run`. `run` may throw an ApiError, shown in the dialog. Resolves with run's
// result, or null when the person goes back.
export function confirmAction({ title, body, confirmLabel, comment, run }) {
  const dialog = document.getElementById('confirm');
  const form = document.getElementById('confirm-form');
  const text = document.getElementById('confirm-comment-text');
  const ok = document.getElementById('confirm-ok');
  const back = document.getElementById('confirm-cancel');
  const errors = document.getElementById('confirm-error');
  document.getElementById('confirm-title').textContent = title;
  replace(document.getElementById('confirm-body'), ...[].concat(body).map((p) => h('p', {}, p)));
  document.getElementById('confirm-comment').hidden = !comment;
  text.value = '';
  errors.replaceChildren();
  ok.textContent = confirmLabel || 'Confirm';
  ok.disabled = false;
  return new Promise((resolve) => {
    const done = (value) => {
      form.removeEventListener('submit', onSubmit);
      back.removeEventListener('click', onBack);
      dialog.removeEventListener('cancel', onBack);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onBack = (event) => {
      event.preventDefault();
      done(null);
    };
    const onSubmit = async (event) => {
      event.preventDefault();
      ok.disabled = true;
      errors.replaceChildren();
      try {
        done(await run(text.value.trim()));
      } catch (err) {
        const panel = errorPanel(err, title);
        if (panel) errors.append(panel);
        ok.disabled = false;
      }
    };
    form.addEventListener('submit', onSubmit);
    back.addEventListener('click', onBack);
    dialog.addEventListener('cancel', onBack);
    dialog.showModal();
    (comment ? text : back).focus();
  });
}

export function when(time) {
  if (!time) return '';
  const date = new Date(time);
  return Number.isNaN(date.getTime()) ? time : date.toLocaleString();
}
