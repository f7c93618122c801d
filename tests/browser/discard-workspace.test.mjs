// Discard workspace, against a real `kiln serve` with the demo agent: a failed task keeps its
// workspace (and its node) for inspection; the task's header offers "Discard workspace",
// which after a confirmation removes the workspace from the node and gives the node back to
// the warm pool. Before, nothing ever released such a node. A running task offers no such
// button, and Cancel in the confirmation changes nothing.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, closeBrowser, contextAs, markNoReload, newUser, openProject,
  screenshot, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('discardws');
  api = apiAs(user);
  project = await api.createProject('discard-workspace-demo');
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

const discardButton = () => page.locator('.session-actions [data-action="discard-workspace"]');
const workspaceFact = () => page.locator('.session-facts [data-workspace-status]');

test('a failed task\'s kept workspace is discarded from its header and its node goes warm', async (t) => {
  if (!serverOrSkip(t)) return;
  const task = await api.createTask(project.id, { description: 'Break on purpose\nkiln-demo: fail error', runNow: true });
  await until('the task failed', async () => (await api.task(task.id)).status === 'failed', { timeout: 60000 });
  const failed = await api.task(task.id);
  assert.ok(failed.workspaceId && failed.nodeId, 'the failed task names its workspace and node');
  const node = await api.call('GET', `/api/nodes/${failed.nodeId}`);
  assert.equal(node.claimedBy, task.id, 'the node is kept with the workspace');

  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${task.sessionId}`);
  await markNoReload(page);
  await until('the workspace shown as stopped', async () => (await workspaceFact().getAttribute('data-workspace-status')) === 'stopped', { timeout: 10000 });
  await discardButton().waitFor({ timeout: 10000 });

  // Cancel in the confirmation keeps everything.
  await discardButton().click();
  await page.locator('dialog.confirm').waitFor();
  assert.match(await page.locator('dialog.confirm').textContent(), /Its files are removed from the node/);
  await page.click('dialog.confirm [data-action="cancel"]');
  assert.equal((await api.call('GET', `/api/workspaces/${failed.workspaceId}`)).status, 'stopped');

  await discardButton().click();
  await screenshot(page, 'discard-workspace-confirm');
  await page.click('dialog.confirm [data-action="confirm"]');
  await until('the workspace shown as destroyed', async () => (await workspaceFact().getAttribute('data-workspace-status')) === 'destroyed', { timeout: 30000 });
  assert.equal(await workspaceFact().textContent(), 'workspace destroyed');
  assert.equal(await discardButton().count(), 0, 'nothing left to discard');
  assert.equal(await page.locator('.session-actions [data-action="re-run"]').count(), 1, 'the task can still be re-run');
  const released = await until('the node released warm', async () => {
    const n = await api.call('GET', `/api/nodes/${failed.nodeId}`);
    return n.state === 'warm' && n.claimedBy === null ? n : null;
  }, { timeout: 30000 });
  assert.equal(released.claimedBy, null);
  assert.equal((await api.task(task.id)).status, 'failed', 'the task keeps its outcome');
  await assertNoReload(page);
  assert.deepEqual(page.errors, []);
});

test('a running task offers no Discard workspace', async (t) => {
  if (!serverOrSkip(t)) return;
  const task = await api.createTask(project.id, { description: 'Wait for me\nkiln-demo: hang', runNow: true });
  await until('the task in progress', async () => (await api.task(task.id)).status === 'in_progress', { timeout: 60000 });
  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${task.sessionId}`);
  await page.locator('.session-actions [data-action="cancel"]').waitFor({ timeout: 10000 });
  assert.equal(await discardButton().count(), 0);
  await page.click('.session-actions [data-action="cancel"]');
  await discardButton().waitFor({ timeout: 30000 });
  assert.deepEqual(page.errors, []);
});
