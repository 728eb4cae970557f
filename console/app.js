// The keygate console: sign-in, the header (who is signed in), navigation between pages.
// Plain ES modules served by keygate itself; no build step, nothing fetched from elsewhere.

import { api, session, whenUnauthorized, describe } from './api.js';
import { h, fill, announce, clearStatus, field, formError, showFormError, busy } from './ui.js';
import { keysPage } from './keys.js';
import { usersPage, groupsPage, auditPage } from './directory.js';

const view = document.getElementById('view');
const nav = document.getElementById('nav');
const who = document.getElementById('who');

/** The signed-in caller (whoami), or null. */
let me = null;

const PAGES = {
  keys: { label: (m) => (m.role === 'self' ? 'My API keys' : 'All API keys'), render: keysPage },
  users: { label: () => 'Users', render: usersPage, admin: true },
  groups: { label: () => 'Groups', render: groupsPage, admin: true },
  audit: { label: () => 'Audit log', render: auditPage, admin: true },
};

whenUnauthorized((error) => {
  error.signedOut = true;
  signOut('You were signed out: keygate no longer accepts your token. '
    + 'The key may have been revoked, disabled or rolled, it may have expired, or its owner was deactivated. '
    + 'Sign in again to continue.');
});

function signOut(message) {
  session.token = null;
  me = null;
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close('signed-out');
  if (location.hash) history.replaceState(null, '', location.pathname);
  renderSignIn(message);
}

function renderSignIn(message) {
  nav.hidden = true;
  who.hidden = true;
  nav.replaceChildren();
  who.replaceChildren();
  clearStatus();
  document.title = 'Sign in · keygate console';
  const token = h('input', {
    type: 'password', id: 'token', name: 'token', required: true, autocomplete: 'off',
    spellcheck: 'false', 'data-field': 'token',
  });
  const form = h('form', {
    class: 'stack',
    onsubmit: async (e) => {
      e.preventDefault();
      const value = token.value.trim();
      await busy(form, async () => {
        try {
          const answer = await api.whoami(value);
          session.token = value;
          token.value = '';
          me = answer;
          start();
        } catch (err) {
          session.token = null;
          showFormError(form, err, signInProblem(err));
          token.select();
          token.focus();
        }
      });
    },
  },
  field('Admin token or API key', token, {
    hint: 'The bootstrap token (the value of KEYGATE_ADMIN_TOKEN) or an API key with keygate:admin or keygate:self.',
  }),
  formError(),
  h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Sign in')));
  fill(view, h('section', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title', tabindex: '-1' }, 'Sign in to keygate'),
    message ? h('p', { class: 'notice error', role: 'alert', id: 'signed-out' }, message) : null,
    form,
    h('p', { class: 'hint' },
      'The token is kept in this browser tab only (sessionStorage) and sent only to this gateway’s admin API. '
      + 'It is forgotten when you sign out or close the tab.')));
  token.focus();
}

function signInProblem(err) {
  switch (err.code) {
    case 'unauthorized':
      return 'That token was not accepted. Check that you pasted all of it: it must be the bootstrap token, '
        + 'or an API key that is active, not expired, and whose owner is active.';
    case 'forbidden':
      return 'That key is valid, but it cannot use the console: it needs the keygate:admin or keygate:self permission.';
    default:
      return describe(err);
  }
}

function whoText(m) {
  switch (m.role) {
    case 'super_admin':
      return [h('strong', {}, 'bootstrap token'), ' · super-admin of every tenant'];
    case 'tenant_admin':
      return [h('strong', {}, m.user), ` · admin of tenant ${m.tenant}`];
    default:
      return [h('strong', {}, m.user), ` · own keys, tenant ${m.tenant}`];
  }
}

/** Signed in: the header, the navigation, and the page the address names. */
function start() {
  fill(who,
    h('span', { id: 'signed-in-as' }, 'Signed in as ', whoText(me)),
    h('button', { type: 'button', class: 'secondary small', id: 'sign-out', onclick: () => { signOut(); announce('Signed out.'); } }, 'Sign out'));
  who.hidden = false;
  const links = Object.entries(PAGES)
    .filter(([, p]) => !p.admin || me.role !== 'self')
    .map(([name, p]) => h('a', { href: `#/${name}`, id: `nav-${name}`, dataset: { page: name } }, p.label(me)));
  fill(nav, links);
  nav.hidden = false;
  route();
  view.querySelector('h1').focus();
}

function route() {
  if (!me) return;
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  let name = path || 'keys';
  if (!PAGES[name] || (PAGES[name].admin && me.role === 'self')) name = 'keys';
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.page === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close('navigated');
  clearStatus();
  const page = PAGES[name];
  document.title = `${page.label(me)} · keygate console`;
  page.render(view, me, new URLSearchParams(query || ''));
}

// The skip link moves focus without touching the address (which names the page).
document.querySelector('.skip').addEventListener('click', (e) => {
  e.preventDefault();
  document.getElementById('main').focus();
});

window.addEventListener('hashchange', () => {
  route();
  const heading = view.querySelector('h1');
  if (heading) heading.focus();
});

async function boot() {
  const token = session.token;
  if (!token) {
    renderSignIn();
    return;
  }
  try {
    me = await api.whoami(token);
    start();
  } catch (err) {
    if (err.code === 'unauthorized' || err.code === 'forbidden') {
      signOut(signInProblem(err));
    } else {
      // Keep the token: the gateway may just be restarting.
      fill(view, h('section', { class: 'card' },
        h('h1', { tabindex: '-1' }, 'keygate is not answering'),
        h('p', { class: 'notice error', role: 'alert' }, describe(err)),
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'secondary', onclick: () => signOut() }, 'Sign out'),
          h('button', { type: 'button', class: 'primary', onclick: boot }, 'Try again'))));
    }
  }
}

boot();
