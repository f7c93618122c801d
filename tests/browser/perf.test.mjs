// Performance check (printed, never asserted on time): a project with 100 sessions and
// 10,000 messages. Prints the time to first render of the latest session in Chromium
// (navigation start → its messages and the sidebar on screen) and the view-switch time
// (key press → the other view painted).

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { apiAs, closeBrowser, contextAs, newUser, serverOrSkip } from './harness.mjs';

const SESSIONS = 100;
const PER_SESSION = 100;
const RUNS = 5;
let user; let api; let project;

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const fmt = (xs) => `median ${median(xs).toFixed(0)} ms, min ${Math.min(...xs).toFixed(0)}, max ${Math.max(...xs).toFixed(0)} (n=${xs.length})`;

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('perf');
  api = apiAs(user);
  project = await api.createProject('perf-100x100');
});
after(closeBrowser);

test(`perf: ${SESSIONS} sessions, ${SESSIONS * PER_SESSION} messages — first render and view switch`, async (t) => {
  if (!serverOrSkip(t)) return;
  const db = path.join(process.env.KILN_DATA_DIR || '', 'kiln.db');
  if (!existsSync(db)) { t.skip(`no SQLite database at ${db} to seed`); return; }
  // 100 sessions through the API (each a draft task with its prompt as message 1)…
  const sessions = [];
  for (let i = 1; i <= SESSIONS; i++) {
    const task = await api.createTask(project.id, { description: `Performance session ${i}: refactor module ${i}`, priority: i % 5 });
    sessions.push(task.sessionId);
  }
  // …and the other 99 messages of each straight into the store.
  const seeder = path.join(path.dirname(fileURLToPath(import.meta.url)), 'seed_messages.py');
  const added = Number(execFileSync('python3', [seeder, db, String(PER_SESSION), ...sessions], { encoding: 'utf8' }).trim());
  assert.equal(added, SESSIONS * (PER_SESSION - 1));
  const latest = sessions[sessions.length - 1];
  assert.equal((await api.messages(latest)).messages.length, PER_SESSION);

  const { page, context } = await contextAs(user);
  // Record when the first message of the open session and the full sidebar are on screen.
  await context.addInitScript(() => {
    const check = () => {
      if (window.__kilnRendered) return;
      const msgs = document.querySelectorAll('.message-list [data-message-id]').length;
      const items = document.querySelectorAll('.session-item').length;
      if (msgs > 0 && items > 0) {
        window.__kilnRendered = { at: performance.now(), msgs, items };
        requestAnimationFrame(() => { window.__kilnPainted = performance.now(); });
      }
    };
    new MutationObserver(check).observe(document, { childList: true, subtree: true });
  });
  const firstRender = [];
  let shape;
  for (let run = 0; run < RUNS; run++) {
    await page.goto(`/#/p/${project.id}`);
    await page.waitForFunction(() => window.__kilnPainted, null, { timeout: 30000 });
    shape = await page.evaluate(() => window.__kilnRendered);
    firstRender.push(await page.evaluate(() => window.__kilnPainted));
    await page.goto('about:blank');
  }
  await page.goto(`/#/p/${project.id}`);
  await page.waitForFunction(() => window.__kilnPainted);
  assert.equal(await page.locator('.session-item.selected').getAttribute('data-session-id'), latest, 'the latest session opens at once');

  // View switches by key, measured inside the page up to the next painted frame.
  const switches = { 'chat → board': [], 'board → chat': [] };
  for (let i = 0; i < 10; i++) {
    for (const [label, key, pane] of [['chat → board', 'b', 'board'], ['board → chat', 'c', 'chat']]) {
      const ms = await page.evaluate(([k, p]) => new Promise((resolve) => {
        const t0 = performance.now();
        document.body.dispatchEvent(new KeyboardEvent('keydown', { key: k, bubbles: true }));
        const wait = () => {
          const el = document.querySelector(`.pane[data-view="${p}"]`);
          if (el && !el.hidden) requestAnimationFrame(() => setTimeout(() => resolve(performance.now() - t0)));
          else requestAnimationFrame(wait);
        };
        wait();
      }), [key, pane]);
      switches[label].push(ms);
    }
  }
  console.log(`perf: project with ${SESSIONS} sessions / ${SESSIONS * PER_SESSION} messages; sidebar ${shape.items} sessions, ${shape.msgs} messages of the latest session rendered`);
  console.log(`perf: first render of the latest session (navigation → painted): ${fmt(firstRender)}`);
  for (const [label, xs] of Object.entries(switches)) console.log(`perf: view switch ${label} (key → painted): ${fmt(xs)}`);
  await context.close();
});
