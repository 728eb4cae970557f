// Admin pages: users (create, edit, activate/deactivate, delete), groups (permissions) and
// the audit log.

import { api } from './api.js';
import {
  h, fill, announce, announceError, clearStatus, openDialog, dialogActions, cancelButton,
  confirmDialog, field, formError, showFormError, clearFormError, busy, splitList, time, badge,
  chips, describe,
} from './ui.js';

const ID_PATTERN = '[A-Za-z0-9._@\\-]{1,128}';
const ID_HINT = '1 to 128 letters, digits or . _ @ -; cannot be changed later.';

function pageHead(title, button) {
  return h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, title), button);
}

/** Loads with `fetch` and renders with `render`, keeping focus on the same control. */
async function refresh(container, fetch, render) {
  const focusedId = document.activeElement && document.activeElement.id;
  container.setAttribute('aria-busy', 'true');
  try {
    render(await fetch());
  } catch (e) {
    if (!e.signedOut) fill(container, h('p', { class: 'notice error' }, describe(e)));
  } finally {
    container.removeAttribute('aria-busy');
  }
  if (focusedId && document.getElementById(focusedId)) document.getElementById(focusedId).focus();
}

// --- users ----------------------------------------------------------------------------------

export function usersPage(view, me) {
  const superAdmin = me.role === 'super_admin';
  const table = h('div', { class: 'table-wrap', id: 'users-table' });
  let users = [];
  let groups = [];

  fill(view,
    pageHead('Users', h('button', { type: 'button', class: 'primary', id: 'add-user', onclick: () => userDialog(null) }, 'Add user')),
    h('p', { class: 'lead' }, 'A key works with its owner’s permissions and those of the owner’s groups. Deactivating a user stops all of their keys at once.'),
    table);

  const load = () => refresh(table, async () => {
    const [u, g] = await Promise.all([api.listUsers(), api.listGroups()]);
    users = u.items;
    groups = g.items;
  }, render);

  function render() {
    if (users.length === 0) {
      fill(table, h('p', { class: 'empty' }, 'No users yet. Keys belong to users: add one with “Add user”.'));
      return;
    }
    fill(table, h('table', {},
      h('caption', { class: 'visually-hidden' }, 'Users'),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col' }, 'User'),
        superAdmin ? h('th', { scope: 'col' }, 'Tenant') : null,
        h('th', { scope: 'col' }, 'Status'),
        h('th', { scope: 'col' }, 'Groups'),
        h('th', { scope: 'col' }, 'Permissions'),
        h('th', { scope: 'col' }, 'Created'),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      h('tbody', {}, users.map((u) => h('tr', { dataset: { userId: u.id } },
        h('td', { class: 'name' }, h('span', { class: 'key-name' }, u.id), u.name ? h('span', { class: 'desc' }, u.name) : null),
        superAdmin ? h('td', {}, u.tenant) : null,
        h('td', {}, u.active ? badge('active') : badge('inactive')),
        h('td', {}, chips(u.groups)),
        h('td', {}, chips(u.permissions)),
        h('td', {}, time(u.created_at, '—', { style: 'date' })),
        h('td', { class: 'row-actions' },
          h('a', { class: 'button small', href: `#/keys?owner=${encodeURIComponent(u.id)}`, 'aria-label': `Keys of ${u.id}` }, 'Keys'),
          h('button', { type: 'button', class: 'small', id: `edit-user-${u.id}`, 'aria-label': `Edit ${u.id}`, onclick: () => userDialog(u) }, 'Edit'),
          h('button', { type: 'button', class: 'small', id: `toggle-user-${u.id}`, 'aria-label': `${u.active ? 'Deactivate' : 'Activate'} ${u.id}`, onclick: () => toggle(u) }, u.active ? 'Deactivate' : 'Activate'),
          h('button', { type: 'button', class: 'small danger-text', id: `delete-user-${u.id}`, 'aria-label': `Delete ${u.id}`, onclick: () => remove(u) }, 'Delete')))))));
  }

  async function toggle(u) {
    clearStatus();
    try {
      await api.patchUser(u.id, { active: !u.active });
      announce(u.active
        ? `${u.id} is deactivated: all of their keys are refused (403) until you activate them again.`
        : `${u.id} is active again: their keys work.`);
    } catch (e) {
      if (!e.signedOut) announceError(e);
    }
    load();
  }

  async function remove(u) {
    clearStatus();
    const yes = await confirmDialog({
      title: `Delete the user ${u.id}?`,
      body: ['All of their keys are deleted with them and stop working at once.', 'This cannot be undone.'],
      confirmLabel: 'Delete user and keys',
    });
    if (!yes) return;
    try {
      await api.deleteUser(u.id);
      announce(`Deleted ${u.id} and their keys.`);
    } catch (e) {
      if (!e.signedOut) announceError(e);
    }
    await load();
    view.querySelector('h1').focus();
  }

  function userDialog(existing) {
    clearStatus();
    const id = h('input', { type: 'text', name: 'id', required: true, pattern: ID_PATTERN, autocomplete: 'off', spellcheck: 'false', 'data-field': 'id', value: existing ? existing.id : '', readonly: Boolean(existing) });
    const name = h('input', { type: 'text', name: 'name', autocomplete: 'off', 'data-field': 'name', value: existing ? existing.name : '' });
    const tenant = superAdmin && !existing
      ? h('input', { type: 'text', name: 'tenant', pattern: ID_PATTERN, autocomplete: 'off', spellcheck: 'false', placeholder: 'default', 'data-field': 'tenant' })
      : null;
    const groupBoxes = groups.map((g) => h('label', { class: 'check' },
      h('input', { type: 'checkbox', name: 'groups', value: g.id, checked: existing ? existing.groups.includes(g.id) : false }),
      ' ', g.id, superAdmin ? h('span', { class: 'muted' }, ` (${g.tenant})`) : null));
    const groupSet = h('fieldset', { class: 'checks', 'data-field': 'groups', tabindex: '-1' },
      h('legend', {}, 'Groups'),
      groupBoxes.length ? groupBoxes : h('p', { class: 'muted' }, 'No groups yet: add them on the Groups page.'));
    const permissions = h('input', { type: 'text', name: 'permissions', autocomplete: 'off', spellcheck: 'false', 'data-field': 'permissions', value: existing ? existing.permissions.join(' ') : '', placeholder: 'e.g. orders:read keygate:self' });
    const active = h('input', { type: 'checkbox', name: 'active', checked: existing ? existing.active : true });

    const form = h('form', {
      class: 'stack',
      onsubmit: async (e) => {
        e.preventDefault();
        clearFormError(form);
        const body = {
          name: name.value.trim(),
          active: active.checked,
          groups: [...form.querySelectorAll('input[name=groups]:checked')].map((c) => c.value),
          permissions: splitList(permissions.value),
        };
        const userId = id.value.trim();
        if (!existing && users.some((u) => u.id === userId)) {
          showFormError(form, { field: 'id' }, `ID: there is already a user ${userId}. Use its Edit button to change it.`);
          return;
        }
        if (tenant && tenant.value.trim()) body.tenant = tenant.value.trim();
        await busy(form, async () => {
          try {
            if (existing) await api.patchUser(userId, body);
            else await api.putUser(userId, body);
            dialog.close('saved');
            announce(existing ? `Saved ${userId}.` : `Added the user ${userId}.`);
            load();
          } catch (err) {
            if (!err.signedOut) showFormError(form, err);
          }
        });
      },
    },
    field('ID', id, { hint: existing ? null : ID_HINT }),
    field('Name (optional)', name),
    tenant ? field('Tenant', tenant, { hint: 'Leave empty for the default tenant.' }) : null,
    groupSet,
    field('Permissions', permissions, { hint: 'Separated by commas or spaces. keygate:admin administers the tenant; keygate:self lets the user manage their own keys here.' }),
    h('label', { class: 'check' }, active, ' Active (their keys work)'),
    formError(),
    dialogActions(cancelButton(), h('button', { type: 'submit', class: 'primary' }, existing ? 'Save' : 'Add user')));
    const dialog = openDialog({ title: existing ? `Edit ${existing.id}` : 'Add a user', content: form, className: 'wide' });
    (existing ? name : id).focus();
  }

  load();
}

