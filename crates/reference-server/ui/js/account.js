// The account page (#/account): the user's API tokens and browser sessions (create: the
// secret is shown once; revoke, after a confirmation; revoking this browser's own signs it
// out) and the Hetzner Cloud token (write-only: afterwards only its hint and when it was set).

import { api, forgetCredentials } from './api.js';
import { confirmDialog, h, icon, navigate, replace } from './dom.js';
import { relative, timeAgo } from './time.js';

const LIFETIMES = [
  ['', 'Never expires'], [String(7 * 24 * 3600), '7 days'], [String(30 * 24 * 3600), '30 days'],
  [String(90 * 24 * 3600), '90 days'], [String(365 * 24 * 3600), '1 year'],
];

export async function accountPage(me) {
  const [tokens, hetzner, offered] = await Promise.all([api.tokens(), api.hetznerToken(), api.providers()]);
  const page = h('main', { class: 'page narrow-page account-page' },
    h('div', { class: 'page-head' },
      h('h1', { text: 'Account' }),
      h('span', { class: 'muted', text: `Signed in as ${me.name}` })),
    tokensSection(tokens),
    hetznerSection(hetzner, offered.providers.includes('hetzner')));
  return page;
}

// ---- API tokens -----------------------------------------------------------------------------

function tokensSection(initial) {
  const list = h('ul', { class: 'token-list', 'aria-label': 'API tokens and browser sessions' });
  const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
  const fail = (err) => { error.textContent = err.message; error.hidden = false; };

  function render(tokens) {
    replace(list, tokens.length ? tokens.map((t) => tokenRow(t, { onRevoked: refresh, onError: fail }))
      : h('li', { class: 'muted token-empty', text: 'No tokens.' }));
  }
  async function refresh() {
    try { render(await api.tokens()); } catch (err) { fail(err); }
  }
  render(initial);

  const name = h('input', {
    class: 'input', name: 'tokenName', required: true, maxLength: 200, autocomplete: 'off',
    placeholder: 'e.g. laptop script, CI', 'aria-label': 'Token name',
  });
  const lifetime = h('select', { class: 'input', name: 'tokenLifetime', 'aria-label': 'Expires' },
    LIFETIMES.map(([value, label]) => h('option', { value, text: label })));
  const create = h('button', { class: 'btn primary', type: 'submit', dataset: { action: 'create-token' } }, icon('plus'), 'Create token');
  const reveal = h('div', { class: 'token-reveal', hidden: true, role: 'status' });

  function showSecret(created) {
    const secret = h('code', { class: 'token-secret', text: created.token });
    const copied = h('span', { class: 'muted small', 'aria-live': 'polite' });
    const copy = h('button', {
      class: 'btn small', type: 'button', dataset: { action: 'copy-token' },
      on: {
        click: async () => {
          try {
            await navigator.clipboard.writeText(created.token);
            copied.textContent = 'Copied';
          } catch {
            // No clipboard access (e.g. plain http): select it for a manual copy.
            getSelection().selectAllChildren(secret);
            copied.textContent = 'Selected: press Ctrl+C to copy';
          }
        },
      },
    }, 'Copy');
    const done = h('button', {
      class: 'btn small primary', type: 'button', text: 'Done', dataset: { action: 'dismiss-token' },
      on: { click: () => { replace(reveal); reveal.hidden = true; name.focus(); } },
    });
    replace(reveal,
      h('p', {}, h('strong', { text: `Token "${created.name}" created. ` }),
        'Copy it now: you will not see it again.'),
      h('div', { class: 'token-secret-row' }, secret, copy),
      h('div', { class: 'token-reveal-actions' }, copied, done));
    reveal.hidden = false;
    copy.focus();
  }

  const form = h('form', {
    class: 'token-create',
    on: {
      submit: async (e) => {
        e.preventDefault();
        error.hidden = true;
        const body = { name: name.value.trim() };
        if (lifetime.value) body.expiresInSecs = Number(lifetime.value);
        create.disabled = true;
        try {
          const created = await api.createToken(body);
          name.value = '';
          lifetime.value = '';
          showSecret(created);
          await refresh();
        } catch (err) { fail(err); } finally { create.disabled = false; }
      },
    },
  },
  h('label', { class: 'field' }, h('span', { text: 'Name' }), name),
  h('label', { class: 'field' }, h('span', { text: 'Expires' }), lifetime),
  h('div', { class: 'field token-create-submit' }, create));

  return h('section', { class: 'card-form account-section', id: 'api-tokens', 'aria-labelledby': 'api-tokens-title' },
    h('h2', { id: 'api-tokens-title', text: 'API tokens' }),
    h('p', { class: 'field-hint', text: 'For scripts and other browsers: send one as "Authorization: Bearer …", or paste it on the sign-in page. Browser sessions (from a login link) are listed too; revoking one signs that browser out.' }),
    form,
    reveal,
    error,
    list);
}

