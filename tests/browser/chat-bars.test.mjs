// The bottom bar of a chat without a task, against a real `kiln serve` with the demo agent:
// "New task instead" can be undone ("Back to the chat" brings the reply box back), and a
// closed chat's note sits above the task composer, inside the conversation's column (it was
// appended below the composer, flush against the window's edge).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, closeBrowser, contextAs, markNoReload, newUser, openProject,
  screenshot, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context; let chat;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('chatbars');
  api = apiAs(user);
  project = await api.createProject('chat-bars-demo');
  chat = await api.call('POST', `/api/projects/${project.id}/sessions`, { prompt: 'What is in this repository?' });
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

const reply = () => page.locator('form.chat-reply');
const composer = () => page.locator('form.composer');

test('"New task instead" can be undone with "Back to the chat"', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${chat.id}`);
  await markNoReload(page);
  await reply().waitFor({ timeout: 10000 });
  assert.ok(!(await composer().isVisible()));

  await page.click('form.chat-reply [data-action="new-task"]');
  await composer().waitFor();
  assert.ok(!(await reply().isVisible()), 'the reply box gives way to the task composer');
  const back = page.locator('[data-action="back-to-chat"]');
  assert.ok(await back.isVisible(), 'a way back to the chat is offered');

  await back.click();
  await reply().waitFor();
  assert.ok(!(await composer().isVisible()), 'the task composer is out of the way again');
  assert.ok(!(await back.isVisible()));
  assert.ok(await page.locator('form.chat-reply textarea').evaluate((el) => el === document.activeElement), 'the reply box has the focus');
  await assertNoReload(page);
  assert.deepEqual(page.errors, []);
});

test('a closed chat\'s note sits above the task composer, in the conversation\'s column', async (t) => {
  if (!serverOrSkip(t)) return;
  await api.call('POST', `/api/sessions/${chat.id}/close`);
  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${chat.id}`);
  const note = page.locator('.chat-closed');
  await note.waitFor({ timeout: 10000 });
  await until('the task composer back', () => composer().isVisible());
  const [noteBox, composerBox, mainBox] = await Promise.all([note.boundingBox(), composer().boundingBox(), page.locator('.chat-main').boundingBox()]);
  assert.ok(noteBox.y + noteBox.height <= composerBox.y + 1, `the note (${JSON.stringify(noteBox)}) is above the composer (${JSON.stringify(composerBox)})`);
  assert.ok(Math.abs(noteBox.x - mainBox.x) <= 1 && Math.abs(noteBox.width - mainBox.width) <= 1, 'the note spans the conversation column');
  const padding = await note.evaluate((el) => Number.parseFloat(getComputedStyle(el).paddingLeft));
  assert.ok(padding >= 8, `the note's text is not flush against the edge (padding ${padding}px)`);
  await screenshot(page, 'chat-closed-note');
  assert.deepEqual(page.errors, []);
});
