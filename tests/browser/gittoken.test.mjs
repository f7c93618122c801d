// A project's git token in the settings form: write-only (a password field that is never
// filled in), shown only as its hint and when it was set, replaceable and removable. The
// token never appears in the page, nor in any API answer the page received.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { apiAs, closeBrowser, contextAs, newUser, screenshot, serverOrSkip, until } from './harness.mjs';

const TOKEN = 'ghp_browserTestToken1234wxyz';

let user; let api; let page; let context;
const answers = [];

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('gittoken');
  api = apiAs(user);
  ({ page, context } = await contextAs(user));
  page.on('response', async (res) => {
    if (!res.url().includes('/api/')) return;
    try { answers.push(`${res.url()} ${await res.text()}`); } catch { /* a body already gone */ }
  });
});
after(async () => { await context?.close(); await closeBrowser(); });

test('set, show as a hint, and remove a project git token', async (t) => {
  if (!serverOrSkip(t)) return;
  const project = await api.createProject('private-repo');
  const settings = `/#/p/${project.id}/edit`;
  await page.goto(`/#/p/${project.id}`);
  await page.click('.project-name [aria-label="Project settings"]');
  await page.waitForSelector('input[name="gitToken"]');
  assert.equal(await page.getAttribute('.git-token-state', 'data-set'), 'false');
  assert.equal(await page.getAttribute('input[name="gitToken"]', 'type'), 'password');

  await page.fill('input[name="gitToken"]', TOKEN);
  await page.click('form.card-form button[type="submit"]');
  const status = await until('the token to be stored', async () => {
    const s = await api.call('GET', `/api/projects/${project.id}/git-token`);
    return s.set ? s : null;
  });
  assert.equal(status.hint, '…wxyz');

  // Back in the settings: the hint and when, an empty field, no token anywhere in the page.
  await page.waitForSelector('.project-name [aria-label="Project settings"]');
  await page.click('.project-name [aria-label="Project settings"]');
  await page.waitForSelector('.git-token-state[data-set="true"]');
  assert.match(await page.textContent('.git-token-state'), /…wxyz/);
  assert.equal(await page.inputValue('input[name="gitToken"]'), '');
  assert.ok(!(await page.content()).includes(TOKEN), 'the page shows the token');
  await screenshot(page, 'project-settings-git-token');

  // Saving other settings keeps the token.
  await page.fill('input[name="name"]', 'private-repo-2');
  await page.click('form.card-form button[type="submit"]');
  await until('the rename', async () => (await api.call('GET', `/api/projects/${project.id}`)).name === 'private-repo-2');
  assert.equal((await api.call('GET', `/api/projects/${project.id}/git-token`)).set, true);
  // The form leaves for the project page once its save returns (after the API has the
  // rename): wait for that, or it can follow the goto below and leave the settings again.
  await page.waitForURL((url) => url.hash === `#/p/${project.id}`);

  // Remove.
  await page.goto(settings);
  await page.waitForSelector('[data-action="remove-git-token"]:not([hidden])');
  await page.click('[data-action="remove-git-token"]');
  await page.waitForSelector('.git-token-state:has-text("Not set")');
  assert.equal((await api.call('GET', `/api/projects/${project.id}/git-token`)).set, false);

  assert.ok(answers.length > 0, 'the page talked to the API');
  for (const answer of answers) assert.ok(!answer.includes(TOKEN), `an API answer carried the token: ${answer}`);
  assert.deepEqual(page.errors, []);
});
