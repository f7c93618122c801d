// The workspace panel ("Open workspace") against a real `kiln serve` with the demo agent: it
// offers a follow-up box only while there is an agent to take one. Closing a chat, or
// cancelling a task, with the panel open closes the panel along with its header button
// (before, the panel stayed with a Send button whose every use answered 409).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, closeBrowser, contextAs, markNoReload, newUser, openProject,
  screenshot, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('wspanel');
  api = apiAs(user);
  project = await api.createProject('workspace-panel-demo');
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

const panel = () => page.locator('.workspace-panel');
const openButton = () => page.locator('.session-actions [data-action="open-workspace"]');

/** Opens the panel of the selected session once its agent runs. */
async function openPanel() {
  await openButton().waitFor({ timeout: 60000 });
  await openButton().click();
  await panel().locator('textarea[aria-label="Follow-up prompt"]').waitFor({ timeout: 5000 });
}

test('closing a chat closes its open workspace panel', async (t) => {
  if (!serverOrSkip(t)) return;
  const chat = await api.call('POST', `/api/projects/${project.id}/sessions`, { prompt: 'Say hello' });
  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${chat.id}`);
  await markNoReload(page);
  await openPanel();

  await page.click('.session-actions [data-action="close-chat"]');
  await page.locator('.chat-closed').waitFor({ timeout: 10000 });
  await until('the panel closed', async () => !(await panel().isVisible()), { timeout: 10000 });
  assert.equal(await openButton().count(), 0, 'no Open workspace button for a closed chat');
  assert.equal(await page.locator('.workspace-panel textarea:visible').count(), 0, 'no follow-up box left');
  await screenshot(page, 'workspace-panel-chat-closed');
  await assertNoReload(page);
  assert.deepEqual(page.errors, []);
});

test('cancelling a task closes its open workspace panel', async (t) => {
  if (!serverOrSkip(t)) return;
  const task = await api.createTask(project.id, { description: 'Wait for me\nkiln-demo: hang', runNow: true });
  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${task.sessionId}`);
  await markNoReload(page);
  await openPanel();

  await page.click('.session-actions [data-action="cancel"]');
  await until('the task cancelled', async () => (await api.task(task.id)).status === 'cancelled', { timeout: 30000 });
  await until('the panel closed', async () => !(await panel().isVisible()), { timeout: 10000 });
  assert.equal(await openButton().count(), 0, 'no Open workspace button once the agent stopped');
  await assertNoReload(page);
  assert.deepEqual(page.errors, []);
});
