// The session of a deleted task, against a real `kiln serve` with the demo agent: it stays
// readable, says its task was deleted, and offers nothing that cannot work. It used to be
// taken for a chat without a task: "Close chat" in its header answered 409.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, closeBrowser, contextAs, newUser, openProject, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('deletedtask');
  api = apiAs(user);
  project = await api.createProject('deleted-task-demo');
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

test('a deleted task\'s session stays readable and offers no Close chat', async (t) => {
  if (!serverOrSkip(t)) return;
  const task = await api.createTask(project.id, { description: 'Write the changelog', runNow: true });
  await until('the task completed', async () => (await api.task(task.id)).status === 'completed', { timeout: 60000 });
  await api.call('DELETE', `/api/tasks/${task.id}`);

  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${task.sessionId}`);
  await page.locator('.message-list .msg.user', { hasText: 'Write the changelog' }).waitFor({ timeout: 10000 });
  await page.locator('.session-facts .badge').waitFor();
  assert.equal(await page.locator('.session-actions [data-action="close-chat"]').count(), 0, 'no Close chat for a task\'s session');
  assert.equal(await page.locator('.session-facts .task-gone').textContent(), 'its task was deleted');
  assert.equal(await page.locator('.session-actions [data-action="open-workspace"]').count(), 0);
  assert.ok(await page.locator('form.composer').isVisible(), 'the task composer, not a chat reply box');
  assert.ok(!(await page.locator('form.chat-reply').isVisible()));
  assert.deepEqual(page.errors, []);
});
