// "New chat" against a real `kiln serve` with the demo agent: a chat without a task opened
// from the sidebar (VM size chosen in the dialog, a first message), answered, a second
// message sent from the chat's reply box and answered, then closed from the header: the
// workspace is destroyed, the node goes warm, the reply box gives way to a closed note.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, closeBrowser, contextAs, markNoReload, newUser, openProject,
  screenshot, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('newchat');
  api = apiAs(user);
  project = await api.createProject('newchat-demo', { defaultVmSize: 'small' });
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

/** The stored answers of a session that mention `text`. */
async function answersAbout(sessionId, text) {
  return (await api.messages(sessionId)).messages.filter((m) => m.role === 'assistant' && m.content.includes(text));
}

test('New chat: VM size and first message, a second message, then Close chat', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  await markNoReload(page);
  const newChat = page.locator('[data-action="new-chat"]');
  await newChat.waitFor({ timeout: 10000 });
  await newChat.click();
  const dialog = page.locator('dialog[aria-label="New chat"]');
  await dialog.waitFor();
  assert.equal(await dialog.locator('select[name="vmSize"]').inputValue(), 'small', 'the project default is preselected');
  await dialog.locator('select[name="vmSize"]').selectOption('medium');
  await dialog.locator('textarea[name="prompt"]').fill('Explain the layout of this repository');
  await screenshot(page, 'new-chat-dialog-light');
  await dialog.locator('[data-action="start-chat"]').click();
  await dialog.waitFor({ state: 'detached' });

  // The chat is selected in the sidebar; its session has no task.
  const sessionId = await until('the chat selected in the sidebar', async () => {
    const selected = page.locator('.session-item.selected');
    return (await selected.count()) ? selected.getAttribute('data-session-id') : null;
  });
  const session = await api.call('GET', `/api/sessions/${sessionId}`);
  assert.equal(session.taskId, null);
  // The first message and its answer, live; the reply box replaces the task composer.
  await page.locator('.message-list .msg.user', { hasText: 'Explain the layout of this repository' }).waitFor({ timeout: 10000 });
  await until('the first answer stored and shown', async () => {
    const answers = await answersAbout(sessionId, 'Explain the layout');
    return answers.length > 0 && (await page.locator(`.message-list [data-message-id="${answers[0].id}"]`).count()) === 1;
  }, { timeout: 60000 });
  assert.ok(await page.locator('form.chat-reply').isVisible());
  assert.ok(!(await page.locator('form.composer').isVisible()), 'the task composer is out of the way');
  const chat = await until('the chat active', async () => {
    const s = await api.call('GET', `/api/sessions/${sessionId}`);
    return s.status === 'active' ? s : null;
  }, { timeout: 60000 });
  const workspace = await api.call('GET', `/api/workspaces/${chat.workspaceId}`);
  const node = (await api.call('GET', '/api/nodes')).find((n) => n.id === workspace.nodeId);
  assert.equal(node.size, 'medium', 'the node has the size chosen in the dialog');

  // A second message from the reply box, answered after the first.
  await page.locator('form.chat-reply textarea').fill('Now list the files');
  await page.locator('form.chat-reply [data-action="send-chat"]').click();
  await page.locator('.message-list .msg.user', { hasText: 'Now list the files' }).waitFor({ timeout: 10000 });
  await until('the reply box to be cleared', async () => (await page.locator('form.chat-reply textarea').inputValue()) === '');
  await until('the second answer stored and shown', async () => {
    const answers = await answersAbout(sessionId, 'Now list the files');
    return answers.length > 0 && (await page.locator(`.message-list [data-message-id="${answers[0].id}"]`).count()) === 1;
  }, { timeout: 60000 });
  const stored = (await api.messages(sessionId)).messages;
  const at = (role, text) => stored.findIndex((m) => m.role === role && m.content.includes(text));
  const order = [at('user', 'Explain the layout'), at('assistant', 'Explain the layout'), at('user', 'Now list the files'), at('assistant', 'Now list the files')];
  assert.ok(order.every((i, n) => i >= 0 && (n === 0 || i > order[n - 1])), `in order: ${order}`);
  await screenshot(page, 'new-chat-light');

  // Close chat: read-only, the workspace destroyed and the node warm.
  await page.click('.session-actions [data-action="close-chat"]');
  await page.locator('.chat-closed').waitFor({ timeout: 10000 });
  assert.ok(!(await page.locator('form.chat-reply').isVisible()));
  assert.ok(await page.locator('form.composer').isVisible(), 'the task composer is back');
  await until('the workspace destroyed', async () => (await api.call('GET', `/api/workspaces/${workspace.id}`)).status === 'destroyed', { timeout: 60000 });
  await until('the node warm', async () => (await api.call('GET', '/api/nodes')).find((n) => n.id === node.id)?.state === 'warm', { timeout: 60000 });
  const item = page.locator(`.session-item[data-session-id="${sessionId}"]`);
  await until('the sidebar to show the chat closed', async () => (await item.locator('.badge').textContent()) === 'closed');
  assert.equal((await api.call('GET', `/api/sessions/${sessionId}`)).status, 'closed');
  await assertNoReload(page);
  assert.deepEqual(page.errors, []);
});
