// End-to-end tests of the web console: headless Chromium (Debian's chromium, driven by
// playwright-core) against the real keygate binary with the embedded store, and
// `keygate echo` as the upstream. Run by `scripts/test-console` (node --test tests/e2e/).
//
// Every process listens on 127.0.0.1:0; the tests read the chosen ports from the
// `listening listener=… addr=…` log lines. Every wait is bounded. Child processes and the
// browser are stopped at the end, also when a test fails.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const BIN = path.resolve(process.env.KEYGATE_BIN || path.join(root, 'target', 'debug', 'keygate'));
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const SHOTS = path.join(root, 'target', 'e2e-screenshots');
const STEP_MS = 10_000; // any single wait in the browser or on an HTTP call
const START_MS = 20_000; // a process printing its listening lines
const TEST_MS = 90_000; // one test() as a whole

const children = [];
let tmp;
let echo;
let gateway;
let browser;
let context;
let page;
const adminToken = `e2e-${randomBytes(24).toString('hex')}`;
const pageErrors = [];

// --- processes ------------------------------------------------------------------------------

/** Spawns `BIN args` and resolves once it has logged a listening line for each of `names`. */
function startKeygate(args, names, env = {}) {
  const child = spawn(BIN, args, {
    cwd: tmp,
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  children.push(child);
  let log = '';
  const addrs = {};
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`keygate ${args[0]} did not start within ${START_MS} ms:\n${log}`));
    }, START_MS);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${BIN} (build it with cargo build): ${e.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`keygate ${args[0]} exited early (${code ?? signal}):\n${log}`));
    });
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk) => {
      log += chunk;
      for (const m of log.matchAll(/listening listener="?([\w-]+)"? addr=(\S+)/g)) addrs[m[1]] = m[2];
      if (names.every((n) => addrs[n])) {
        clearTimeout(timer);
        resolve({ child, addrs, log: () => log });
      }
    });
  });
}

function stopChildren() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}
// Belt and braces: never leave a gateway behind, whatever happens to the runner.
process.on('exit', stopChildren);
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    stopChildren();
    process.exit(130);
  });
}

// --- HTTP from node (bounded) ---------------------------------------------------------------

async function http(url, { method = 'GET', headers = {}, body } = {}) {
  const response = await fetch(url, {
    method,
    headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  return { status: response.status, json, text, headers: response.headers };
}

const adminUrl = (p) => `http://${gateway.addrs.admin}${p}`;
const proxyUrl = (p) => `http://${gateway.addrs.proxy}${p}`;

function admin(method, p, body) {
  return http(adminUrl(p), { method, body, headers: { authorization: `Bearer ${adminToken}` } });
}

function callProxy(key) {
  return http(proxyUrl('/orders/42'), { headers: { 'x-api-key': key } });
}

// --- browser helpers ------------------------------------------------------------------------

async function shot(name) {
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

const dialog = () => page.locator('dialog[open]');
/** Waits until the dialog is gone: closed, its close handler run, removed from the page. */
const noDialog = () => page.locator('dialog').waitFor({ state: 'detached' });
const heading = () => page.locator('#view h1');
const rowOf = (name) => page.locator('#keys-table tbody tr', { has: page.locator('.key-name', { hasText: name }) });

async function signIn(token) {
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

async function go(navLabel) {
  await page.locator('#nav').getByRole('link', { name: navLabel }).click();
  await page.locator('#view h1', { hasText: navLabel }).waitFor();
}

/** Waits until `check()` resolves truthy, at most STEP_MS. */
async function eventually(check, what) {
  const deadline = Date.now() + STEP_MS;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`${what}: not within ${STEP_MS} ms (last: ${JSON.stringify(last)})`);
}

/** Whether `secret` is anywhere in the page: markup, or the value of any field. */
function pageHolds(secret) {
  return page.evaluate((s) => document.documentElement.outerHTML.includes(s)
    || [...document.querySelectorAll('input, textarea')].some((el) => el.value.includes(s)), secret);
}

// --- setup ----------------------------------------------------------------------------------

before(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'keygate-e2e-'));
  await mkdir(SHOTS, { recursive: true });
  echo = await startKeygate(['echo', '--listen', '127.0.0.1:0'], ['echo']);
  const config = [
    'proxy: { listen: "127.0.0.1:0" }',
    'admin: { listen: "127.0.0.1:0" }',
    'status: { listen: "127.0.0.1:0" }',
    'store:',
    '  backend: embedded',
    `  embedded: { path: ${JSON.stringify(path.join(tmp, 'keygate.db'))} }`,
    'routes:',
    '  - name: orders',
    '    path_prefix: /',
    `    upstream: "http://${echo.addrs.echo}"`,
    '    auth: required',
    '    require: ["orders:read"]',
    '',
  ].join('\n');
  await writeFile(path.join(tmp, 'keygate.yaml'), config);
  gateway = await startKeygate(['serve', '--config', path.join(tmp, 'keygate.yaml')],
    ['proxy', 'admin', 'status'], { KEYGATE_ADMIN_TOKEN: adminToken });

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: START_MS,
    // Playwright gives each launch a fresh, empty profile directory of its own.
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: adminUrl('') });
  page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.setDefaultNavigationTimeout(STEP_MS);
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    // 401/403/400 answers are part of the scenarios; Chromium logs each as a failed load.
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) pageErrors.push(m.text());
  });
}, { timeout: 3 * START_MS });

