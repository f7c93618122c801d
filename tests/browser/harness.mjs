// Shared helpers of the browser tests: the server under test (started by
// scripts/browser-tests.sh), users made with `kiln user add`, the API as those users, and
// headless Chromium through playwright-core.

import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const BASE = process.env.KILN_URL;
const REQUIRED = process.env.KILN_REQUIRE_SERVICES === '1';

/** Whether a server is there; without one a test prints how to run it and skips (fails under KILN_REQUIRE_SERVICES=1). */
export function serverOrSkip(t) {
  if (BASE) return true;
  const how = 'no KILN_URL: run the browser tests with scripts/browser-tests.sh (it starts kiln serve)';
  if (REQUIRED) throw new Error(how);
  t.skip(how);
  return false;
}

export const SCREENSHOTS = path.resolve(process.env.KILN_SCREENSHOTS || 'artifacts/screenshots');
mkdirSync(SCREENSHOTS, { recursive: true });

/** A fresh user with an API token: `kiln user add` on the server's database. */
export function newUser(prefix = 'user') {
  const name = `${prefix}-${Math.random().toString(36).slice(2, 8)}`;
  const token = execFileSync(process.env.KILN_BIN, ['user', 'add', name, '--token-name', 'browser-tests', '--data-dir', process.env.KILN_DATA_DIR], {
    encoding: 'utf8', env: { ...process.env, KILN_LOG: 'warn' },
  }).trim().split('\n').pop().trim();
  return { name, token };
}

/** A one-time login link for a user (`kiln user login-link`). */
export function loginLink(name) {
  const out = execFileSync(process.env.KILN_BIN, ['user', 'login-link', name, '--data-dir', process.env.KILN_DATA_DIR], {
    encoding: 'utf8', env: { ...process.env, KILN_LOG: 'warn', KILN_PUBLIC_URL: BASE },
  }).trim().split('\n').pop().trim();
  return out;
}

let repository;

/** A local git repository with one commit, for projects whose tasks really run. */
export function testRepository() {
  if (repository) return repository;
  const dir = mkdtempSync(path.join(tmpdir(), 'kiln-browser-repo-'));
  const git = (...args) => execFileSync('git', args, { cwd: dir, stdio: 'pipe' });
  git('init', '--quiet', '--initial-branch=main');
  writeFileSync(path.join(dir, 'README.md'), '# Demo repository for the browser tests\n');
  git('add', 'README.md');
  git('-c', 'user.name=Kiln tests', '-c', 'user.email=tests@kiln.invalid', 'commit', '--quiet', '-m', 'Initial commit');
  repository = dir;
  return dir;
}

/** The API as `user`. */
export function apiAs(user) {
  const call = async (method, p, body) => {
    const res = await fetch(`${BASE}${p}`, {
      method,
      headers: { authorization: `Bearer ${user.token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return data;
  };
  return {
    call,
    createProject: (name, extra = {}) => call('POST', '/api/projects', {
      name, repositoryUrl: testRepository(), ...extra,
    }),
    createTask: (projectId, body) => call('POST', `/api/projects/${projectId}/tasks`, body),
    task: (id) => call('GET', `/api/tasks/${id}`),
    tasks: (projectId) => call('GET', `/api/projects/${projectId}/tasks`),
    messages: (sessionId) => call('GET', `/api/sessions/${sessionId}/messages?limit=500`),
  };
}

let browser;

/**
 * Debian's Chromium, headless, with the flags this machine needs. playwright-core gives
 * every launch a fresh temporary profile (its own `--user-data-dir`, removed on close).
 */
export async function launch() {
  if (browser) return browser;
  browser = await chromium.launch({
    executablePath: process.env.KILN_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  return browser;
}

export async function closeBrowser() {
  await browser?.close();
  browser = undefined;
}

/** A browser context signed in as `user` (its API token as the session cookie). */
export async function contextAs(user, { colorScheme = 'light', viewport = { width: 1360, height: 860 } } = {}) {
  const b = await launch();
  const context = await b.newContext({ colorScheme, viewport, baseURL: BASE });
  const url = new URL(BASE);
  await context.addCookies([{ name: 'kiln_session', value: user.token, domain: url.hostname, path: '/', sameSite: 'Lax' }]);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err));
  // Script errors fail tests; HTTP errors the page handles (a 404 for a workspace that is
  // gone, a 409 shown inline) are kept apart, for diagnostics.
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) errors.push(new Error(msg.text()));
  });
  page.httpErrors = [];
  page.on('response', (res) => { if (res.status() >= 400) page.httpErrors.push(`${res.status()} ${res.request().method()} ${new URL(res.url()).pathname}`); });
  page.errors = errors;
  return { context, page };
}

/** Waits until `fn` returns a truthy value (polling), or fails with `what`. */
export async function until(what, fn, { timeout = 30000, interval = 100 } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try { last = await fn(); if (last) return last; } catch (err) { last = err; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`) });
}

/** The board card of a task. */
export const card = (page, taskId) => page.locator(`.card[data-task-id="${taskId}"]`);

/** Opens a project's page and waits for it to be live. */
export async function openProject(page, projectId, view = '') {
  await page.goto(`/#/p/${projectId}${view ? `/${view}` : ''}`);
  await page.waitForSelector('.live-status[data-state="live"]', { state: 'attached', timeout: 15000 });
}

/** Types a task into the submit bar and runs it now (Ctrl+Enter); returns the new task. */
export async function runNow(page, api, projectId, description) {
  const before = new Set((await api.tasks(projectId)).map((t) => t.id));
  await page.fill('.composer-text', description);
  await page.press('.composer-text', 'Control+Enter');
  const task = await until('the new task', async () => (await api.tasks(projectId)).find((t) => !before.has(t.id)));
  await page.waitForSelector(`.session-item.selected[data-session-id="${task.sessionId}"]`, { timeout: 10000 });
  return task;
}

/** The status shown in the session header. */
export const headerStatus = (page) => page.locator('.session-facts .badge').first().getAttribute('data-status');

/** Marks the page so a test can tell it was never reloaded. */
export async function markNoReload(page) {
  await page.evaluate(() => { window.__kilnNoReload = true; });
}
export async function assertNoReload(page) {
  if (!(await page.evaluate(() => window.__kilnNoReload === true))) throw new Error('the page was reloaded');
}
