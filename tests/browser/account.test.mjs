// The account page (#/account): API tokens (created with the secret shown once, listed
// without it, revoked after a confirmation, this browser's own session marked and revoking
// it signs the browser out) and the Hetzner Cloud token (write-only; a refused token's
// error shown; afterwards only a hint, and Remove).
//
// The Hetzner part runs twice: against the script's server, whose Hetzner API is not
// reachable from here (a clean 502 shown to the user), and against a second `kiln serve`
// this file starts with KILN_HETZNER_API_URL pointing at a small fake of the Hetzner API
// that accepts one token and refuses every other with a 401, as Hetzner does.

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { BASE, closeBrowser, launch, newUser, screenshot, serverOrSkip, until } from './harness.mjs';

const REFUSED = 'hcloud-refused-browser-test-q7Zx';
const ACCEPTED = 'hcloud-accepted-browser-test-Km4p';

const contexts = [];
let fake; let second;

before(async () => {
  if (!process.env.KILN_URL) return;
  fake = await fakeHetzner();
  second = await startServer({ KILN_HETZNER_API_URL: `http://127.0.0.1:${fake.address().port}/v1`, KILN_PROVIDER: 'local,hetzner' });
});
after(async () => {
  for (const c of contexts) await c.close();
  await closeBrowser();
  await second?.stop();
  fake?.close();
});

