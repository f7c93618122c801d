// Two browsers on one project: what one starts, the other sees live (new session,
// streamed messages, status changes, board movement) without reloading.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, closeBrowser, contextAs, headerStatus, markNoReload, newUser, openProject,
  runNow, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; const contexts = [];

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('live');
  api = apiAs(user);
  project = await api.createProject('live-demo');
});
after(async () => { for (const c of contexts) await c.close(); await closeBrowser(); });

test('a second browser context sees the same live updates', async (t) => {
  if (!serverOrSkip(t)) return;
  const a = await contextAs(user);
  const b = await contextAs(user, { colorScheme: 'dark' });
  contexts.push(a.context, b.context);
  await openProject(a.page, project.id);
  await openProject(b.page, project.id, 'board');
  await markNoReload(b.page);

  const task = await runNow(a.page, api, project.id, 'Add a health check endpoint');
  // B's board shows the card arrive and move to completed by itself.
  await b.page.locator(`.card[data-task-id="${task.id}"]`).waitFor({ timeout: 10000 });
  await b.page.locator(`[data-column="completed"] .card[data-task-id="${task.id}"]`).waitFor({ timeout: 60000 });
  // B's chat view has the session, and its messages match A's.
  await b.page.keyboard.press('c');
  const item = b.page.locator(`.session-item[data-session-id="${task.sessionId}"]`);
  await item.waitFor({ timeout: 5000 });
  await item.click();
  await until('B shows completed', async () => (await headerStatus(b.page)) === 'completed');
  await until('A shows completed', async () => (await headerStatus(a.page)) === 'completed');
  const ids = (p) => p.locator('.message-list [data-message-id]').evaluateAll((els) => els.map((e) => e.dataset.messageId));
  await until('both pages show the same messages', async () => JSON.stringify(await ids(a.page)) === JSON.stringify(await ids(b.page)));
  await assertNoReload(b.page);
  assert.deepEqual(b.page.errors, []);
});

test('a page that reconnects catches up on what it missed', async (t) => {
  if (!serverOrSkip(t)) return;
  const c = await contextAs(user);
  contexts.push(c.context);
  // Track the page's WebSockets, and let the test refuse new ones for a while.
  await c.context.addInitScript(() => {
    const Native = window.WebSocket;
    window.__kilnSockets = [];
    window.__kilnBlock = false;
    window.WebSocket = class extends Native {
      constructor(url, ...rest) {
        // While "offline", connections go nowhere (port 9 refuses them) and fail.
        super(window.__kilnBlock ? 'ws://127.0.0.1:9/' : url, ...rest);
        window.__kilnSockets.push(this);
      }
    };
  });
  await openProject(c.page, project.id, 'board');
  await markNoReload(c.page);
  // A network drop: the socket closes and reconnects keep failing while a task is created.
  await c.page.evaluate(() => { window.__kilnBlock = true; for (const ws of window.__kilnSockets) ws.close(); });
  await c.page.waitForSelector('.live-status[data-state="offline"]', { timeout: 5000 });
  const created = await api.createTask(project.id, { description: 'Made while the page was offline' });
  await c.page.waitForTimeout(300);
  assert.equal(await c.page.locator(`.card[data-task-id="${created.id}"]`).count(), 0, 'not seen while offline');
  await c.page.evaluate(() => { window.__kilnBlock = false; });
  await c.page.locator(`[data-column="draft"] .card[data-task-id="${created.id}"]`).waitFor({ timeout: 30000 });
  await c.page.waitForSelector('.live-status[data-state="live"]');
  await assertNoReload(c.page);
});

test('a page opened mid-turn shows the text streamed so far, then the stored message', async (t) => {
  if (!serverOrSkip(t)) return;
  const a = await contextAs(user);
  contexts.push(a.context);
  await openProject(a.page, project.id);
  const task = await runNow(a.page, api, project.id, 'Write five short notes about the build\nkiln-demo: messages 5');
  // Once A sees text streaming, B opens the same session.
  await a.page.waitForSelector('.msg.streaming', { timeout: 30000 });
  const b = await contextAs(user);
  contexts.push(b.context);
  await b.page.evaluate(() => { window.__kilnSawStreaming = false; });
  await b.context.addInitScript(() => {
    new MutationObserver(() => {
      const el = document.querySelector('.msg.streaming .msg-body');
      if (el && el.textContent.length > 0) window.__kilnSawStreaming = true;
    }).observe(document, { childList: true, subtree: true, characterData: true });
  });
  await openProject(b.page, project.id);
  await b.page.locator(`.session-item.selected[data-session-id="${task.sessionId}"]`).waitFor();
  await until('the task to end', async () => ['completed', 'failed'].includes((await api.task(task.id)).status), { timeout: 60000 });
  assert.ok(await b.page.evaluate(() => window.__kilnSawStreaming), 'the late viewer saw text streaming');
  // Messages may still be on their way from the node's outbox when the task ends: compare
  // with what is stored at each look.
  let stored = [];
  try {
    await until('one bubble per stored answer on the late page', async () => {
      stored = (await api.messages(task.sessionId)).messages.filter((m) => m.role === 'assistant');
      return (await b.page.locator('.msg.assistant').count()) === stored.length
        && (await b.page.locator('.msg.streaming').count()) === 0;
    });
  } catch (err) {
    const shown = await b.page.locator('.message-list > *').evaluateAll((els) => els.map((e) => `${e.className}:${e.dataset.messageId || e.dataset.segmentId}`));
    console.log(`stored: ${stored.map((m) => m.id).join(' ')}\nshown: ${shown.join(' ')}`);
    throw err;
  }
});
