// A login link that no longer works, opened in a browser, against a real `kiln serve`: the
// sign-in page says why (it used to be a page of raw JSON from GET /login), once: the address
// is cleaned, so a reload shows the plain sign-in page.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { BASE, closeBrowser, launch, loginLink, newUser, screenshot, serverOrSkip } from './harness.mjs';

let context;
after(async () => { await context?.close(); await closeBrowser(); });

test('a used login link opened in the browser leads to the sign-in page, which says why', async (t) => {
  if (!serverOrSkip(t)) return;
  const user = newUser('usedlink');
  const link = loginLink(user.name);
  context = await (await launch()).newContext({ baseURL: BASE, viewport: { width: 1200, height: 800 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (err) => errors.push(err));

  // First use: signed in.
  await page.goto(link);
  await page.locator('.account-link').waitFor({ timeout: 10000 });
  assert.ok((await page.locator('.account-link').getAttribute('aria-label')).includes(user.name));
  await page.click('text=Sign out');
  await page.locator('.signin-card').waitFor();

  // Second use: refused, and said so on the sign-in page.
  await page.goto(link);
  const message = page.locator('.signin-card .form-error');
  await message.waitFor({ timeout: 10000 });
  assert.match(await message.textContent(), /login link is invalid, was already used or has expired/);
  assert.ok(!page.url().includes('login=invalid'), `the address is cleaned: ${page.url()}`);
  assert.ok(page.url().endsWith('#/signin'), page.url());
  await screenshot(page, 'signin-used-link');

  await page.reload();
  await page.locator('.signin-card').waitFor();
  assert.ok(!(await message.isVisible()), 'said once, not again after a reload');
  assert.deepEqual(errors, []);
});
