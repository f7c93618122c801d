// The kanban board against a real `kiln serve`: Save to Backlog → a draft card → edit →
// Run → completed, live; switching between chat and board keeps the selected session and
// each view's scroll position. Saves screenshots of the board.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, card, closeBrowser, contextAs, markNoReload, newUser, openProject, screenshot,
  serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('board');
  api = apiAs(user);
  project = await api.createProject('board-demo', { defaultVmSize: 'medium' });
  ({ page, context } = await contextAs(user, { viewport: { width: 1360, height: 720 } }));
});
after(async () => { await context?.close(); await closeBrowser(); });

test('Save to Backlog → draft card → edit → Run → completed', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  await markNoReload(page);
  await page.fill('.composer-text', 'Rename the helper module');
  await page.click('.split-toggle');
  await page.click('[data-action="save-backlog"]');
  const task = await until('the draft', async () => (await api.tasks(project.id)).find((x) => x.title.includes('Rename')));
  assert.equal(task.status, 'draft');
  await until('the submit bar to be cleared', async () => (await page.inputValue('.composer-text')) === '');

  await page.keyboard.press('Escape');
  await page.keyboard.press('b');
  const draft = page.locator(`[data-column="draft"] .card[data-task-id="${task.id}"]`);
  await draft.waitFor({ timeout: 5000 });

  // Edit it on the board.
  await draft.locator('[data-action="edit"]').click();
  const dialog = page.locator('dialog.dialog');
  await dialog.waitFor();
  await dialog.locator('input[name="title"]').fill('Rename the helper module to util');
  await dialog.locator('textarea[name="description"]').fill('Rename the helper module to util and fix the imports');
  await dialog.locator('input[name="priority"]').fill('3');
  await dialog.locator('[data-action="save"]').click();
  await dialog.waitFor({ state: 'detached' });
  await until('the edited title on the card', async () => (await draft.locator('.card-title').textContent()) === 'Rename the helper module to util');
  const edited = await api.task(task.id);
  assert.equal(edited.description, 'Rename the helper module to util and fix the imports');
  assert.equal(edited.priority, 3);
  // The draft's prompt (its session's first message) shows the edit.
  await page.keyboard.press('c');
  await page.locator(`.session-item[data-session-id="${task.sessionId}"]`).click();
  await page.locator('.message-list .msg.user', { hasText: 'Rename the helper module to util and fix the imports' }).waitFor({ timeout: 5000 });
  await page.keyboard.press('b');

  // Run it from the card; it moves across the board by itself.
  await draft.locator('[data-action="run"]').click();
  await page.locator(`[data-column="completed"] .card[data-task-id="${task.id}"]`).waitFor({ timeout: 60000 });
  assert.equal(await page.locator(`[data-column="draft"] .card[data-task-id="${task.id}"]`).count(), 0);
  await assertNoReload(page);

  // The card opens its session in the chat view.
  await card(page, task.id).locator('.card-title').click();
  await page.waitForSelector(`.session-item.selected[data-session-id="${task.sessionId}"]`);
  assert.equal(await page.locator('.tab.active').getAttribute('data-view'), 'chat');
  assert.deepEqual(page.errors, []);
  if (page.httpErrors.length) console.log(`HTTP errors the page handled: ${page.httpErrors.join(', ')}`);
});

test('switching views keeps the selected session and each view\'s scroll', async (t) => {
  if (!serverOrSkip(t)) return;
  // Enough drafts for the sidebar and the draft column to scroll.
  for (let i = 1; i <= 30; i++) {
    await api.createTask(project.id, { description: `Backlog item ${i}: tidy module ${i}`, priority: i % 4 });
  }
  await openProject(page, project.id);
  await page.waitForFunction(() => document.querySelectorAll('.session-item').length >= 31);
  // Select a session far down the sidebar, with the sidebar scrolled.
  const items = page.locator('.session-item');
  const target = items.nth(20);
  const sessionId = await target.getAttribute('data-session-id');
  await target.scrollIntoViewIfNeeded();
  await target.click();
  await page.waitForSelector(`.session-item.selected[data-session-id="${sessionId}"]`);
  const sidebarTop = await page.locator('.session-list').evaluate((el) => el.scrollTop);
  assert.ok(sidebarTop > 0, 'the sidebar is scrolled');

  await page.keyboard.press('b');
  await page.waitForSelector('.board:not([hidden])');
  const cards = page.locator('[data-column="draft"] .cards');
  await cards.evaluate((el) => { el.scrollTop = 240; });
  const boardTop = await cards.evaluate((el) => el.scrollTop);
  assert.ok(boardTop > 0, 'the draft column is scrolled');
  await screenshot(page, 'kanban-light');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'kanban-dark');
  await page.emulateMedia({ colorScheme: 'light' });

  const t0 = Date.now();
  await page.keyboard.press('c');
  await page.waitForSelector('.chat-view:not([hidden])');
  const switchMs = Date.now() - t0;
  assert.equal(await page.locator('.session-item.selected').getAttribute('data-session-id'), sessionId, 'the same session is selected');
  assert.equal(await page.locator('.session-list').evaluate((el) => el.scrollTop), sidebarTop, 'the sidebar scroll is kept');

  await page.click('.tab[data-view="board"]');
  await page.waitForSelector('.board:not([hidden])');
  assert.equal(await cards.evaluate((el) => el.scrollTop), boardTop, 'the board scroll is kept');
  await page.click('.tab[data-view="chat"]');
  assert.equal(await page.locator('.session-item.selected').getAttribute('data-session-id'), sessionId);
  console.log(`view switch (board → chat, key press to visible): ${switchMs} ms`);
});