// --- groups ---------------------------------------------------------------------------------

export function groupsPage(view, me) {
  const superAdmin = me.role === 'super_admin';
  const table = h('div', { class: 'table-wrap', id: 'groups-table' });
  let groups = [];

  fill(view,
    pageHead('Groups', h('button', { type: 'button', class: 'primary', id: 'add-group', onclick: () => groupDialog(null) }, 'Add group')),
    h('p', { class: 'lead' }, 'A group’s permissions go to every member’s keys; a change reaches every gateway at once.'),
    table);

  const load = () => refresh(table, async () => { groups = (await api.listGroups()).items; }, render);

  function render() {
    if (groups.length === 0) {
      fill(table, h('p', { class: 'empty' }, 'No groups yet. Add one with “Add group”.'));
      return;
    }
    fill(table, h('table', {},
      h('caption', { class: 'visually-hidden' }, 'Groups'),
      h('thead', {}, h('tr', {},
        h('th', { scope: 'col' }, 'Group'),
        superAdmin ? h('th', { scope: 'col' }, 'Tenant') : null,
        h('th', { scope: 'col' }, 'Permissions'),
        h('th', { scope: 'col' }, 'Updated'),
        h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
      h('tbody', {}, groups.map((g) => h('tr', { dataset: { groupId: g.id } },
        h('td', { class: 'name' }, h('span', { class: 'key-name' }, g.id)),
        superAdmin ? h('td', {}, g.tenant) : null,
        h('td', {}, chips(g.permissions)),
        h('td', {}, time(g.updated_at, '—', { style: 'date' })),
        h('td', { class: 'row-actions' },
          h('button', { type: 'button', class: 'small', id: `edit-group-${g.id}`, 'aria-label': `Edit ${g.id}`, onclick: () => groupDialog(g) }, 'Edit'),
          h('button', { type: 'button', class: 'small danger-text', id: `delete-group-${g.id}`, 'aria-label': `Delete ${g.id}`, onclick: () => remove(g) }, 'Delete')))))));
  }

  async function remove(g) {
    clearStatus();
    const yes = await confirmDialog({
      title: `Delete the group ${g.id}?`,
      body: ['Its members lose its permissions at once, on every gateway.', 'This cannot be undone.'],
      confirmLabel: 'Delete group',
    });
    if (!yes) return;
    try {
      await api.deleteGroup(g.id);
      announce(`Deleted the group ${g.id}.`);
    } catch (e) {
      if (!e.signedOut) announceError(e);
    }
    await load();
    view.querySelector('h1').focus();
  }

  function groupDialog(existing) {
    clearStatus();
    const id = h('input', { type: 'text', name: 'id', required: true, pattern: ID_PATTERN, autocomplete: 'off', spellcheck: 'false', 'data-field': 'id', value: existing ? existing.id : '', readonly: Boolean(existing) });
    const tenant = superAdmin && !existing
      ? h('input', { type: 'text', name: 'tenant', pattern: ID_PATTERN, autocomplete: 'off', spellcheck: 'false', placeholder: 'default', 'data-field': 'tenant' })
      : null;
    const permissions = h('textarea', { name: 'permissions', rows: '3', spellcheck: 'false', 'data-field': 'permissions', value: existing ? existing.permissions.join('\n') : '', placeholder: 'e.g. invoices:* orders:read' });
    const form = h('form', {
      class: 'stack',
      onsubmit: async (e) => {
        e.preventDefault();
        clearFormError(form);
        const groupId = id.value.trim();
        if (!existing && groups.some((g) => g.id === groupId)) {
          showFormError(form, { field: 'id' }, `ID: there is already a group ${groupId}. Use its Edit button to change it.`);
          return;
        }
        const body = { permissions: splitList(permissions.value) };
        if (existing) body.tenant = existing.tenant;
        else if (tenant && tenant.value.trim()) body.tenant = tenant.value.trim();
        await busy(form, async () => {
          try {
            await api.putGroup(groupId, body);
            dialog.close('saved');
            announce(existing ? `Saved the group ${groupId}.` : `Added the group ${groupId}.`);
            load();
          } catch (err) {
            if (!err.signedOut) showFormError(form, err);
          }
        });
      },
    },
    field('ID', id, { hint: existing ? null : ID_HINT }),
    tenant ? field('Tenant', tenant, { hint: 'Leave empty for the default tenant.' }) : null,
    field('Permissions', permissions, { hint: 'Separated by commas, spaces or new lines. a:* grants every a:… permission.' }),
    formError(),
    dialogActions(cancelButton(), h('button', { type: 'submit', class: 'primary' }, existing ? 'Save' : 'Add group')));
    const dialog = openDialog({ title: existing ? `Edit the group ${existing.id}` : 'Add a group', content: form });
    (existing ? permissions : id).focus();
  }

  load();
}

// --- audit ----------------------------------------------------------------------------------

export function auditPage(view) {
  const PAGE_SIZE = 50;
  const state = { cursors: [null], page: 0 };
  const table = h('div', { class: 'table-wrap', id: 'audit-table' });
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of the audit log' });

  fill(view,
    pageHead('Audit log', h('button', { type: 'button', class: 'secondary', id: 'audit-refresh', onclick: () => { state.cursors = [null]; state.page = 0; load(); } }, 'Refresh')),
    h('p', { class: 'lead' }, 'Every change made through the admin API: who did what, to what, and when. Newest first.'),
    table,
    pager);

  const load = () => refresh(table, async () => {
    const query = { limit: String(PAGE_SIZE) };
    const cursor = state.cursors[state.page];
    if (cursor) query.cursor = cursor;
    return api.audit(query);
  }, (list) => {
    state.cursors[state.page + 1] = list.next_cursor || undefined;
    if (list.items.length === 0) {
      fill(table, h('p', { class: 'empty' }, 'Nothing has been changed yet.'));
    } else {
      fill(table, h('table', {},
        h('caption', { class: 'visually-hidden' }, `Audit log, page ${state.page + 1}`),
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, 'When'),
          h('th', { scope: 'col' }, 'Who'),
          h('th', { scope: 'col' }, 'Action'),
          h('th', { scope: 'col' }, 'Target'),
          h('th', { scope: 'col' }, 'Tenant'))),
        h('tbody', {}, list.items.map((e) => h('tr', {},
          h('td', {}, time(e.at, '—', { style: 'seconds' })),
          h('td', {}, e.actor),
          h('td', {}, h('code', { class: `action ${e.action.split('.').pop()}` }, e.action)),
          h('td', {}, h('code', {}, e.target)),
          h('td', {}, e.tenant))))));
    }
    const hasNext = Boolean(list.next_cursor);
    if (state.page === 0 && !hasNext) {
      pager.replaceChildren();
      return;
    }
    fill(pager,
      h('button', { type: 'button', class: 'secondary', id: 'audit-prev', disabled: state.page === 0, onclick: () => { state.page -= 1; load(); } }, '← Newer'),
      h('span', { class: 'muted' }, `Page ${state.page + 1}`),
      h('button', { type: 'button', class: 'secondary', id: 'audit-next', disabled: !hasNext, onclick: () => { state.page += 1; load(); } }, 'Older →'));
  });

  load();
}
