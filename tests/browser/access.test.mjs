// Signing in (the one-time login link, or a pasted API token) and isolation: another
// user's project is neither listed nor reachable.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BASE, apiAs, closeBrowser, launch, loginLink, newUser, serverOrSkip } from './harness.mjs';

let alice; let bob; let aliceProject; let bobProject; const contexts = [];

before(async () => {
  if (!process.env.KILN_URL) return;
  alice = newUser('alice');
  bob = newUser('bob');
  aliceProject = await apiAs(alice).createProject('alice-secret-project');
  bobProject = await apiAs(bob).createProject('bob-project');
});
after(async () => { for (const c of contexts) await c.close(); await closeBrowser(); });

async function freshPage() {
  const context = await (await launch()).newContext({ baseURL: BASE });
  contexts.push(context);
  return context.newPage();
}

test('the one-time login link signs the browser in', async (t) => {
  if (!serverOrSkip(t)) return;
  const page = await freshPage();
  await page.goto('/');
  await page.waitForSelector('.signin-card');
  await page.goto(loginLink(alice.name));
  await page.waitForSelector(`.project-card[data-project-id="${aliceProject.id}"]`, { timeout: 10000 });
  assert.equal(await page.locator('.user').textContent(), alice.name);
});

test('an API token pasted on the sign-in page signs in; a wrong one is refused inline', async (t) => {
  if (!serverOrSkip(t)) return;
  const page = await freshPage();
  await page.goto('/#/signin');
  await page.fill('input[name="token"]', 'kiln_not-a-real-token');
  await page.click('.signin-card button[type="submit"]');
  await page.waitForSelector('.signin-card .form-error:not([hidden])');
  await page.fill('input[name="token"]', bob.token);
  await page.click('.signin-card button[type="submit"]');
  await page.waitForSelector(`.project-card[data-project-id="${bobProject.id}"]`, { timeout: 10000 });
  // Signing out of a pasted token forgets it here but never revokes it.
  await page.click('text=Sign out');
  await page.waitForSelector('.signin-card');
  assert.equal((await apiAs(bob).call('GET', '/api/me')).name, bob.name, 'the token still works');
});

test("another user's project is not visible", async (t) => {
  if (!serverOrSkip(t)) return;
  const context = await (await launch()).newContext({ baseURL: BASE });
  contexts.push(context);
  await context.addCookies([{ name: 'kiln_session', value: bob.token, domain: new URL(BASE).hostname, path: '/' }]);
  const page = await context.newPage();
  await page.goto('/');
  await page.waitForSelector(`.project-card[data-project-id="${bobProject.id}"]`);
  assert.equal(await page.locator(`.project-card[data-project-id="${aliceProject.id}"]`).count(), 0);
  assert.equal(await page.getByText('alice-secret-project').count(), 0);
  // Not by its address either.
  await page.goto(`/#/p/${aliceProject.id}`);
  await page.waitForSelector('.empty h2');
  assert.equal(await page.locator('.empty h2').textContent(), 'Not found');
  assert.equal(await page.getByText('alice-secret-project').count(), 0);
});
