// Projects: the list, creating one (name, repository, default VM size) and editing it.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { apiAs, closeBrowser, contextAs, newUser, serverOrSkip, testRepository, until } from './harness.mjs';

let user; let api; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('projects');
  api = apiAs(user);
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

test('create a project, then edit its name and default VM size', async (t) => {
  if (!serverOrSkip(t)) return;
  await page.goto('/');
  await page.waitForSelector('.empty h2');
  await page.click('[data-action="new-project"]');
  await page.fill('input[name="name"]', 'payments');
  await page.fill('input[name="repositoryUrl"]', testRepository());
  await page.click('.size-option:has(input[value="medium"])');
  await page.click('form.card-form button[type="submit"]');
  const project = await until('the project', async () => (await api.call('GET', '/api/projects')).find((p) => p.name === 'payments'));
  assert.equal(project.defaultVmSize, 'medium');
  assert.equal(project.repositoryUrl, testRepository());
  // It opens on its chat view, empty.
  await page.waitForSelector('.chat-view .empty h2');
  assert.match(await page.textContent('.project-name strong'), /payments/);

  await page.click('.project-name [aria-label="Project settings"]');
  await page.fill('input[name="name"]', 'payments-service');
  await page.click('.size-option:has(input[value="large"])');
  await page.click('form.card-form button[type="submit"]');
  await until('the edit to be saved', async () => {
    const p = await api.call('GET', `/api/projects/${project.id}`);
    return p.name === 'payments-service' && p.defaultVmSize === 'large';
  });
  await page.waitForSelector('.project-name strong:has-text("payments-service")');
  // The submit bar's VM size override offers the new default.
  await page.click('.advanced summary');
  assert.match(await page.textContent('select[name="vmSize"] option[value=""]'), /large/);
  await page.goto('/');
  await page.waitForSelector(`.project-card[data-project-id="${project.id}"]`);
  assert.match(await page.textContent(`.project-card[data-project-id="${project.id}"]`), /payments-service/);
  assert.deepEqual(page.errors, []);
});
