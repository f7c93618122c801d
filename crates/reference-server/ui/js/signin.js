// Who the user is and how they authenticate.
//
// Sign-in (#/signin): the one-time login link printed by `kiln serve` signs the browser in
// by itself; here the user may also paste that link, its token, or an API token.

import { signInWithSecret } from './api.js';
import { h } from './dom.js';

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
  setTimeout(() => secret.focus());
  return h('main', { class: 'signin' }, form);
}
