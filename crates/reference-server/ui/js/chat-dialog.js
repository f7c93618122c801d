// "New chat": a chat with an agent without a task. The dialog asks for the VM size (the
// project's default preselected) and an optional first message; the server opens a
// workspace on a pooled node and the chat's session appears in the sidebar at once.

import { api } from './api.js';
import { h } from './dom.js';

/** Opens the dialog; resolves with the new session, or null when cancelled. */
export function newChatDialog(state) {
  return new Promise((resolve) => {
    const vmSize = h('select', { class: 'input', name: 'vmSize' },
      ['small', 'medium', 'large'].map((s) => h('option', {
        value: s, text: s === state.project.defaultVmSize ? `${s} (project default)` : s, selected: s === state.project.defaultVmSize,
      })));
    const prompt = h('textarea', { class: 'input', name: 'prompt', rows: 5, placeholder: 'Ask the agent something (optional)…' });
    const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
    const dialog = h('dialog', { class: 'dialog', 'aria-label': 'New chat' });
    let result = null;

    async function start() {
      const body = { vmSize: vmSize.value };
      if (prompt.value.trim()) body.prompt = prompt.value;
      for (const b of dialog.querySelectorAll('button')) b.disabled = true;
      try {
        result = await api.openChat(state.project.id, body);
        dialog.close();
      } catch (err) {
        error.textContent = err.message;
        error.hidden = false;
      } finally {
        for (const b of dialog.querySelectorAll('button')) b.disabled = false;
      }
    }

    dialog.append(h('form', { method: 'dialog', class: 'dialog-form', on: { submit: (e) => { e.preventDefault(); start(); } } },
      h('h2', { text: 'New chat' }),
      h('p', { class: 'muted', text: 'An agent in a workspace on the project\u2019s default branch, without a task: nothing is committed or pushed. Closing the chat removes the workspace.' }),
      h('label', { class: 'field' }, h('span', { text: 'VM size' }), vmSize),
      h('label', { class: 'field' }, h('span', { text: 'First message' }), prompt),
      error,
      h('div', { class: 'dialog-actions' },
        h('button', { type: 'button', class: 'btn ghost', text: 'Cancel', dataset: { action: 'cancel' }, on: { click: () => dialog.close() } }),
        h('button', { type: 'submit', class: 'btn primary', text: 'Start chat', dataset: { action: 'start-chat' } }))));
    prompt.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); start(); } });
    dialog.addEventListener('close', () => { dialog.remove(); resolve(result); });
    document.body.append(dialog);
    dialog.showModal();
    prompt.focus();
  });
}