after(async () => {
  try {
    if (browser) await browser.close();
  } finally {
    stopChildren();
    if (tmp) await rm(tmp, { recursive: true, force: true });
  }
}, { timeout: START_MS });

// --- scenarios ------------------------------------------------------------------------------

test('the page is served with a strict CSP and works under it', { timeout: TEST_MS }, async () => {
  const r = await http(adminUrl('/'));
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-security-policy'), /script-src 'self'/);
  await page.goto(adminUrl('/'));
  await page.locator('#view h1', { hasText: 'Sign in to keygate' }).waitFor();
  assert.equal(await page.locator('#nav').isHidden(), true);
  await shot('01-sign-in');
});

test('a bad token shows an error and stays signed out', { timeout: TEST_MS }, async () => {
  await signIn('not-the-token');
  const error = page.locator('.form-error');
  await error.getByText('was not accepted').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  assert.equal(await page.locator('#nav').isHidden(), true);
  // A well-formed key that does not exist is refused the same way.
  await signIn(`kg_${'A'.repeat(36)}`);
  await error.getByText('was not accepted').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await shot('02-sign-in-refused');
});

test('sign in with the bootstrap token', { timeout: TEST_MS }, async () => {
  await signIn(adminToken);
  await page.locator('#signed-in-as', { hasText: 'bootstrap token' }).waitFor();
  await page.locator('#view h1', { hasText: 'All API keys' }).waitFor();
  await page.getByText('No keys yet').waitFor();
  // The token lives in sessionStorage only.
  assert.equal(await page.evaluate(() => sessionStorage.getItem('keygate.token')), adminToken);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.deepEqual(await page.context().cookies(), []);
});

test('groups and users are managed in the UI', { timeout: TEST_MS }, async () => {
  await go('Groups');
  await page.getByText('No groups yet').waitFor();
  await page.locator('#add-group').click();
  await dialog().getByLabel('ID').fill('billing');
  await dialog().getByLabel('Permissions').fill('orders:read, invoices:*');
  await dialog().getByRole('button', { name: 'Add group' }).click();
  await noDialog();
  const group = page.locator('#groups-table tr[data-group-id="billing"]');
  await group.getByText('invoices:*').waitFor();
  await page.locator('#status', { hasText: 'Added the group billing' }).waitFor();
  await shot('05-groups');

  await go('Users');
  await page.locator('#add-user').click();
  assert.equal(await page.evaluate(() => document.activeElement.name), 'id', 'focus moves into the dialog');
  await dialog().getByLabel('ID').fill('alice');
  await dialog().getByLabel('Name (optional)').fill('Alice Example');
  await dialog().getByLabel('billing').check();
  await dialog().getByLabel('Permissions').fill('reports:read');
  await shot('12-user-dialog');
  await dialog().getByRole('button', { name: 'Add user' }).click();
  await noDialog();
  const alice = page.locator('#users-table tr[data-user-id="alice"]');
  await alice.locator('.badge', { hasText: 'active' }).waitFor();
  const stored = await admin('GET', '/v1/users/alice');
  assert.deepEqual(stored.json.groups, ['billing']);
  assert.deepEqual(stored.json.permissions, ['reports:read']);

  // Adding the same id again is caught before it would replace the user.
  await page.locator('#add-user').click();
  await dialog().getByLabel('ID').fill('alice');
  await dialog().getByRole('button', { name: 'Add user' }).click();
  await dialog().locator('.form-error').getByText('already a user alice').waitFor();
  await page.keyboard.press('Escape');
  await noDialog();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'add-user', 'focus returns to the opener');

  // Deactivate and activate again.
  await alice.getByRole('button', { name: 'Deactivate alice' }).click();
  await alice.locator('.badge', { hasText: 'inactive' }).waitFor();
  assert.equal((await admin('GET', '/v1/users/alice')).json.active, false);
  await alice.getByRole('button', { name: 'Activate alice' }).click();
  await alice.locator('.badge', { hasText: /^active$/ }).waitFor();
  assert.equal((await admin('GET', '/v1/users/alice')).json.active, true);
  await shot('06-users');
});

