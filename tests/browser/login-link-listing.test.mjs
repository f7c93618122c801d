// The account page's token list against a real `kiln serve`: a one-time login link that was
// printed but not opened yet is listed as a login link, not as an "API token" named
// "first-run" (it cannot be used as one), and revoking it makes the link useless.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  BASE, closeBrowser, contextAs, loginLink, newUser, serverOrSkip, until,
} from './harness.mjs';

let context;
after(async () => { await context?.close(); await closeBrowser(); });

test('an unused login link is listed as a login link, and revoking it makes it useless', async (t) => {
  if (!serverOrSkip(t)) return;
  const user = newUser('linklist');
  const link = loginLink(user.name);
  let page;
  ({ context, page } = await contextAs(user));
  await page.goto('/#/account');
  await until('the API token and the login link listed', async () => (await page.locator('.token-row').count()) === 2, { timeout: 10000 });
  assert.deepEqual(await page.locator('.token-row', { hasText: 'first-run' }).allTextContents(), [], 'no login link shown as a token named "first-run"');
  const row = page.locator('.token-row[data-kind="login-link"]');
  assert.equal(await row.count(), 1);
  assert.equal(await row.locator('.token-name').textContent(), 'Login link (not used yet)');
  assert.deepEqual(await row.locator('.chip').allTextContents(), ['login link']);
  // The API token this page uses is still an API token.
  assert.ok((await page.locator('.token-row[data-kind="api"] .chip').allTextContents()).includes('API token'));

  await row.locator('[data-action="revoke-token"]').click();
  const confirm = page.locator('dialog');
  await confirm.waitFor();
  assert.match(await confirm.textContent(), /Opening it will no longer sign anyone in/);
  await confirm.locator('[data-action="confirm"]').click();
  await until('the login link gone from the list', async () => (await row.count()) === 0);
  const opened = await fetch(link, { redirect: 'manual', headers: { accept: 'application/json' } });
  assert.equal(opened.status, 401, `${BASE}: the revoked link signs nobody in`);
  assert.deepEqual(page.errors, []);
});
