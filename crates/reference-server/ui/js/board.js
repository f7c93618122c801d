// The kanban board: one column per task status (queued and delegated only while they hold
// tasks), cards sorted by priority, moving live as tasks change. Clicking a card opens its
// session in the chat view; drafts can be edited and run from their card.

import { api } from './api.js';
import { h, icon, statusBadge, syncChildren } from './dom.js';
import { inline } from './markdown.js';
import { timeAgo } from './time.js';

const COLUMNS = [
  ['draft', 'Draft'], ['ready', 'Ready'], ['queued', 'Queued'], ['delegated', 'Delegated'],
  ['in_progress', 'In progress'], ['completed', 'Completed'], ['failed', 'Failed'], ['cancelled', 'Cancelled'],
];
const OPTIONAL = new Set(['queued', 'delegated']);

export class BoardView {
  constructor({ state, onOpenSession, onEditTask }) {
    this.state = state;
    this.onOpenSession = onOpenSession;
    this.onEditTask = onEditTask;
    this.columns = new Map();
    this.el = h('div', { class: 'board', role: 'region', 'aria-label': 'Task board' });
    for (const [status, label] of COLUMNS) {
      const cards = h('div', { class: 'cards' });
      const count = h('span', { class: 'count' });
      const col = h('section', { class: `column col-${status}`, dataset: { column: status }, 'aria-label': label },
        h('header', { class: 'column-head' }, h('span', { class: `dot status-${status}` }), h('h2', { text: label }), count),
        cards);
      this.columns.set(status, { col, cards, count });
      this.el.append(col);
    }
    state.on('tasks', () => this.render());
    state.on('workspaces', () => this.render());
  }

  /** Re-renders now if shown, else when next shown (a hidden board costs nothing). */
  render() {
    if (this.el.hidden) { this.dirty = true; return; }
    this.dirty = false;
    this.renderNow();
  }

  /** Called when the board is shown. */
  shown() { if (this.dirty !== false) this.render(); }

  renderNow() {
    const byStatus = new Map(COLUMNS.map(([s]) => [s, []]));
    for (const t of this.state.tasks.values()) byStatus.get(t.status)?.push(t);
    for (const [status, tasks] of byStatus) {
      tasks.sort((a, b) => b.priority - a.priority || Date.parse(b.createdAt) - Date.parse(a.createdAt));
      const { col, cards, count } = this.columns.get(status);
      col.hidden = OPTIONAL.has(status) && tasks.length === 0;
      count.textContent = String(tasks.length);
      syncChildren(cards, tasks, {
        key: (t) => t.id,
        version: (t) => {
          const ws = this.state.workspaces.get(t.workspaceId);
          return `${t.updatedAt}|${t.status}|${ws?.status}`;
        },
        render: (t) => this.card(t),
      });
    }
    this.state.loadWorkspaces().then(() => {
      for (const t of this.state.tasks.values()) if (t.workspaceId) this.state.loadWorkspace(t.workspaceId);
    });
  }

  card(task) {
    const ws = task.workspaceId ? this.state.workspaces.get(task.workspaceId) : undefined;
    const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
    const open = () => this.onOpenSession(task.sessionId);
    const stop = (fn) => async (e) => {
      e.stopPropagation();
      const button = e.currentTarget;
      button.disabled = true;
      try { await fn(); } catch (err) { error.textContent = err.message; error.hidden = false; }
      finally { button.disabled = false; }
    };
    const editable = task.status === 'draft' || task.status === 'ready';
    const card = h('article', {
      class: `card status-${task.status}`, tabindex: '0',
      dataset: { taskId: task.id, status: task.status },
      'aria-label': `${task.title} (${task.status.replace('_', ' ')})`,
      on: {
        click: (e) => { if (!e.target.closest('button, a')) open(); },
        keydown: (e) => { if (e.key === 'Enter' && e.target === e.currentTarget) open(); },
      },
    },
    h('div', { class: 'card-title' }, inline(task.title)),
    h('div', { class: 'card-meta' },
      statusBadge(task.status),
      task.priority ? h('span', { class: 'chip', title: 'Priority', text: `P${task.priority}` }) : null,
      ws ? h('span', { class: `ws-dot ws-${ws.status}`, title: `workspace ${ws.status}`, dataset: { workspaceStatus: ws.status } }, icon('box'), ws.status) : null,
      timeAgo(task.statusChangedAt || task.updatedAt)),
    task.statusDetail ? h('div', { class: 'card-detail', role: 'status', dataset: { statusDetail: '' }, text: task.statusDetail }) : null,
    task.errorMessage ? h('div', { class: 'card-error', text: task.errorMessage }) : null,
    h('div', { class: 'card-actions' },
      task.sessionId ? h('a', {
        class: 'card-link', href: `#/p/${this.state.project.id}/s/${task.sessionId}`, dataset: { action: 'open-session' },
        title: 'Open its chat session', 'aria-label': 'Open its chat session',
      }, icon('chat'), editable ? null : 'Chat') : null,
      editable ? h('button', { type: 'button', class: 'btn tiny', dataset: { action: 'edit' }, on: { click: (e) => { e.stopPropagation(); this.onEditTask(task); } } }, icon('edit'), 'Edit') : null,
      editable ? h('button', { type: 'button', class: 'btn tiny primary', dataset: { action: 'run' }, on: { click: stop(async () => this.state.upsertTask(await api.runTask(task.id))) } }, icon('play'), 'Run') : null),
    error);
    return card;
  }
}