let secret;

test('create a key, read it from the once-only dialog, call the proxy', { timeout: TEST_MS }, async () => {
  await go('All API keys');
  await page.locator('#create-key').click();
  const d = dialog();
  await d.getByRole('heading', { name: 'Create an API key' }).waitFor();
  await d.getByLabel('Name').fill('CI deploys');
  await d.getByLabel('Description').fill('Deploys from CI');
  await d.getByText('15 / 1000 characters').waitFor();
  await d.getByLabel('Owner').fill('alice');
  await d.getByLabel('Expires', { exact: true }).selectOption('30d');
  await shot('04-create-dialog');

  // "Never" is offered; this gateway refuses it, and the dialog says why.
  await d.getByLabel('Expires', { exact: true }).selectOption('never');
  await d.getByRole('button', { name: 'Create key' }).click();
  await d.locator('.form-error').getByText('not allowed').waitFor();
  assert.equal(await d.getByLabel('Expires', { exact: true }).getAttribute('aria-invalid'), 'true');
  await d.getByLabel('Expires', { exact: true }).selectOption('30d');
  await d.getByRole('button', { name: 'Create key' }).click();

  // The secret, once.
  const s = dialog();
  await s.getByRole('heading', { name: 'Copy your new API key' }).waitFor();
  await s.getByText('This is the only time the key is shown').waitFor();
  await s.getByText('cannot be shown again').waitFor();
  secret = await s.locator('#secret-value').inputValue();
  assert.match(secret, /^kg_[A-Za-z0-9]{36}$/);
  await s.getByRole('button', { name: 'Copy' }).click();
  const copied = await eventually(() => s.locator('.copy-status').textContent(), 'the copy button says what happened');
  if (copied.startsWith('Copied')) {
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  } else {
    // Fallback: the whole key is selected for Ctrl+C.
    assert.equal(await page.evaluate(() => window.getSelection().toString()
      || document.activeElement.value.slice(document.activeElement.selectionStart, document.activeElement.selectionEnd)), secret);
  }
  await shot('07-secret-dialog');
  await s.getByRole('button', { name: /^Done/ }).click();
  await noDialog();
  assert.equal(await pageHolds(secret), false, 'the secret left the page when the dialog closed');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'create-key');

  const row = rowOf('CI deploys');
  await row.locator('.badge', { hasText: 'active' }).waitFor();
  assert.equal(await row.locator('code.start').textContent(), `${secret.slice(0, 8)}…`);
  await row.getByText('alice').waitFor();

  const r = await callProxy(secret);
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.headers['x-keygate-user'], ['alice']);
  assert.deepEqual(r.json.headers['x-keygate-key-name'], ['CI deploys']);
  await page.locator('#status', { hasText: 'Key “CI deploys” created.' }).waitFor();
  assert.equal(await page.locator('#status').getByText('Copy it now').count(), 0);
});

test('disable in the UI → the proxy refuses (403); enable → works; edit the name', { timeout: TEST_MS }, async () => {
  const row = rowOf('CI deploys');
  await row.getByRole('button', { name: 'Disable CI deploys' }).click();
  await row.locator('.badge', { hasText: 'disabled' }).waitFor();
  await page.locator('#status').getByText('is disabled').waitFor();
  let r = await callProxy(secret);
  assert.equal(r.status, 403, r.text);
  assert.equal(r.json.error.code, 'key_disabled');

  await row.getByRole('button', { name: 'Enable CI deploys' }).click();
  await row.locator('.badge', { hasText: 'active' }).waitFor();
  r = await callProxy(secret);
  assert.equal(r.status, 200, r.text);

  await row.getByRole('button', { name: 'Edit CI deploys' }).click();
  await dialog().getByLabel('Name').fill('CI deploys (prod)');
  await dialog().getByRole('button', { name: 'Save' }).click();
  await noDialog();
  await rowOf('CI deploys (prod)').waitFor();
  r = await callProxy(secret);
  assert.deepEqual(r.json.headers['x-keygate-key-name'], ['CI deploys (prod)']);
});

