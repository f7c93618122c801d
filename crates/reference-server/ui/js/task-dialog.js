// Editing a draft (or ready) task in a modal dialog: title, description, priority, VM size
// and agent hint; save, mark ready, or save and run at once.

import { api } from './api.js';
import { h } from './dom.js';

export function editTask(state, task) {
  const title = h('input', { class: 'input', name: 'title', value: task.title, required: true });
  const description = h('textarea', { class: 'input', name: 'description', rows: 8, value: task.description, required: true });
  const priority = h('input', { class: 'input narrow', type: 'number', name: 'priority', step: 1, value: String(task.priority) });
  const vmSize = h('select', { class: 'input', name: 'vmSize' },
    h('option', { value: '', text: `Project default (${state.project.defaultVmSize})` }),
    ['small', 'medium', 'large'].map((s) => h('option', { value: s, text: s, selected: task.vmSizeOverride === s })));
  const agentHint = h('input', { class: 'input', name: 'agentHint', value: task.agentHint || '' });
  const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
  const dialog = h('dialog', { class: 'dialog', 'aria-label': 'Edit task' });

  async function save(then) {
    const body = {
      title: title.value.trim(),
      description: description.value,
      priority: Number.parseInt(priority.value, 10) || 0,
      vmSize: vmSize.value || null,
      agentHint: agentHint.value.trim() || null,
    };
    if (then === 'ready' && task.status === 'draft') body.status = 'ready';
    for (const b of dialog.querySelectorAll('button')) b.disabled = true;
    try {
      let updated = await api.updateTask(task.id, body);
      if (then === 'run') updated = await api.runTask(task.id);
      state.upsertTask(updated);
      dialog.close();
    } catch (err) {
      error.textContent = err.message;
      error.hidden = false;
    } finally {
      for (const b of dialog.querySelectorAll('button')) b.disabled = false;
    }
  }

  const button = (label, then, cls = 'btn') => h('button', {
    type: then === 'save' ? 'submit' : 'button', class: cls, text: label, dataset: { action: label.toLowerCase().replace(/\W+/g, '-') },
    on: { click: (e) => { if (then !== 'save') { e.preventDefault(); if (then === 'close') dialog.close(); else save(then); } } },
  });
  dialog.append(h('form', { method: 'dialog', class: 'dialog-form', on: { submit: (e) => { e.preventDefault(); save('save'); } } },
    h('h2', { text: task.status === 'draft' ? 'Edit draft' : 'Edit task' }),
    h('label', { class: 'field' }, h('span', { text: 'Title' }), title),
    h('label', { class: 'field' }, h('span', { text: 'Description (the agent\u2019s first prompt)' }), description),
    h('div', { class: 'advanced-grid' },
      h('label', {}, h('span', { text: 'Priority' }), priority),
      h('label', {}, h('span', { text: 'VM size' }), vmSize),
      h('label', {}, h('span', { text: 'Agent hint' }), agentHint)),
    error,
    h('div', { class: 'dialog-actions' },
      button('Cancel', 'close', 'btn ghost'),
      task.status === 'draft' ? button('Mark ready', 'ready') : null,
      button('Save', 'save'),
      button('Save & Run', 'run', 'btn primary'))));
  dialog.addEventListener('close', () => dialog.remove());
  description.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); save('run'); } });
  document.body.append(dialog);
  dialog.showModal();
  title.focus();
}
