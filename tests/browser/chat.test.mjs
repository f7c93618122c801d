// Chat view against a real `kiln serve` with the demo agent: Run Now streams messages in
// live and the task completes; a failing task lands in failed; the nodes panel shows the
// warm node counting down. Saves screenshots of the chat view and the nodes panel.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, assertNoReload, closeBrowser, contextAs, headerStatus, markNoReload, newUser, openProject,
  runNow, screenshot, serverOrSkip, until,
} from './harness.mjs';

let user; let api; let project; let page; let context;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('chat');
  api = apiAs(user);
  project = await api.createProject('chat-demo', { defaultVmSize: 'small' });
  ({ page, context } = await contextAs(user));
});
after(async () => { await context?.close(); await closeBrowser(); });

test('Run Now: messages stream in live and the task completes', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  assert.ok(await page.locator('.empty h2').isVisible(), 'an empty project invites a first task');
  await markNoReload(page);

  const task = await runNow(page, api, project.id, 'Write a friendly greeting into the demo file');
  assert.equal(task.priority, 0);
  // The prompt is there at once; the agent's plan, tool card and answer follow live.
  await page.waitForSelector('.msg.user', { timeout: 10000 });
  await page.waitForSelector('.tool-card', { timeout: 60000 });
  await page.waitForSelector('.msg.assistant:not(.streaming)', { timeout: 60000 });
  await until('the task to complete in the header', async () => (await headerStatus(page)) === 'completed', { timeout: 60000 });
  await assertNoReload(page);

  // Every stored answer is shown once (the outbox may still deliver after the task ends).
  let assistants = [];
  await until('one bubble per stored answer, none streaming', async () => {
    assistants = (await api.messages(task.sessionId)).messages.filter((m) => m.role === 'assistant');
    const shownIds = await page.locator('.message-list [data-message-id]').evaluateAll((els) => els.map((e) => e.dataset.messageId));
    return assistants.length >= 1 && assistants.every((m) => shownIds.includes(m.id))
      && (await page.locator('.msg.streaming').count()) === 0
      && (await page.locator('.msg.assistant').count()) === assistants.length;
  });
  // The sidebar shows the session with its task's status.
  const item = page.locator(`.session-item[data-session-id="${task.sessionId}"]`);
  assert.equal(await item.locator('.badge').getAttribute('data-status'), 'completed');
  assert.deepEqual(page.errors, []);
  await screenshot(page, 'chat-light');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'chat-dark');
  await page.emulateMedia({ colorScheme: 'light' });
  // The same session on a phone.
  const phone = await contextAs(user, { viewport: { width: 390, height: 844 } });
  await openProject(phone.page, project.id);
  await phone.page.waitForSelector('.msg.assistant:not(.streaming)');
  await screenshot(phone.page, 'chat-phone-light');
  await phone.page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(phone.page, 'chat-phone-dark');
  await phone.context.close();
});

test('submit errors are shown inline, in the submit bar', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  const error = page.locator('.composer .form-error');
  await page.click('[data-action="run-now"]');
  await error.waitFor();
  assert.match(await error.textContent(), /Write what the agent should do/);
  // The server's refusal (a description over its 200 KiB limit) lands in the same place.
  await page.fill('.composer-text', 'x'.repeat(210 * 1024));
  await page.click('[data-action="run-now"]');
  await until('the server error inline', async () => /longer than/.test(await error.textContent()));
  assert.ok(await error.isVisible());
  await page.fill('.composer-text', '');
});

// Right after a completed run (a failed or cancelled one keeps its node for inspection).
test('the nodes panel shows the warm node and its countdown, live', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id, 'nodes');
  const row = page.locator('.node-row[data-state="warm"]').first();
  await row.waitFor({ timeout: 30000 });
  const first = await row.locator('.countdown').textContent();
  assert.match(first, /^\d+:\d\d(:\d\d)?$/);
  await page.waitForTimeout(2100);
  const later = await row.locator('.countdown').textContent();
  assert.notEqual(later, first, 'the countdown ticks');
  assert.ok(await row.locator('.chip').first().textContent(), 'the node size is shown');
  await screenshot(page, 'nodes-light');
  await page.emulateMedia({ colorScheme: 'dark' });
  await screenshot(page, 'nodes-dark');
  await page.emulateMedia({ colorScheme: 'light' });
});