test('delete behind a confirmation → the proxy refuses (401) and the row is gone', { timeout: TEST_MS }, async () => {
  const row = rowOf('CI deploys (prod)');
  // Cancel and Escape keep the key.
  await row.getByRole('button', { name: 'Delete CI deploys (prod)' }).click();
  await dialog().getByRole('heading', { name: /Delete the key/ }).waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.textContent), 'Cancel', 'the safe choice has the focus');
  await dialog().getByRole('button', { name: 'Cancel' }).click();
  await noDialog();
  await row.getByRole('button', { name: 'Delete CI deploys (prod)' }).click();
  await page.keyboard.press('Escape');
  await noDialog();
  assert.equal((await callProxy(secret)).status, 200);

  await row.getByRole('button', { name: 'Delete CI deploys (prod)' }).click();
  await shot('11-delete-confirm');
  await dialog().getByRole('button', { name: 'Delete key' }).click();
  await noDialog();
  await row.waitFor({ state: 'detached' });
  await page.getByText('No keys yet').waitFor();
  const r = await callProxy(secret);
  assert.equal(r.status, 401, r.text);
  assert.equal(r.json.error.code, 'invalid_key');
});

test('roll in the UI: the new secret is shown once, the old one stops', { timeout: TEST_MS }, async () => {
  const made = await admin('POST', '/v1/keys', { owner: 'alice', name: 'nightly job', expires_in: '90d' });
  assert.equal(made.status, 201, made.text);
  const old = made.json.key;
  const other = await admin('POST', '/v1/keys', {
    owner: 'alice', name: 'reporting dashboard', description: 'Read-only key for the BI dashboard',
    expires_in: '365d', permissions: ['orders:read'],
  });
  assert.equal(other.status, 201, other.text);
  await page.getByRole('button', { name: 'Apply filters' }).click();
  const row = rowOf('nightly job');
  await row.getByRole('button', { name: 'Roll nightly job' }).click();
  await shot('13-roll-dialog');
  await dialog().getByLabel('The old key keeps working for').selectOption({ label: 'Stop it now' });
  await dialog().getByRole('button', { name: 'Roll key' }).click();
  await dialog().getByRole('heading', { name: 'Copy your rolled API key' }).waitFor();
  await dialog().getByText('has stopped working').waitFor();
  const fresh = await dialog().locator('#secret-value').inputValue();
  assert.notEqual(fresh, old);
  await page.keyboard.press('Escape'); // Escape closes it too, and drops the secret
  await noDialog();
  assert.equal(await pageHolds(fresh), false);
  assert.equal((await callProxy(fresh)).status, 200);
  const r = await callProxy(old);
  assert.equal(r.status, 403, r.text);
  assert.equal(r.json.error.code, 'key_expired');
  await page.locator('#keys-table .badge', { hasText: 'expired' }).waitFor();

  // Filter by status.
  await page.getByLabel('Status').selectOption('expired');
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await eventually(async () => (await page.locator('#keys-table tbody tr').count()) === 1, 'one expired key');
  await page.getByRole('button', { name: 'Clear' }).click();
  await eventually(async () => (await page.locator('#keys-table tbody tr').count()) === 3, 'all keys again');
  await shot('03-keys');
});

test('the audit log lists the changes', { timeout: TEST_MS }, async () => {
  await go('Audit log');
  const table = page.locator('#audit-table');
  for (const action of ['group.create', 'user.create', 'user.deactivate', 'key.create', 'key.disable', 'key.revoke', 'key.roll']) {
    await table.getByText(action, { exact: true }).first().waitFor();
  }
  await shot('08-audit');
});

