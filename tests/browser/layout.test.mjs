// The project page fits every window width: no horizontal scrolling of the whole page and
// every control of the top bar and the submit bar on screen, from a small phone (320 px)
// through the tablet widths between the phone layout and the desktop one (761–980 px) to
// a desktop window, with a long project name. Only the board scrolls sideways, inside itself.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  apiAs, closeBrowser, contextAs, newUser, openProject, screenshot, serverOrSkip,
} from './harness.mjs';

let user; let api; let project; let page; let context;

const LONG_NAME = 'customer-billing-reconciliation-service-with-a-rather-long-name';

before(async () => {
  if (!process.env.KILN_URL) return;
  user = newUser('layout');
  api = apiAs(user);
  project = await api.createProject(LONG_NAME);
  // A draft gives the chat view a session header (Edit, Run) without starting a node.
  await api.createTask(project.id, { description: 'Tidy up the imports of the billing module' });
  ({ page, context } = await contextAs(user, { viewport: { width: 1360, height: 800 } }));
});
after(async () => { await context?.close(); await closeBrowser(); });

/** How far the page scrolls sideways, and the visible controls that end off screen. */
async function overflow() {
  return page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const off = [];
    const selectors = ['.brand', '.tab', '[data-action="toggle-theme"]', '.account-link', '.topbar-end .btn',
      '.pane:not([hidden]) .split-main', '.pane:not([hidden]) .split-toggle', '.pane:not([hidden]) .session-actions .btn'];
    for (const sel of selectors) {
      for (const el of document.querySelectorAll(sel)) {
        const box = el.getBoundingClientRect();
        if (box.width === 0 || box.height === 0) continue;
        if (box.left < -1 || box.right > width + 1) off.push(`${sel} at ${Math.round(box.left)}–${Math.round(box.right)}`);
      }
    }
    return { scroll: document.documentElement.scrollWidth - width, off };
  });
}

test('the project page fits every width, with a long project name', async (t) => {
  if (!serverOrSkip(t)) return;
  await openProject(page, project.id);
  await page.locator('.session-actions [data-action="run"]').waitFor({ timeout: 10000 });
  for (const view of ['chat', 'board', 'nodes']) {
    await page.goto(`/#/p/${project.id}${view === 'chat' ? '' : `/${view}`}`);
    await page.locator(`.pane[data-view="${view}"]:not([hidden])`).waitFor();
    for (const width of [320, 360, 768, 820, 900, 1024, 1360]) {
      await page.setViewportSize({ width, height: 800 });
      // Two frames: the layout of the new width has been computed.
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      const { scroll, off } = await overflow();
      if (scroll > 0 || off.length) await screenshot(page, `layout-${view}-${width}-overflow`);
      assert.equal(scroll, 0, `${view} at ${width}px scrolls sideways by ${scroll}px`);
      assert.deepEqual(off, [], `${view} at ${width}px has controls off screen`);
    }
  }
  await page.setViewportSize({ width: 820, height: 800 });
  await page.goto(`/#/p/${project.id}`);
  await page.locator('.pane[data-view="chat"]:not([hidden])').waitFor();
  await screenshot(page, 'layout-tablet-820');
  // The name is cut with an ellipsis rather than pushing the tabs away; its full text stays.
  assert.equal(await page.locator('.project-name strong').textContent(), LONG_NAME);
  assert.deepEqual(page.errors, []);
});

test('a session title keeps room beside its actions when the workspace panel is open', async (t) => {
  if (!serverOrSkip(t)) return;
  const chat = await api.call('POST', `/api/projects/${project.id}/sessions`, { prompt: 'Describe the module layout' });
  await page.setViewportSize({ width: 1024, height: 800 });
  await openProject(page, project.id);
  await page.goto(`/#/p/${project.id}/s/${chat.id}`);
  const open = page.locator('.session-actions [data-action="open-workspace"]');
  await open.waitFor({ timeout: 60000 });
  await open.click();
  await page.locator('.workspace-panel:not([hidden])').waitFor();
  const title = page.locator('.session-title');
  const width = await title.evaluate((el) => el.getBoundingClientRect().width);
  const words = await title.evaluate((el) => {
    // Each word of the title on one line: no word broken across lines.
    const range = document.createRange();
    const text = el.firstChild && el.firstChild.nodeType === 3 ? el.firstChild : el;
    range.selectNodeContents(text);
    return Math.round(range.getBoundingClientRect().height / Number.parseFloat(getComputedStyle(el).lineHeight));
  });
  if (width < 150) await screenshot(page, 'layout-title-squeezed');
  assert.ok(width >= 150, `the title is ${Math.round(width)}px wide beside the actions`);
  assert.ok(words <= 2, `"Describe the module layout" takes ${words} lines`);
  await api.call('POST', `/api/sessions/${chat.id}/close`);
  assert.deepEqual(page.errors, []);
});
