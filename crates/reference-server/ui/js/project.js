// A project's page: the chat view (default), the kanban board and the nodes panel, one
// click or key away from each other. Each view keeps its DOM (and so its state) while
// hidden, and its scroll positions are restored when it comes back.

import { api, request } from './api.js';
import { h, icon } from './dom.js';
import { BoardView } from './board.js';
import { ChatView } from './chat.js';
import { createComposer } from './composer.js';
import { LiveConnection } from './live.js';
import { NodesView } from './nodes.js';
import { ProjectState } from './state.js';
import { editTask } from './task-dialog.js';

export const VIEWS = ['chat', 'board', 'nodes'];

/** Whether the server can open a chat without a task (`POST /api/projects/{id}/sessions`). */
async function serverSupportsNewChat() {
  try {
    const doc = await (await fetch('/api/openapi.json', { credentials: 'same-origin' })).json();
    return Boolean(doc?.paths?.['/api/projects/{projectId}/sessions']?.post);
  } catch { return false; }
}

export class ProjectPage {
  static async open(projectId) {
    const [project, canStartChat] = await Promise.all([api.project(projectId), serverSupportsNewChat()]);
    const page = new ProjectPage(project, canStartChat);
    await page.state.loadAll();
    return page;
  }

  constructor(project, canStartChat) {
    this.state = new ProjectState(project);
    this.view = null;
    this.scroll = {};
    const state = this.state;
    const goSession = (id) => { location.hash = `#/p/${project.id}/s/${id}`; };
    const onEditTask = (task) => editTask(state, task);

    this.composer = createComposer({ state, onCreated: (task) => { if (task.sessionId) goSession(task.sessionId); } });
    this.chat = new ChatView({
      state, composer: this.composer, onEditTask, canStartChat,
      onSelect: (id) => { this.lastSession = id; },
      onNewChat: () => this.newChat(),
    });
    this.board = new BoardView({ state, onEditTask, onOpenSession: (id) => { if (id) goSession(id); } });
    this.nodes = new NodesView({ state });

    this.status = h('span', { class: 'live-status', role: 'status', title: 'Live updates' });
    this.tabs = h('nav', { class: 'tabs', role: 'tablist', 'aria-label': 'Views' },
      this.tab('chat', 'Chat', 'c', icon('chat')),
      this.tab('board', 'Board', 'b', icon('board')),
      this.tab('nodes', 'Nodes', 'n', icon('nodes')));
    this.bar = h('div', { class: 'project-bar' },
      h('div', { class: 'project-name' },
        h('a', { href: '#/', class: 'crumb', text: 'Projects' }), h('span', { class: 'sep', text: '/' }),
        h('strong', { text: project.name }),
        h('a', { href: `#/p/${project.id}/edit`, class: 'icon-btn', 'aria-label': 'Project settings', title: 'Project settings' }, icon('gear'))),
      this.tabs, this.status);
    this.panes = { chat: this.chat.el, board: this.board.el, nodes: this.nodes.el };
    for (const [name, el] of Object.entries(this.panes)) { el.classList.add('pane'); el.dataset.view = name; el.hidden = true; }
    this.el = h('div', { class: 'project-page' }, this.bar, h('div', { class: 'panes' }, Object.values(this.panes)));

    this.live = new LiveConnection(state, (s) => {
      this.status.dataset.state = s;
      this.status.textContent = s === 'live' ? 'Live' : s === 'connecting' ? 'Connecting…' : 'Reconnecting…';
    });
    this.board.render();
    this.nodes.render();
  }

  tab(name, label, key, iconEl) {
    return h('a', {
      class: 'tab', role: 'tab', href: `#/p/${this.state.project.id}/${name === 'chat' ? '' : name}`.replace(/\/$/, ''),
      dataset: { view: name }, 'aria-keyshortcuts': key, title: `${label} (${key})`,
    }, iconEl, h('span', { text: label }), h('kbd', { text: key }));
  }

  /** Shows `view`; in the chat view, selects `sessionId` (or keeps the current one). */
  async show(view, sessionId) {
    if (this.view && this.view !== view) this.scroll[this.view] = this.saveScroll(this.view);
    const switching = this.view !== view;
    this.view = view;
    for (const [name, el] of Object.entries(this.panes)) el.hidden = name !== view;
    for (const t of this.tabs.children) {
      const on = t.dataset.view === view;
      t.setAttribute('aria-selected', String(on));
      t.classList.toggle('active', on);
    }
    if (view === 'chat') {
      const target = sessionId || this.chat.selectedId || this.lastSession || null;
      if (target !== this.chat.selectedId || !this.chat.selectedId) await this.chat.select(target);
    }
    if (switching) this.restoreScroll(view);
  }

  saveScroll(view) {
    if (view === 'chat') return this.chat.saveScroll();
    if (view === 'board') return this.board.saveScroll();
    return { top: this.nodes.el.scrollTop };
  }

  restoreScroll(view) {
    const saved = this.scroll[view];
    if (view === 'chat') this.chat.restoreScroll(saved);
    else if (view === 'board') this.board.restoreScroll(saved);
    else if (saved) this.nodes.el.scrollTop = saved.top;
  }

  async newChat() {
    const session = await request('POST', `/api/projects/${encodeURIComponent(this.state.project.id)}/sessions`, {});
    if (session?.id) { this.state.upsertSession(session); location.hash = `#/p/${this.state.project.id}/s/${session.id}`; }
  }

  /** Keys of this page (not typed into a field). */
  key(e) {
    const base = `#/p/${this.state.project.id}`;
    switch (e.key) {
      case 'c': location.hash = base; return true;
      case 'b': location.hash = `${base}/board`; return true;
      case 'n': location.hash = `${base}/nodes`; return true;
      case 'j': if (this.view === 'chat') { this.chat.step(1); return true; } return false;
      case 'k': if (this.view === 'chat') { this.chat.step(-1); return true; } return false;
      case '/': if (this.view === 'chat') { this.composer.focus(); return true; } return false;
      default: return false;
    }
  }

  close() { this.live.close(); }
}