function tokenRow(t, { onRevoked, onError }) {
  const session = t.name === 'browser';
  // A one-time login link not opened yet (`kiln serve` prints one at each start): it signs a
  // browser in once and is no API token; revoking it makes the link useless.
  const loginLink = t.name === 'first-run';
  const label = session ? 'Browser session' : loginLink ? 'Login link (not used yet)' : t.name;
  const revoke = h('button', {
    class: 'btn tiny', type: 'button', dataset: { action: 'revoke-token' },
    'aria-label': `Revoke ${session ? 'browser session' : loginLink ? 'login link' : t.name}`,
    on: {
      click: async () => {
        const question = t.current
          ? `Revoke "${label}"? It is the one this browser is signed in with: you will be signed out.`
          : loginLink ? 'Revoke this login link? Opening it will no longer sign anyone in.'
            : `Revoke "${label}"? Anything using it is refused from now on.`;
        if (!(await confirmDialog('Revoke token', question, 'Revoke'))) { revoke.focus(); return; }
        revoke.disabled = true;
        try {
          await api.revokeToken(t.id);
        } catch (err) {
          revoke.disabled = false;
          onError(err);
          return;
        }
        if (t.current) {
          forgetCredentials();
          navigate('#/signin');
          return;
        }
        await onRevoked();
      },
    },
  }, 'Revoke');
  return h('li', { class: 'token-row', dataset: { tokenId: t.id, current: String(t.current), kind: session ? 'browser' : loginLink ? 'login-link' : 'api' } },
    h('div', { class: 'token-main' },
      h('span', { class: 'token-name', text: label }),
      t.current ? h('span', { class: 'chip current', text: 'this browser' }) : null,
      session ? null : h('span', { class: 'chip', text: loginLink ? 'login link' : 'API token' })),
    h('div', { class: 'token-meta' },
      'created ', timeAgo(t.createdAt), ' · ',
      t.expiresAt ? h('time', { dateTime: t.expiresAt, title: new Date(t.expiresAt).toLocaleString(), text: `expires ${relative(t.expiresAt)}` }) : 'never expires'),
    revoke);
}

// ---- Hetzner Cloud token ------------------------------------------------------------------

function hetznerSection(initial, enabled) {
  const state = h('span', { class: 'hetzner-token-state' });
  const remove = h('button', {
    type: 'button', class: 'btn tiny', dataset: { action: 'remove-hetzner-token' },
    on: {
      click: async () => {
        if (!(await confirmDialog('Remove Hetzner token', 'Remove the Hetzner Cloud token? Tasks of Hetzner projects cannot start until a new one is saved.', 'Remove'))) { remove.focus(); return; }
        error.hidden = true;
        try { show(await api.deleteHetznerToken().then(() => ({ set: false }))); } catch (err) { fail(err); }
      },
    },
  }, 'Remove');
  function show(status) {
    state.dataset.set = String(status.set);
    replace(state, status.set ? ['Set (', h('code', { text: status.hint || '…' }), ') ', timeAgo(status.setAt)] : 'Not set');
    remove.hidden = !status.set;
    input.placeholder = status.set ? 'Paste a new token to replace the current one' : 'Paste a Hetzner Cloud API token (read & write)';
  }

  const input = h('input', {
    class: 'input', name: 'hetznerToken', type: 'password', autocomplete: 'off', spellcheck: false,
    required: true, 'aria-label': 'Hetzner Cloud API token',
  });
  const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
  const fail = (err) => { error.textContent = err.message; error.hidden = false; };
  const save = h('button', { class: 'btn primary', type: 'submit', text: 'Save token', dataset: { action: 'save-hetzner-token' } });
  show(initial);

  const form = h('form', {
    class: 'hetzner-form',
    on: {
      submit: async (e) => {
        e.preventDefault();
        error.hidden = true;
        save.disabled = true;
        save.textContent = 'Checking with Hetzner…';
        try {
          show(await api.setHetznerToken(input.value.trim()));
          input.value = '';
        } catch (err) {
          // Write-only even when refused: the field is emptied for a fresh paste.
          input.value = '';
          fail(err);
          input.focus();
        } finally {
          save.disabled = false;
          save.textContent = 'Save token';
        }
      },
    },
  },
  h('div', { class: 'field' },
    h('span', {}, 'Token ', h('small', { class: 'git-token-status' }, state, ' ', remove)),
    input,
    h('small', { class: 'field-hint', text: 'Used only for projects on the Hetzner provider: their nodes are servers created in your Hetzner Cloud project with this token. It is checked with the Hetzner API when saved, stored encrypted, and never shown again.' }),
    enabled ? null : h('small', { class: 'field-hint hetzner-disabled', text: 'This server does not offer Hetzner nodes at the moment (KILN_PROVIDER); a token saved now is used once it does.' })),
  error,
  h('div', { class: 'form-actions' }, save));

  return h('section', { class: 'card-form account-section', id: 'hetzner', 'aria-labelledby': 'hetzner-title' },
    h('h2', { id: 'hetzner-title', text: 'Hetzner Cloud' }),
    form);
}
