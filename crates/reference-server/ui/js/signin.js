// Who the user is and how they authenticate.
//
// Sign-in (#/signin): the one-time login link printed by `kiln serve` signs the browser in
// by itself; here the user may also paste that link, its token, or an API token.

import { signInWithSecret } from './api.js';
import { h } from './dom.js';

// A login link the server refused, opened in this browser, lands on /?login=invalid (see
// GET /login): said once on the sign-in page, and the query is dropped at once so a reload
// or a later sign-out does not say it again.
let refusedLink = new URLSearchParams(location.search).get('login') === 'invalid';
if (refusedLink) history.replaceState(null, '', location.pathname + location.hash);

export function signInPage(onSignedIn) {
  const secret = h('input', {
    class: 'input', type: 'password', name: 'token', autocomplete: 'off', required: true,
    placeholder: 'kiln_…  or  http://…/login?token=…', 'aria-label': 'Login link or API token',
  });
  const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
  const submit = h('button', { class: 'btn primary', type: 'submit', text: 'Sign in' });
  const form = h('form', {
    class: 'signin-card',
    on: {
      submit: async (e) => {
        e.preventDefault();
        submit.disabled = true;
        try { onSignedIn(await signInWithSecret(secret.value)); } catch (err) {
          error.textContent = err.message;
          error.hidden = false;
          secret.select();
        } finally { submit.disabled = false; }
      },
    },
  },
  h('div', { class: 'brand big' }, h('img', { src: '/assets/favicon.svg', alt: '', width: 40, height: 40 }), h('span', { text: 'Kiln' })),
  h('p', { class: 'lead', text: 'Coding agents on demand, on machines you own.' }),
  h('label', { class: 'field' }, h('span', { text: 'Login link or API token' }), secret),
  error,
  submit,
  h('p', { class: 'muted small' },
    'On first start, ', h('code', { text: 'kiln serve' }), ' prints a one-time login link: open it and you are in. ',
    'Scripts and other browsers can use an API token instead.'));
  if (refusedLink) {
    refusedLink = false;
    error.textContent = 'That login link is invalid, was already used or has expired. Print a new one with “kiln user login-link”, or paste an API token.';
    error.hidden = false;
  }
  setTimeout(() => secret.focus());
  return h('main', { class: 'signin' }, form);
}
