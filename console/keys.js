// "All API keys" (admins) and "My API keys" (keygate:self): the list with filters and
// paging, and the dialogs to create, edit, disable/enable, roll and delete a key.

import { api } from './api.js';
import {
  h, fill, announce, announceError, clearStatus, openDialog, dialogActions, cancelButton,
  confirmDialog, field, formError, showFormError, clearFormError, busy, splitList, charCount,
  counted, time, badge, describe,
} from './ui.js';

const PAGE_SIZE = 50;
const NAME_MAX = 200;
const DESCRIPTION_MAX = 1000;

const DURATIONS = [
  ['7d', '7 days'],
  ['30d', '30 days'],
  ['90d', '90 days'],
  ['365d', '1 year'],
  ['date', 'Until a date…'],
  ['never', 'Never'],
];

const GRACES = [
  ['', 'Stop it now'],
  ['1h', '1 hour'],
  ['24h', '24 hours'],
  ['7d', '7 days'],
];

/** Renders the keys page into `view`. `me` is the whoami answer; `params` the route's query. */
export function keysPage(view, me, params) {
  const admin = me.role !== 'self';
  const superAdmin = me.role === 'super_admin';
  const title = admin ? 'All API keys' : 'My API keys';
  const state = {
    owner: admin ? params.get('owner') || '' : '',
    status: params.get('status') || '',
    cursors: [null], // cursors[i] fetches page i
    page: 0,
  };

  const ownerInput = admin
    ? h('input', { type: 'search', name: 'owner', value: state.owner, list: 'user-ids', autocomplete: 'off', spellcheck: 'false', placeholder: 'any owner' })
    : null;
  const statusSelect = h('select', { name: 'status' },
    h('option', { value: '' }, 'Any status'),
    ['active', 'disabled', 'expired'].map((s) => h('option', { value: s, selected: s === state.status }, s)));
  const filters = h('form', {
    class: 'filters',
    role: 'search',
    'aria-label': 'Filter keys',
    onsubmit: (e) => {
      e.preventDefault();
      state.owner = ownerInput ? ownerInput.value.trim() : '';
      state.status = statusSelect.value;
      state.cursors = [null];
      state.page = 0;
      load();
    },
  },
  admin ? field('Owner', ownerInput) : null,
  field('Status', statusSelect),
  h('div', { class: 'filter-buttons' },
    h('button', { type: 'submit', class: 'secondary' }, 'Apply filters'),
    h('button', {
      type: 'button',
      class: 'link',
      onclick: () => {
        if (ownerInput) ownerInput.value = '';
        statusSelect.value = '';
        filters.requestSubmit();
      },
    }, 'Clear')));

  const table = h('div', { class: 'table-wrap', id: 'keys-table' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of keys' });
  const userList = admin ? h('datalist', { id: 'user-ids' }) : null;

  fill(view,
    h('div', { class: 'page-head' },
      h('h1', { tabindex: '-1' }, title),
      h('button', { type: 'button', class: 'primary', id: 'create-key', onclick: () => createDialog() }, 'Create key')),
    h('p', { class: 'lead' }, admin
      ? `Every key ${superAdmin ? 'of every tenant' : `of tenant ${me.tenant}`}: who owns it, whether it works, and when it was last used.`
      : `The keys that belong to you (${me.user}). A key works with your permissions, or fewer if you narrow it.`),
    filters,
    table,
    pager,
    userList);

  if (admin) {
    api.listUsers().then((users) => {
      fill(userList, users.items.map((u) => h('option', { value: u.id }, u.name || u.tenant)));
    }).catch(() => {});
  }

  async function load({ keepFocus = true } = {}) {
    const focusedId = keepFocus && document.activeElement && document.activeElement.id;
    const query = { limit: String(PAGE_SIZE) };
    if (state.owner) query.owner = state.owner;
    if (state.status) query.status = state.status;
    const cursor = state.cursors[state.page];
    if (cursor) query.cursor = cursor;
    table.setAttribute('aria-busy', 'true');
    let list;
    try {
      list = await api.listKeys(query);
    } catch (e) {
      table.removeAttribute('aria-busy');
      if (!e.signedOut) fill(table, h('p', { class: 'notice error' }, describe(e)));
      return;
    }
    table.removeAttribute('aria-busy');
    state.cursors[state.page + 1] = list.next_cursor || undefined;
    renderTable(list.items);
    renderPager(Boolean(list.next_cursor));
    if (focusedId && !document.getElementById(focusedId)) {
      view.querySelector('h1').focus();
    } else if (focusedId) {
      document.getElementById(focusedId).focus();
    }
  }

  function renderTable(items) {
    if (items.length === 0) {
      const filtered = state.owner || state.status;
      fill(table, h('p', { class: 'empty' }, filtered
        ? 'No keys match these filters.'
        : 'No keys yet. Create one with “Create key”.'));
      return;
    }
    fill(table, h('table', { class: 'keys' },
      h('caption', { class: 'visually-hidden' }, `${title}, page ${state.page + 1}`),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col' }, 'Name'),
        h('th', { scope: 'col' }, 'Key'),
        admin ? h('th', { scope: 'col' }, 'Owner') : null,
        h('th', { scope: 'col' }, 'Status'),
        h('th', { scope: 'col' }, 'Created'),
        h('th', { scope: 'col' }, 'Expires'),
        h('th', { scope: 'col' }, 'Last used'),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      h('tbody', {}, items.map(row))));
  }

  function row(key) {
    const toggleLabel = key.status === 'disabled' ? 'Enable' : 'Disable';
    return h('tr', { dataset: { keyId: key.id } },
      h('td', { class: 'name' },
        h('span', { class: 'key-name' }, key.name),
        key.description ? h('span', { class: 'desc', title: key.description }, key.description) : null,
        key.permissions ? h('span', { class: 'desc' }, `narrowed to ${key.permissions.join(', ') || 'nothing'}`) : null),
      h('td', {}, key.start ? h('code', { class: 'start', title: key.id }, `${key.start}…`) : h('span', { class: 'muted', title: key.id }, 'imported')),
      admin ? h('td', {}, key.owner, superAdmin ? h('span', { class: 'desc' }, key.tenant) : null) : null,
      h('td', {}, badge(key.status)),
      h('td', {}, time(key.created_at, '—', { style: 'date' })),
      h('td', {}, time(key.expires_at, 'never', { style: 'date' })),
      h('td', {}, time(key.last_used_at, 'never')),
      h('td', { class: 'row-actions' },
        h('button', { type: 'button', class: 'small', id: `edit-${key.id}`, 'aria-label': `Edit ${key.name}`, onclick: () => editDialog(key) }, 'Edit'),
        h('button', { type: 'button', class: 'small', id: `toggle-${key.id}`, 'aria-label': `${toggleLabel} ${key.name}`, onclick: () => toggle(key) }, toggleLabel),
        h('button', { type: 'button', class: 'small', id: `roll-${key.id}`, 'aria-label': `Roll ${key.name}`, onclick: () => rollDialog(key) }, 'Roll'),
        h('button', { type: 'button', class: 'small danger-text', id: `delete-${key.id}`, 'aria-label': `Delete ${key.name}`, onclick: () => remove(key) }, 'Delete')));
  }

  function renderPager(hasNext) {
    if (state.page === 0 && !hasNext) {
      pager.replaceChildren();
      return;
    }
    fill(pager,
      h('button', {
        type: 'button', class: 'secondary', id: 'keys-prev', disabled: state.page === 0,
        onclick: () => { state.page -= 1; load(); },
      }, '← Previous'),
      h('span', { class: 'muted' }, `Page ${state.page + 1}`),
      h('button', {
        type: 'button', class: 'secondary', id: 'keys-next', disabled: !hasNext,
        onclick: () => { state.page += 1; load(); },
      }, 'Next →'));
  }

  async function toggle(key) {
    clearStatus();
    const enable = key.status === 'disabled';
    try {
      await api.updateKey(key.id, { enabled: enable });
      announce(enable
        ? `“${key.name}” is enabled: requests with it are accepted again.`
        : `“${key.name}” is disabled: every request with it is refused (403) until you enable it.`);
    } catch (e) {
      if (!e.signedOut) announceError(e);
    }
    load();
  }

  async function remove(key) {
    clearStatus();
    const yes = await confirmDialog({
      title: `Delete the key “${key.name}”?`,
      body: [
        `Every request that uses ${key.start ? `${key.start}…` : 'it'} will be refused (401), on every gateway at once.`,
        'This cannot be undone.',
      ],
      confirmLabel: 'Delete key',
    });
    if (!yes) return;
    try {
      await api.deleteKey(key.id);
      announce(`Deleted “${key.name}”. It no longer works anywhere.`);
    } catch (e) {
      if (!e.signedOut) announceError(e);
    }
    load({ keepFocus: false });
    view.querySelector('h1').focus();
  }

  function createDialog() {
    clearStatus();
    const name = h('input', { type: 'text', name: 'name', required: true, maxlength: String(NAME_MAX), autocomplete: 'off', 'data-field': 'name' });
    const description = h('textarea', { name: 'description', rows: '3', 'data-field': 'description' });
    const counter = counted(description, DESCRIPTION_MAX);
    const owner = admin
      ? h('input', { type: 'text', name: 'owner', required: true, list: 'user-ids', autocomplete: 'off', spellcheck: 'false', 'data-field': 'owner', value: state.owner || '' })
      : null;
    const duration = h('select', { name: 'duration', 'data-field': 'expires_in never_expires' },
      DURATIONS.map(([value, label]) => h('option', { value, selected: value === '90d' }, label)));
    const date = h('input', { type: 'date', name: 'expires_on', min: isoDate(addDays(new Date(), 1)), 'data-field': 'expires_at' });
    const dateField = field('Expires on', date, { hint: 'The key works until the end of this day, in your time zone.' });
    dateField.hidden = true;
    duration.addEventListener('change', () => {
      dateField.hidden = duration.value !== 'date';
      date.required = duration.value === 'date';
      if (duration.value === 'date') date.focus();
    });
    const permissions = h('input', { type: 'text', name: 'permissions', autocomplete: 'off', spellcheck: 'false', 'data-field': 'permissions', placeholder: 'e.g. orders:read invoices:*' });

    const form = h('form', {
      class: 'stack',
      onsubmit: async (e) => {
        e.preventDefault();
        clearFormError(form);
        if (charCount(description.value) > DESCRIPTION_MAX) {
          showFormError(form, { field: 'description' }, `Description: at most ${DESCRIPTION_MAX} characters, please shorten it.`);
          return;
        }
        const body = { name: name.value };
        if (description.value) body.description = description.value;
        if (owner) body.owner = owner.value.trim();
        if (duration.value === 'never') body.never_expires = true;
        else if (duration.value === 'date') body.expires_at = endOfDay(date.value).toISOString();
        else body.expires_in = duration.value;
        const perms = splitList(permissions.value);
        if (perms.length) body.permissions = perms;
        await busy(form, async () => {
          try {
            const issued = await api.createKey(body);
            dialog.close('created');
            load();
            await secretDialog(issued, {
              title: 'Copy your new API key',
              done: `Key “${issued.name}” created. Copy it now: it is shown only once.`,
            });
          } catch (err) {
            if (!err.signedOut) showFormError(form, err);
          }
        });
      },
    },
    field('Name', name, { hint: 'What the key is for, e.g. “CI deploys”. Required.' }),
    field('Description', description, { extra: counter }),
    owner ? field('Owner', owner, { hint: 'The user the key belongs to; it gets their permissions.' }) : null,
    field('Expires', duration),
    dateField,
    field('Permissions (optional)', permissions, {
      hint: admin
        ? 'Narrow the key to some of its owner’s permissions, separated by commas or spaces. Leave empty for all of them.'
        : 'Narrow the key to some of your permissions, separated by commas or spaces. Leave empty for all of them.',
    }),
    formError(),
    dialogActions(cancelButton(), h('button', { type: 'submit', class: 'primary' }, 'Create key')));
    const dialog = openDialog({ title: 'Create an API key', content: form, className: 'wide' });
    name.focus();
  }

  function editDialog(key) {
    clearStatus();
    const name = h('input', { type: 'text', name: 'name', required: true, maxlength: String(NAME_MAX), value: key.name, 'data-field': 'name' });
    const description = h('textarea', { name: 'description', rows: '3', value: key.description || '', 'data-field': 'description' });
    const counter = counted(description, DESCRIPTION_MAX);
    const form = h('form', {
      class: 'stack',
      onsubmit: async (e) => {
        e.preventDefault();
        clearFormError(form);
        if (charCount(description.value) > DESCRIPTION_MAX) {
          showFormError(form, { field: 'description' }, `Description: at most ${DESCRIPTION_MAX} characters, please shorten it.`);
          return;
        }
        await busy(form, async () => {
          try {
            await api.updateKey(key.id, { name: name.value, description: description.value });
            dialog.close('saved');
            announce(`Saved “${name.value}”.`);
          } catch (err) {
            if (!err.signedOut) showFormError(form, err);
          }
        });
        load();
      },
    },
    h('p', { class: 'muted' }, `Key ${key.start ? `${key.start}…` : key.id}, owned by ${key.owner}.`),
    field('Name', name),
    field('Description', description, { extra: counter }),
    formError(),
    dialogActions(cancelButton(), h('button', { type: 'submit', class: 'primary' }, 'Save')));
    const dialog = openDialog({ title: `Edit “${key.name}”`, content: form });
    name.focus();
  }

  function rollDialog(key) {
    clearStatus();
    const grace = h('select', { name: 'grace', 'data-field': 'grace' },
      GRACES.map(([value, label]) => h('option', { value, selected: value === '24h' }, label)));
    const form = h('form', {
      class: 'stack',
      onsubmit: async (e) => {
        e.preventDefault();
        clearFormError(form);
        const body = grace.value ? { grace: grace.value } : {};
        const graceLabel = grace.selectedOptions[0].textContent;
        const oldStart = key.start ? ` (${key.start}…)` : '';
        await busy(form, async () => {
          try {
            const issued = await api.rollKey(key.id, body);
            dialog.close('rolled');
            load();
            await secretDialog(issued, {
              title: 'Copy your rolled API key',
              done: `“${key.name}” rolled. Copy the new key now: it is shown only once.`,
              note: grace.value
                ? `The old key${oldStart} keeps working for ${graceLabel}, then stops. Replace it everywhere before then.`
                : `The old key${oldStart} has stopped working.`,
            });
          } catch (err) {
            if (!err.signedOut) showFormError(form, err);
          }
        });
      },
    },
    h('p', {}, `Rolling gives “${key.name}” a new secret, with the same owner, name, description, permissions and lifetime. The old secret is retired.`),
    field('The old key keeps working for', grace, { hint: 'Time to replace the old key where it is used.' }),
    formError(),
    dialogActions(cancelButton(), h('button', { type: 'submit', class: 'primary' }, 'Roll key')));
    const dialog = openDialog({ title: `Roll “${key.name}”`, content: form });
    grace.focus();
  }

  load();
}

/**
 * Shows a new secret once: a read-only field, a Copy button and a plain warning. Closing the
 * dialog (Done, Escape) empties the field and removes the dialog, so the secret leaves the
 * page; nothing else keeps it.
 */
function secretDialog(issued, { title, note, done }) {
  let secret = issued.key;
  delete issued.key;
  const input = h('input', {
    type: 'text', id: 'secret-value', readonly: true, value: secret, spellcheck: 'false',
    autocomplete: 'off', class: 'secret-value', 'aria-describedby': 'secret-warning',
  });
  secret = null;
  // Gone from the page: the value, the field (the dialog follows when it closes).
  const forget = () => {
    input.value = '';
    input.remove();
  };
  const copyStatus = h('p', { class: 'copy-status', role: 'status', 'aria-live': 'polite' });
  const copy = async () => {
    try {
      if (!navigator.clipboard || !window.isSecureContext) throw new Error('no clipboard');
      await navigator.clipboard.writeText(input.value);
      copyStatus.textContent = 'Copied to the clipboard.';
    } catch {
      // Not allowed here (plain http from another host, or a denied permission): select the
      // text so the person can copy it with the keyboard.
      input.focus();
      input.select();
      copyStatus.textContent = 'Your browser did not let the page copy. The key is selected: press Ctrl+C (⌘C on a Mac) to copy it.';
    }
  };
  const dialog = openDialog({
    title,
    className: 'secret wide',
    content: [
      h('p', { class: 'warning', id: 'secret-warning' },
        h('strong', {}, 'This is the only time the key is shown. '),
        'keygate stores only a hash of it, so it cannot be shown again. Copy it now and keep it somewhere safe, such as a password or secret manager. If you lose it, roll the key to get a new one.'),
      h('div', { class: 'field' },
        h('label', { for: 'secret-value' }, `API key “${issued.name}”`),
        h('div', { class: 'secret-row' },
          input,
          h('button', { type: 'button', id: 'copy-secret', class: 'primary', onclick: copy }, 'Copy')),
        copyStatus),
      h('dl', { class: 'facts' },
        h('dt', {}, 'Owner'), h('dd', {}, issued.owner),
        h('dt', {}, 'Expires'), h('dd', {}, time(issued.expires_at, 'never')),
        h('dt', {}, 'Use it as'), h('dd', {}, h('code', {}, 'X-API-Key: <key>'), ' or ', h('code', {}, 'Authorization: Bearer <key>'))),
      note ? h('p', { class: 'notice' }, note) : null,
      dialogActions(h('button', {
        type: 'button',
        class: 'secondary',
        id: 'secret-done',
        onclick: () => { forget(); dialog.close('done'); },
      }, 'Done, I have copied it')),
    ],
    onClose: () => {
      forget();
      if (done) announce(done.replace(/ Copy .*$/, ''));
    },
  });
  // Escape: forget before the dialog even starts closing.
  dialog.addEventListener('cancel', forget);
  document.getElementById('copy-secret').focus();
  announce(done);
  return dialog.closed;
}

function addDays(d, n) {
  const copy = new Date(d);
  copy.setDate(copy.getDate() + n);
  return copy;
}

function isoDate(d) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** "2025-03-01" → 23:59:59 that day, local time: the key works all that day. */
function endOfDay(value) {
  const [y, m, d] = value.split('-').map(Number);
  return new Date(y, m - 1, d, 23, 59, 59);
}
