// Small DOM helpers: elements built with text (never HTML strings), modal dialogs that move
// focus in and back, the status line, dates, badges and form errors.

import { describe, fieldLabel } from './api.js';

/**
 * h('button', { type: 'button', onclick: f }, 'Text', child, ...): an element. Attributes
 * starting with "on" become listeners; `class`, `text`, `dataset` and booleans are handled.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'class') {
      el.className = value;
    } else if (name === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (name === 'value') {
      el.value = value;
    } else if (name === 'checked' || name === 'selected') {
      el[name] = Boolean(value);
    } else if (value === true) {
      el.setAttribute(name, '');
    } else {
      el.setAttribute(name, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
export function newId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

// --- the status line ------------------------------------------------------------------------

export function announce(text, kind = 'ok') {
  const status = document.getElementById('status');
  fill(status, text ? h('p', { class: `notice ${kind}` }, text) : null);
}

export function announceError(error) {
  announce(describe(error), 'error');
}

export function clearStatus() {
  announce('');
}

// --- dialogs --------------------------------------------------------------------------------

/**
 * Opens a modal <dialog> titled `title` with `content`; focus moves into it (to the element
 * with `autofocus`, else the first field) and returns to what had it when it closes. Escape
 * closes it (the browser's own `cancel`). Resolves when it closes; the element is removed.
 */
export function openDialog({ title, content, className = '', onClose, labelId }) {
  const opener = document.activeElement;
  const openerId = opener && opener.id;
  const titleId = labelId || newId('dialog-title');
  const dialog = h('dialog', { class: `dialog ${className}`, 'aria-labelledby': titleId },
    h('h2', { id: titleId }, title),
    content);
  document.body.append(dialog);
  const closed = new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      if (onClose) onClose(dialog);
      dialog.remove();
      restoreFocus(opener, openerId);
      resolve(dialog.returnValue);
    }, { once: true });
  });
  dialog.showModal();
  const first = dialog.querySelector('[autofocus]')
    || dialog.querySelector('input:not([type=hidden]):not([disabled]), select, textarea, button');
  if (first) first.focus();
  dialog.closed = closed;
  return dialog;
}

function restoreFocus(opener, openerId) {
  // The opener may have been re-rendered while the dialog was open (a refreshed list):
  // then its successor with the same id, else the page heading.
  let target = opener && opener.isConnected ? opener : null;
  if (!target && openerId) target = document.getElementById(openerId);
  if (!target) target = document.querySelector('#view h1');
  if (target) target.focus();
}

/** A row of dialog buttons: Cancel (closes) and the given primary button. */
export function dialogActions(...buttons) {
  return h('div', { class: 'actions' }, ...buttons);
}

export function cancelButton(label = 'Cancel') {
  return h('button', {
    type: 'button',
    class: 'secondary',
    onclick: (e) => e.target.closest('dialog').close('cancel'),
  }, label);
}

/** Asks a yes/no question; resolves true only when the confirm button was pressed. */
export async function confirmDialog({ title, body, confirmLabel, danger = true }) {
  const dialog = openDialog({
    title,
    className: 'confirm',
    content: [
      ...[].concat(body).map((p) => h('p', {}, p)),
      dialogActions(
        cancelButton(),
        h('button', {
          type: 'button',
          class: danger ? 'danger' : 'primary',
          onclick: () => dialog.close('confirm'),
        }, confirmLabel),
      ),
    ],
  });
  // The safe choice has the focus: Enter on a confirmation must not destroy anything.
  dialog.querySelector('button.secondary').focus();
  return (await dialog.closed) === 'confirm';
}

// --- forms ----------------------------------------------------------------------------------

/** A labelled field: `control` gets an id; `hint` is tied to it by aria-describedby. */
export function field(label, control, { hint, extra } = {}) {
  const id = control.id || newId('field');
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) {
    const before = control.getAttribute('aria-describedby');
    control.setAttribute('aria-describedby', before ? `${hintId} ${before}` : hintId);
  }
  return h('div', { class: 'field' },
    h('label', { for: id }, label),
    control,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
    extra || null);
}

/** An error box inside a form; filled by `showFormError`. */
export function formError() {
  return h('div', { class: 'form-error', role: 'alert' });
}

/**
 * Shows an API error in a form: the sentence in its error box, and when the API named a
 * field that the form has (data-field), that control is marked invalid and focused.
 */
export function showFormError(form, error, message) {
  const box = form.querySelector('.form-error');
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
  fill(box, h('p', {}, message || describe(error)));
  if (error && error.field) {
    const base = error.field.replace(/\[\d+\]$/, '');
    const control = form.querySelector(`[data-field~="${CSS.escape(base)}"]`);
    if (control) {
      control.setAttribute('aria-invalid', 'true');
      control.focus();
    }
  }
}

export function clearFormError(form) {
  const box = form.querySelector('.form-error');
  if (box) box.replaceChildren();
  for (const el of form.querySelectorAll('[aria-invalid]')) el.removeAttribute('aria-invalid');
}

/** Disables a form's buttons while `work` runs. */
export async function busy(form, work) {
  const buttons = [...form.querySelectorAll('button')];
  for (const b of buttons) b.disabled = true;
  form.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    for (const b of buttons) b.disabled = false;
    form.removeAttribute('aria-busy');
  }
}

/** "a, b c,,d" → ["a", "b", "c", "d"] */
export function splitList(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

/** Characters as the API counts them (Unicode scalar values, not UTF-16 units). */
export function charCount(text) {
  return [...text].length;
}

/** A textarea with a live "n / max" counter below it. */
export function counted(textarea, max) {
  const counter = h('p', { class: 'counter', id: `${textarea.id || newId('ta')}-count` });
  const update = () => {
    const n = charCount(textarea.value);
    counter.textContent = n > max
      ? `${n} / ${max} characters: ${n - max} too many`
      : `${n} / ${max} characters`;
    counter.classList.toggle('over', n > max);
  };
  textarea.addEventListener('input', update);
  textarea.setAttribute('aria-describedby', counter.id);
  update();
  return counter;
}

// --- display --------------------------------------------------------------------------------

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const dateTimeSeconds = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

/**
 * A <time> for an RFC 3339 string; `empty` when there is none. `style`: 'minutes' (default),
 * 'seconds', or 'date' (the full time is then in the tooltip).
 */
export function time(iso, empty = '—', { style = 'minutes' } = {}) {
  if (!iso) return h('span', { class: 'muted' }, empty);
  const d = new Date(iso);
  const format = { seconds: dateTimeSeconds, date: dateOnly }[style] || dateTime;
  return h('time', { datetime: iso, title: dateTimeSeconds.format(d) }, format.format(d));
}

export function badge(text, kind) {
  return h('span', { class: `badge ${kind || text}` }, text);
}

export function chips(list, empty = 'none') {
  if (!list || list.length === 0) return h('span', { class: 'muted' }, empty);
  return h('span', { class: 'chips' }, list.map((p) => h('code', { class: 'chip' }, p)));
}

export { describe, fieldLabel };