test('streamed text grows in one bubble that the stored message replaces', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  const topic = 'Explain, in a few careful sentences, why the greeting file matters to the people who read this repository every single day';
  const lengths = [];
  // Sample the streaming bubble's text from inside the page, every animation frame.
  await page.evaluate(() => {
    window.__kilnLengths = [];
    const sample = () => {
      const el = document.querySelector('.msg.streaming .msg-body');
      if (el) {
        const n = el.textContent.length;
        const l = window.__kilnLengths;
        if (!l.length || l[l.length - 1] !== n) l.push(n);
      }
      window.__kilnSampler = requestAnimationFrame(sample);
    };
    sample();
  });
  const task = await runNow(page, api, project.id, topic);
  await until('the task to end', async () => ['completed', 'failed'].includes((await api.task(task.id)).status), { timeout: 60000 });
  await page.waitForSelector('.msg.assistant:not(.streaming)', { timeout: 10000 });
  lengths.push(...await page.evaluate(() => { cancelAnimationFrame(window.__kilnSampler); return window.__kilnLengths; }));
  const increasing = lengths.filter((n, i) => i === 0 || n > lengths[i - 1]);
  assert.ok(increasing.length >= 3, `the answer visibly grew (lengths seen: ${lengths.join(', ')})`);
  await until('the stored message replaced the streaming bubble (no duplicate)', async () => {
    const stored = (await api.messages(task.sessionId)).messages.filter((m) => m.role === 'assistant');
    return (await page.locator('.msg.assistant').count()) === stored.length && (await page.locator('.msg.streaming').count()) === 0;
  });
});

test('agent and user text is shown as text: markup in messages never becomes HTML', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  const hostile = 'Check <img src=x onerror="window.__kilnPwned=1"> and <script>window.__kilnPwned=2</script> [link](javascript:window.__kilnPwned=3)';
  // The demo agent quotes the task's first line in its answer, so both sides carry it.
  const task = await runNow(page, api, project.id, hostile);
  await until('the task to complete', async () => (await headerStatus(page)) === 'completed', { timeout: 60000 });
  await page.waitForSelector('.msg.assistant:not(.streaming)');
  const list = page.locator('.message-list');
  assert.equal(await list.locator('img, script, iframe, [onerror]').count(), 0, 'no element came from message text');
  assert.equal(await list.locator('a[href^="javascript:"]').count(), 0, 'no script link');
  assert.equal(await page.evaluate(() => window.__kilnPwned), undefined);
  assert.match(await list.locator('.msg.user').first().textContent(), /<img src=x onerror=/);
  assert.ok((await api.messages(task.sessionId)).messages.some((m) => m.role === 'assistant' && m.content.includes('<script>')));
  assert.match(await list.locator('.msg.assistant').last().textContent(), /<script>window.__kilnPwned=2<\/script>/);
});

test('a failing task lands in failed, in the chat view and on the board', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  const task = await runNow(page, api, project.id, 'Try something that breaks\nkiln-demo: fail error');
  await until('the task to fail in the header', async () => (await headerStatus(page)) === 'failed', { timeout: 60000 });
  assert.equal((await api.task(task.id)).status, 'failed');
  assert.ok(await page.locator('.task-error').isVisible(), 'the failure reason is shown');
  assert.ok(await page.locator('[data-action="re-run"]').isVisible(), 'a failed task offers Re-run');
  await page.keyboard.press('Escape');
  await page.keyboard.press('b');
  await page.waitForSelector(`[data-column="failed"] .card[data-task-id="${task.id}"]`, { timeout: 5000 });
});

test('Open workspace: a live view and a follow-up prompt while the agent works; Cancel stops it', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  const task = await runNow(page, api, project.id, 'Wait for more instructions\nkiln-demo: hang');
  await until('the task to be in progress', async () => (await headerStatus(page)) === 'in_progress', { timeout: 60000 });
  const open = page.locator('[data-action="open-workspace"]');
  await open.waitFor({ timeout: 15000 });
  await open.click();
  const panel = page.locator('.workspace-panel');
  await panel.waitFor();
  await panel.locator('.badge.ws-running').waitFor();
  await panel.locator('textarea').fill('Also add a section to the README');
  await panel.locator('button[type="submit"]').click();
  // Stored at once and shown live, in the conversation and in the panel's tail.
  await page.locator('.message-list .msg.user', { hasText: 'Also add a section to the README' }).waitFor({ timeout: 10000 });
  await panel.locator('.tail li', { hasText: 'Also add a section to the README' }).waitFor({ timeout: 5000 });
  await until('the follow-up box to be cleared', async () => (await panel.locator('textarea').inputValue()) === '');
  assert.ok((await api.messages(task.sessionId)).messages.some((m) => m.role === 'user' && m.content === 'Also add a section to the README'));
  await screenshot(page, 'workspace-panel-light');
  await page.click('.session-actions [data-action="cancel"]');
  await until('the task to be cancelled', async () => (await headerStatus(page)) === 'cancelled', { timeout: 30000 });
  assert.equal((await api.task(task.id)).status, 'cancelled');
});
