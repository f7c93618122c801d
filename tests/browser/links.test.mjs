// Session links (`#/p/:project/s/:session`) against a real `kiln serve`: a link to a
// session that does not exist says so instead of quietly showing the newest session under
// the missing one's address, and a session linked under the wrong project opens in its own.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, closeBrowser, contextAs, newUser, openProject, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let first; let second; let draft; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('links');
  api = apiAs(user);
  first = await api.createProject('links-first');
  second = await api.createProject('links-second');
  // Drafts: sessions without starting a node.
  await api.createTask(first.id, { description: 'The only task of the first project' });
  draft = await api.createTask(second.id, { description: 'A task of the second project' });
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

test('a link to a session that does not exist says so', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, first.id);
  await page.locator('.session-item').first().waitFor();
  const missing = '01a00000-0000-7000-8000-000000000000';
  await page.goto(`/#/p/${first.id}/s/${missing}`);
  const note = page.locator('.chat-view .empty[data-missing="true"]');
  await note.waitFor({ timeout: 10000 });
  assert.equal(await note.locator('h2').textContent(), 'Session not found');
  assert.equal(await page.locator('.session-item.selected').count(), 0, 'no other session shown in its place');
  assert.equal(await page.locator('.message-list .msg').count(), 0);
  assert.ok(page.url().endsWith(`/s/${missing}`));
  // The list is still there to pick from.
  await page.locator('.session-item').first().click();
  await page.locator('.session-item.selected').waitFor();
  assert.ok(!(await note.isVisible()), 'the note goes once a session is picked');
  assert.deepEqual(page.errors, []);
});

test('a session linked under the wrong project opens in its own project', async (t) => {
  if (!serverOrSkip(t)) return;
  await page.goto(`/#/p/${first.id}/s/${draft.sessionId}`);
  await until('the address of the session\'s own project', async () => page.url().endsWith(`#/p/${second.id}/s/${draft.sessionId}`), { timeout: 10000 });
  await page.locator(`.session-item.selected[data-session-id="${draft.sessionId}"]`).waitFor({ timeout: 10000 });
  assert.equal(await page.locator('.project-name strong').textContent(), 'links-second');
  await page.locator('.message-list .msg.user', { hasText: 'A task of the second project' }).waitFor({ timeout: 5000 });
  assert.deepEqual(page.errors, []);
});