/** The answers of the Hetzner API's `GET /servers` for the token check. */
function fakeHetzner() {
  const server = http.createServer((req, res) => {
    const ok = req.headers.authorization === `Bearer ${ACCEPTED}` && req.url.startsWith('/v1/servers');
    res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
    res.end(JSON.stringify(ok
      ? { servers: [], meta: { pagination: { page: 1, per_page: 1, previous_page: null, next_page: null, last_page: 1, total_entries: 0 } } }
      : { error: { code: 'unauthorized', message: 'unable to authenticate' } }));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/** A second `kiln serve` (own data directory and port) with extra environment. */
async function startServer(env) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'kiln-browser-account-'));
  const port = await new Promise((resolve) => {
    const s = http.createServer().listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
  const child = spawn(process.env.KILN_BIN, ['serve', '--data-dir', dataDir, '--listen', `127.0.0.1:${port}`], {
    env: { ...process.env, KILN_LOG: 'warn', ...env }, stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  const url = `http://127.0.0.1:${port}`;
  await until(`the second kiln serve (${log})`, async () => {
    if (child.exitCode !== null) throw new Error(`kiln serve exited: ${log}`);
    return (await fetch(`${url}/api/health`)).ok;
  }, { timeout: 60000 });
  return {
    url,
    dataDir,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** `kiln user login-link` for a server (the harness's one is for the script's server only). */
function loginLink(name, base, dataDir) {
  return execFileSync(process.env.KILN_BIN, ['user', 'login-link', name, '--data-dir', dataDir], {
    encoding: 'utf8', env: { ...process.env, KILN_LOG: 'warn', KILN_PUBLIC_URL: base },
  }).trim().split('\n').pop().trim();
}

/** A browser signed in through a one-time login link (a real browser session) of `base`. */
async function signedIn(user, { base = BASE, dataDir = process.env.KILN_DATA_DIR, viewport } = {}) {
  const context = await (await launch()).newContext({ baseURL: base, colorScheme: 'light', viewport: viewport || { width: 1360, height: 860 } });
  contexts.push(context);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(err));
  page.answers = [];
  page.on('response', async (res) => {
    if (!res.url().includes('/api/')) return;
    try { page.answers.push(`${res.status()} ${res.url()} ${await res.text()}`); } catch { /* a body already gone */ }
  });
  await page.goto(loginLink(user.name, base, dataDir));
  await page.waitForSelector('.account-link .user', { timeout: 15000 });
  return { context, page };
}

const meWith = async (token, base = BASE) => (await fetch(`${base}/api/me`, { headers: { authorization: `Bearer ${token}` } })).status;
const row = (page, name) => page.locator('.token-row', { has: page.locator('.token-name', { hasText: name }) });

test('API tokens: created with the secret shown once, listed without it, revoked; this browser marked', async (t) => {
  if (!serverOrSkip(t)) return;
  const user = newUser('account');
  const { context, page } = await signedIn(user);
  await context.grantPermissions(['clipboard-read', 'clipboard-write']);

  // From the top bar's account link.
  await page.click('.account-link');
  await page.waitForSelector('.account-page .token-row');
  assert.equal(await page.getAttribute('.account-link', 'aria-current'), 'page');
  const current = page.locator('.token-row[data-current="true"]');
  assert.equal(await current.count(), 1, 'exactly one row is this browser');
  assert.equal(await current.locator('.token-name').textContent(), 'Browser session');
  assert.match(await current.textContent(), /this browser/);
  assert.equal(await row(page, 'browser-tests').getAttribute('data-current'), 'false', 'the API token of `kiln user add` is listed, not current');

  // Create: the secret once, with a copy button.
  await page.fill('input[name="tokenName"]', 'ci-script');
  await page.selectOption('select[name="tokenLifetime"]', { label: '30 days' });
  await page.press('input[name="tokenName"]', 'Enter');
  await page.waitForSelector('.token-reveal:not([hidden]) .token-secret');
  assert.match(await page.textContent('.token-reveal'), /will not see it again/);
  const secret = (await page.textContent('.token-secret')).trim();
  assert.ok(secret.length >= 20, `a secret: ${secret}`);
  assert.equal(await meWith(secret), 200, 'the new token works');
  await page.click('[data-action="copy-token"]');
  await page.waitForSelector('.token-reveal-actions :text("Copied")');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  await row(page, 'ci-script').waitFor();
  assert.match(await row(page, 'ci-script').textContent(), /expires (?!never)/);
  assert.match(await row(page, 'browser-tests').textContent(), /never expires/);
  await screenshot(page, 'account-new-token');

  // Done: the secret leaves the page; the list keeps the token, never its secret.
  await page.click('[data-action="dismiss-token"]');
  await page.waitForSelector('.token-reveal', { state: 'hidden' });
  assert.ok(!(await page.content()).includes(secret), 'the page still shows the secret');
  await page.reload();
  await row(page, 'ci-script').waitFor();
  assert.ok(!(await page.content()).includes(secret), 'the page shows the secret after a reload');
  const listings = page.answers.filter((a) => a.includes('/api/tokens') && a.startsWith('200'));
  assert.ok(listings.length > 0, 'the page listed the tokens');
  for (const answer of listings) assert.ok(!answer.includes(secret), `a listing carried the secret: ${answer}`);

  // Revoke: Cancel keeps it (Esc too); confirmed, it is gone and refused.
  await row(page, 'ci-script').locator('[data-action="revoke-token"]').click();
  await page.waitForSelector('dialog.confirm[open]');
  await page.keyboard.press('Escape');
  await page.waitForSelector('dialog.confirm', { state: 'detached' });
  assert.equal(await row(page, 'ci-script').count(), 1);
  assert.equal(await meWith(secret), 200, 'a cancelled revoke keeps the token');
  await row(page, 'ci-script').locator('[data-action="revoke-token"]').click();
  await page.click('dialog.confirm [data-action="confirm"]');
  await row(page, 'ci-script').waitFor({ state: 'detached' });
  assert.equal(await meWith(secret), 401, 'the revoked token is refused');
  await page.waitForSelector('.token-row[data-current="true"]');
  assert.deepEqual(page.errors, []);
});

test("revoking this browser's own session signs it out", async (t) => {
  if (!serverOrSkip(t)) return;
  const user = newUser('account-self');
  const { page } = await signedIn(user);
  await page.goto('/#/account');
  const current = page.locator('.token-row[data-current="true"]');
  await current.waitFor();
  await current.locator('[data-action="revoke-token"]').click();
  assert.match(await page.textContent('dialog.confirm'), /signed out/);
  await page.click('dialog.confirm [data-action="confirm"]');
  await page.waitForSelector('.signin-card', { timeout: 10000 });
  assert.equal((await page.request.get('/api/me')).status(), 401, 'the browser session is revoked');
  assert.equal(await meWith(user.token), 200, 'the other token of the user still works');
  assert.deepEqual(page.errors, []);
});

test('Hetzner token: the error of an unreachable Hetzner API is shown, nothing is stored', async (t) => {
  if (!serverOrSkip(t)) return;
  const user = newUser('account-hz');
  const { page } = await signedIn(user);
  await page.goto('/#/account');
  await page.waitForSelector('.hetzner-token-state[data-set="false"]');
  assert.equal(await page.getAttribute('input[name="hetznerToken"]', 'type'), 'password');
  assert.match(await page.textContent('#hetzner'), /only for projects on the Hetzner provider/);

  await page.fill('input[name="hetznerToken"]', REFUSED);
  const started = Date.now();
  const [answer] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/api/account/hetzner-token') && r.request().method() === 'PUT', { timeout: 60000 }),
    page.click('[data-action="save-hetzner-token"]'),
  ]);
  console.log(`# PUT /api/account/hetzner-token with no reachable Hetzner API: ${answer.status()} after ${Date.now() - started} ms`);
  assert.ok(answer.status() >= 400 && answer.status() < 600, `an error status: ${answer.status()}`);
  const body = await answer.json();
  assert.equal(typeof body.error, 'string');
  await page.waitForSelector('#hetzner .form-error:not([hidden])');
  assert.equal((await page.textContent('#hetzner .form-error')).trim(), body.message);
  assert.equal(await page.inputValue('input[name="hetznerToken"]'), '', 'the refused token is cleared from the field');
  assert.equal(await page.getAttribute('.hetzner-token-state', 'data-set'), 'false');
  assert.ok(!(await page.content()).includes(REFUSED));
  assert.deepEqual(page.errors, []);
});

test('Hetzner token: refused with Hetzner\'s message, then saved, shown as a hint, removed', async (t) => {
  if (!serverOrSkip(t)) return;
  const user = newUser('account-hz2');
  // The same user on the second server (its own database).
  execFileSync(process.env.KILN_BIN, ['user', 'add', user.name, '--token-name', 'browser-tests', '--data-dir', second.dataDir], {
    env: { ...process.env, KILN_LOG: 'warn' }, stdio: 'pipe',
  });
  const { page } = await signedIn(user, { base: second.url, dataDir: second.dataDir });
  await page.goto('/#/account');
  await page.waitForSelector('.hetzner-token-state[data-set="false"]');
  assert.ok(await page.isHidden('[data-action="remove-hetzner-token"]'));

  // Refused: 422 invalid_token, Hetzner's own message shown.
  await page.fill('input[name="hetznerToken"]', REFUSED);
  await page.press('input[name="hetznerToken"]', 'Enter');
  await page.waitForSelector('#hetzner .form-error:not([hidden])');
  const refused = await page.textContent('#hetzner .form-error');
  assert.match(refused, /refused this token .*unable to authenticate/);
  assert.ok(page.answers.some((a) => a.startsWith('422 ') && a.includes('invalid_token')), page.answers.join('\n'));
  assert.equal(await page.getAttribute('.hetzner-token-state', 'data-set'), 'false');
  await screenshot(page, 'account-hetzner-refused');

  // Accepted: the hint and when, an empty field, the error gone.
  await page.fill('input[name="hetznerToken"]', ACCEPTED);
  await page.click('[data-action="save-hetzner-token"]');
  await page.waitForSelector('.hetzner-token-state[data-set="true"]');
  assert.match(await page.textContent('.hetzner-token-state'), /…Km4p/);
  assert.ok(await page.isHidden('#hetzner .form-error'));
  assert.equal(await page.inputValue('input[name="hetznerToken"]'), '');
  await page.reload();
  await page.waitForSelector('.hetzner-token-state[data-set="true"]');
  for (const secret of [ACCEPTED, REFUSED]) {
    assert.ok(!(await page.content()).includes(secret), 'the page shows a token');
    for (const answer of page.answers) assert.ok(!answer.includes(secret), `an API answer carried a token: ${answer}`);
  }
  await screenshot(page, 'account-hetzner-set');

  // Remove (confirmed).
  await page.click('[data-action="remove-hetzner-token"]');
  await page.click('dialog.confirm [data-action="confirm"]');
  await page.waitForSelector('.hetzner-token-state[data-set="false"]');
  const status = await page.request.get('/api/account/hetzner-token');
  assert.equal((await status.json()).set, false);
  assert.deepEqual(page.errors, []);
});

test('a project chooses where its nodes run when the server offers more than one provider', async (t) => {
  if (!serverOrSkip(t)) return;
  // The main test server offers only local nodes: no choice, and the Hetzner section says so.
  const local = await signedIn(newUser('account-prov1'));
  await local.page.goto('/#/new');
  await local.page.waitForSelector('input[name="repositoryUrl"]');
  assert.equal(await local.page.$('input[name="provider"]'), null, 'no provider choice with one provider');
  await local.page.goto('/#/account');
  await local.page.waitForSelector('.hetzner-disabled');

  // The second server offers local (the default) and Hetzner.
  const user = newUser('account-prov2');
  execFileSync(process.env.KILN_BIN, ['user', 'add', user.name, '--token-name', 'browser-tests', '--data-dir', second.dataDir], {
    env: { ...process.env, KILN_LOG: 'warn' }, stdio: 'pipe',
  });
  const { page } = await signedIn(user, { base: second.url, dataDir: second.dataDir });
  await page.goto('/#/account');
  await page.waitForSelector('.hetzner-token-state');
  assert.equal(await page.$('.hetzner-disabled'), null, 'Hetzner is offered here');
  await page.goto('/#/new');
  await page.waitForSelector('input[name="provider"]');
  const offered = await page.$$eval('input[name="provider"]', (inputs) => inputs.map((i) => [i.value, i.checked]));
  assert.deepEqual(offered, [['local', true], ['hetzner', false]]);
  await page.fill('input[name="name"]', 'On Hetzner');
  await page.fill('input[name="repositoryUrl"]', 'https://example.invalid/repo.git');
  await page.check('input[name="provider"][value="hetzner"]');
  await page.click('button[type="submit"]');
  await page.waitForURL(/#\/p\//);
  const projects = await (await page.request.get('/api/projects')).json();
  const created = projects.find((p) => p.name === 'On Hetzner');
  assert.equal(created?.provider, 'hetzner', JSON.stringify(projects));
  // The edit form shows the project's provider chosen.
  await page.goto(`/#/p/${created.id}/edit`);
  await page.waitForSelector('input[name="provider"][value="hetzner"]:checked');
  assert.deepEqual(page.errors, []);
});

test('the account page on a phone, in the dark theme', async (t) => {
  if (!serverOrSkip(t)) return;
  const user = newUser('account-phone');
  const b = await launch();
  const context = await b.newContext({ baseURL: BASE, colorScheme: 'dark', viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  contexts.push(context);
  await context.addCookies([{ name: 'kiln_session', value: user.token, domain: new URL(BASE).hostname, path: '/' }]);
  const page = await context.newPage();
  await page.goto('/');
  // The name is hidden on a phone; the account icon stays.
  await page.waitForSelector('.account-link');
  assert.ok(await page.isVisible('.account-link .icon'));
  await page.click('.account-link');
  await page.waitForSelector('.token-row[data-current="true"]');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no sideways scrolling (${overflow}px)`);
  const content = await page.evaluate(() => document.querySelector('.content').scrollWidth - document.querySelector('.content').clientWidth);
  assert.ok(content <= 0, `the page fits the phone (${content}px)`);
  await screenshot(page, 'account-phone-dark');
});
