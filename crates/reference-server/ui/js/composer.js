// The submit bar: a text box and a split button — Run Now (primary, Ctrl/Cmd+Enter) and
// Save to Backlog in its menu — with an "Advanced" section (priority, VM size override,
// agent hint). Errors are shown right above the bar.

import { api } from './api.js';
import { h, icon } from './dom.js';

export function createComposer({ state, onCreated }) {
  const text = h('textarea', {
    class: 'composer-text', rows: 1, name: 'description',
    placeholder: 'Describe a task for an agent…',
    'aria-label': 'Task description',
  });
  const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
  const priority = h('input', { type: 'number', name: 'priority', value: '0', step: 1, class: 'input narrow' });
  const vmSize = h('select', { name: 'vmSize', class: 'input' },
    h('option', { value: '', text: `Project default (${state.project.defaultVmSize})` }),
    ['small', 'medium', 'large'].map((s) => h('option', { value: s, text: s })));
  const agentHint = h('input', { type: 'text', name: 'agentHint', class: 'input', placeholder: 'e.g. claude, codex' });
  const advanced = h('details', { class: 'advanced' },
    h('summary', { text: 'Advanced' }),
    h('div', { class: 'advanced-grid' },
      h('label', {}, h('span', { text: 'Priority' }), priority),
      h('label', {}, h('span', { text: 'VM size' }), vmSize),
      h('label', {}, h('span', { text: 'Agent hint' }), agentHint)));

  const runNow = h('button', { type: 'button', class: 'btn primary split-main', title: 'Run Now (Ctrl+Enter)', dataset: { action: 'run-now' } },
    icon('play'), h('span', { text: 'Run Now' }));
  const toggle = h('button', {
    type: 'button', class: 'btn primary split-toggle', 'aria-label': 'More submit options',
    'aria-haspopup': 'menu', 'aria-expanded': 'false',
  }, icon('chevron'));
  const saveItem = h('button', { type: 'button', role: 'menuitem', class: 'menu-item', dataset: { action: 'save-backlog' } },
    h('strong', { text: 'Save to Backlog' }), h('small', { text: 'Keep it as a draft to edit and run later' }));
  const menu = h('div', { class: 'menu', role: 'menu', hidden: true }, saveItem);
  const split = h('div', { class: 'split' }, runNow, toggle, menu);

  const root = h('form', { class: 'composer', on: { submit: (e) => { e.preventDefault(); submit(true); } } },
    error,
    h('div', { class: 'composer-row' }, text, split),
    h('div', { class: 'composer-foot' }, advanced,
      h('span', { class: 'composer-hint' }, h('kbd', { text: 'Ctrl' }), '+', h('kbd', { text: 'Enter' }), ' runs now · ', h('kbd', { text: '?' }), ' keys')));

  function setMenu(open) {
    menu.hidden = !open;
    toggle.setAttribute('aria-expanded', String(open));
    if (open) saveItem.focus();
  }
  toggle.addEventListener('click', () => setMenu(menu.hidden));
  saveItem.addEventListener('click', () => { setMenu(false); submit(false); });
  menu.addEventListener('keydown', (e) => { if (e.key === 'Escape') { setMenu(false); toggle.focus(); } });
  document.addEventListener('click', (e) => { if (!split.contains(e.target)) setMenu(false); });
  runNow.addEventListener('click', () => submit(true));

  const grow = () => { text.style.height = 'auto'; text.style.height = `${Math.min(text.scrollHeight, 240)}px`; };
  text.addEventListener('input', () => { grow(); error.hidden = true; });
  text.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(true); }
  });

  let busy = false;
  async function submit(run) {
    if (busy) return;
    const description = text.value.trim();
    if (!description) { showError('Write what the agent should do first.'); text.focus(); return; }
    const body = { description, runNow: run };
    const p = Number.parseInt(priority.value, 10);
    if (!Number.isNaN(p) && p !== 0) body.priority = p;
    if (vmSize.value) body.vmSize = vmSize.value;
    if (agentHint.value.trim()) body.agentHint = agentHint.value.trim();
    busy = true;
    root.classList.add('busy');
    runNow.disabled = toggle.disabled = true;
    try {
      const task = await api.createTask(state.project.id, body);
      state.upsertTask(task);
      text.value = '';
      grow();
      error.hidden = true;
      onCreated(task, run);
    } catch (err) {
      showError(err.message);
    } finally {
      busy = false;
      root.classList.remove('busy');
      runNow.disabled = toggle.disabled = false;
    }
  }

  function showError(message) {
    error.textContent = message;
    error.hidden = false;
  }

  return { el: root, focus: () => text.focus(), textarea: text };
}
