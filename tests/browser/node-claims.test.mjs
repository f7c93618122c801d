// The nodes panel names what holds each node, against a real `kiln serve` with the demo
// agent: a node kept for a failed task's workspace says so (it used to read "running: …"
// for a task that had long failed), and follows the task live; a chat's node names the chat
// (it used to show only the bare end of the session id).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, closeBrowser, contextAs, markNoReload, newUser, openProject,
  serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('nodeclaims');
  api = apiAs(user);
  project = await api.createProject('node-claims-demo');
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

/** The node row claimed by `id` (a task or a session), once the API says so. */
async function nodeClaimedBy(id) {
  const node = await until(`a node claimed by ${id}`, async () => (await api.call('GET', '/api/nodes')).find((n) => n.claimedBy === id), { timeout: 60000 });
  return page.locator(`.node-row[data-node-id="${node.id}"] .node-facts`);
}

test('a node kept for a failed task says so, live', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id, 'nodes');
  await markNoReload(page);
  const task = await api.createTask(project.id, { description: 'Break on purpose\nkiln-demo: fail error', runNow: true });
  const claim = await nodeClaimedBy(task.id);
  await until('the task failed', async () => (await api.task(task.id)).status === 'failed', { timeout: 60000 });
  await until('the node row to say the workspace is kept', async () => (await claim.textContent()).includes('workspace kept (failed): Break on purpose'), { timeout: 10000 });
  assert.ok(!(await claim.textContent()).includes('running:'), 'a failed task is not called running');
  assert.equal(await claim.locator('a').getAttribute('href'), `#/p/${project.id}/s/${task.sessionId}`);
  await assertNoReload(page);
  assert.deepEqual(page.errors, []);
});

test('a chat\'s node names the chat', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id, 'nodes');
  const chat = await api.call('POST', `/api/projects/${project.id}/sessions`, { prompt: 'Tell me about the build' });
  const claim = await nodeClaimedBy(chat.id);
  const session = await api.call('GET', `/api/sessions/${chat.id}`);
  const label = `chat: ${session.topic || 'Untitled chat'}`;
  await until('the node row to name the chat', async () => (await claim.textContent()).includes(label), { timeout: 10000 });
  assert.equal(await claim.locator('a').getAttribute('href'), `#/p/${project.id}/s/${chat.id}`);
  await api.call('POST', `/api/sessions/${chat.id}/close`);
  assert.deepEqual(page.errors, []);
});
