// A task deleted elsewhere (the API, another browser) leaves the open pages live: the board
// drops its card and the chat view's sidebar and header stop showing it as a task, without
// a reload. Deleting sent nothing on the live feed before, so the card stayed until reload.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, card, closeBrowser, contextAs, markNoReload, newUser, openProject,
  serverOrSkip,
} from './harness.mjs';

let user; let api; let project; const contexts = [];

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('deletedlive');
  api = apiAs(user);
  project = await api.createProject('deleted-live-demo');
});
after(async () => { for (const c of contexts) await c.close(); await closeBrowser(); });

test('a task deleted elsewhere leaves the board and the sidebar live', async (t) => {
  if (!serverOrSkip(t)) return;
  const draft = await api.createTask(project.id, { title: 'Drop me', description: 'Tidy the changelog' });
  const kept = await api.createTask(project.id, { title: 'Keep me', description: 'Stay on the board' });
  const board = await contextAs(user);
  const chat = await contextAs(user);
  contexts.push(board.context, chat.context);
  await openProject(board.page, project.id, 'board');
  await openProject(chat.page, project.id);
  await chat.page.goto(`/#/p/${project.id}/s/${draft.sessionId}`);
  const item = chat.page.locator(`.session-item[data-session-id="${draft.sessionId}"]`);
  await item.locator('.badge[data-status="draft"]').waitFor({ timeout: 10000 });
  await card(board.page, draft.id).waitFor({ timeout: 10000 });
  await markNoReload(board.page);
  await markNoReload(chat.page);

  await api.call('DELETE', `/api/tasks/${draft.id}`);

  await card(board.page, draft.id).waitFor({ state: 'detached', timeout: 10000 });
  assert.equal(await card(board.page, kept.id).count(), 1, 'the other card stays');
  assert.equal(await board.page.locator('[data-column="draft"] .count').textContent(), '1');
  // The session stays readable, as closed and no longer a draft's.
  await item.locator('.badge.session-closed').waitFor({ timeout: 10000 });
  assert.equal(await item.locator('.badge[data-status="draft"]').count(), 0);
  await chat.page.locator('.session-facts .task-gone').waitFor({ timeout: 10000 });
  await assertNoReload(board.page);
  await assertNoReload(chat.page);
  assert.deepEqual(board.page.errors, []);
  assert.deepEqual(chat.page.errors, []);
});