test('a keygate:self user sees only their own keys and no admin pages', { timeout: TEST_MS }, async () => {
  let r = await admin('PUT', '/v1/users/bob', { name: 'Bob', permissions: ['keygate:self', 'orders:read'] });
  assert.equal(r.status, 201, r.text);
  r = await admin('POST', '/v1/keys', { owner: 'bob', name: 'bob console', expires_in: '7d' });
  assert.equal(r.status, 201, r.text);
  const bobKey = r.json.key;

  await page.locator('#sign-out').click();
  await page.locator('#view h1', { hasText: 'Sign in to keygate' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await signIn(bobKey);
  await page.locator('#signed-in-as', { hasText: 'bob' }).waitFor();
  await page.locator('#view h1', { hasText: 'My API keys' }).waitFor();
  assert.deepEqual(await page.locator('#nav a').allTextContents(), ['My API keys']);
  await rowOf('bob console').waitFor();
  assert.equal(await page.locator('#keys-table tbody tr').count(), 1, 'only bob’s own key');
  assert.equal(await page.getByText('nightly job').count(), 0);
  assert.equal(await page.locator('#keys-table th', { hasText: 'Owner' }).count(), 0);

  // Create a key for oneself, with the keyboard only: no owner field; until a date.
  await page.locator('#create-key').focus();
  await page.keyboard.press('Enter');
  await dialog().waitFor();
  assert.equal(await page.evaluate(() => document.activeElement.name), 'name', 'focus is in the dialog');
  assert.equal(await dialog().getByLabel('Owner').count(), 0);
  await page.keyboard.type('bob laptop');
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.name), 'description');
  await page.keyboard.insertText('x'.repeat(1001));
  await dialog().getByText('1001 / 1000 characters: 1 too many').waitFor();
  await dialog().getByLabel('Expires', { exact: true }).selectOption('date');
  const until = new Date();
  until.setDate(until.getDate() + 10);
  const pad = (n) => String(n).padStart(2, '0');
  await dialog().getByLabel('Expires on').fill(`${until.getFullYear()}-${pad(until.getMonth() + 1)}-${pad(until.getDate())}`);
  await dialog().getByRole('button', { name: 'Create key' }).click();
  await dialog().locator('.form-error').getByText('at most 1000 characters').waitFor();
  await dialog().getByLabel('Description').fill('My laptop');
  await dialog().getByRole('button', { name: 'Create key' }).click();
  const mine = await dialog().locator('#secret-value').inputValue();
  await page.keyboard.press('Escape');
  await noDialog();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'create-key', 'focus is back on the opener');
  await rowOf('bob laptop').waitFor();
  assert.equal((await callProxy(mine)).status, 200);
  const laptop = (await admin('GET', '/v1/keys?owner=bob')).json.items.find((k) => k.name === 'bob laptop');
  const endOfDay = new Date(until.getFullYear(), until.getMonth(), until.getDate(), 23, 59, 59);
  assert.equal(Date.parse(laptop.expires_at), endOfDay.getTime(), 'works until the end of the chosen day');
  assert.equal(laptop.description, 'My laptop');
  await shot('09-my-keys');

  // Paging: 50 to a page.
  const names = Array.from({ length: 49 }, (_, i) => `batch ${String(i + 1).padStart(2, '0')}`);
  for (let i = 0; i < names.length; i += 10) {
    const made = await Promise.all(names.slice(i, i + 10)
      .map((name) => admin('POST', '/v1/keys', { owner: 'bob', name, expires_in: '1d' })));
    for (const m of made) assert.equal(m.status, 201, m.text);
  }
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.locator('#keys-next').waitFor();
  assert.equal(await page.locator('#keys-table tbody tr').count(), 50);
  await page.locator('#keys-next').click();
  await page.locator('#keys-table caption', { hasText: 'page 2' }).waitFor();
  assert.equal(await page.locator('#keys-table tbody tr').count(), 1);
  assert.equal(await page.locator('#keys-next').isDisabled(), true);
  await page.locator('#keys-prev').click();
  await page.locator('#keys-table caption', { hasText: 'page 1' }).waitFor();
  assert.equal(await page.locator('#keys-table tbody tr').count(), 50);

  // Admin pages are not reachable by address either.
  await page.goto(adminUrl('/#/users'));
  await page.locator('#view h1', { hasText: 'My API keys' }).waitFor();
  assert.equal(await page.locator('#nav').getByText('Users').count(), 0);

  // A 401 in the middle of a session signs out, with a message.
  const bobs = await admin('GET', '/v1/keys?owner=bob');
  const signedInWith = bobs.json.items.find((k) => k.name === 'bob console');
  assert.equal((await admin('DELETE', `/v1/keys/${signedInWith.id}`)).status, 204);
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.locator('#signed-out', { hasText: 'You were signed out' }).waitFor();
  await page.locator('#view h1', { hasText: 'Sign in to keygate' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await shot('10-signed-out');
});

test('no script errors or CSP violations in the page', () => {
  assert.deepEqual(pageErrors, []);
});
