// A project's page: the chat view (default), the kanban board and the nodes panel, one
// click or key away from each other. Each view keeps its DOM, its layout and its scroll
// positions while hidden (see `.pane[hidden]` in app.css), so switching is a repaint.

import { api } from './api.js';
import { h, icon, navigate } from './dom.js';
import { BoardView } from './board.js';
import { ChatView } from './chat.js';
import { newChatDialog } from './chat-dialog.js';
import { createComposer } from './composer.js';
import { LiveConnection } from './live.js';
import { NodesView } from './nodes.js';
import { ProjectState } from './state.js';
import { editTask } from './task-dialog.js';

export const VIEWS = ['chat', 'board', 'nodes'];

/** The scroll offsets of every scrolled element in `root`. */
function scrollsOf(root) {
  const out = [];
  for (const el of [root, ...root.querySelectorAll('.messages, .session-list, .cards, .workspace-panel')]) {
    if (el.scrollTop || el.scrollLeft) out.push([el, el.scrollLeft, el.scrollTop]);
  }
  return out;
}

function restoreScrolls(saved) {
  for (const [el, left, top] of saved) {
    if (el.scrollTop !== top) el.scrollTop = top;
    if (el.scrollLeft !== left) el.scrollLeft = left;
  }
}

function newest(sessions) {
  return [...sessions].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt))[0];
}

/** Whether the server can open a chat without a task (`POST /api/projects/{id}/sessions`). */
async function serverSupportsNewChat() {
  try {
    const doc = await (await fetch('/api/openapi.json', { credentials: 'same-origin' })).json();
    return Boolean(doc?.paths?.['/api/projects/{projectId}/sessions']?.post);
  } catch { return false; }
}

export class ProjectPage {
  /**
   * Loads a project's page: the project, its tasks, sessions and nodes, and the messages of
   * the session to show first, all at once (the messages as soon as the sessions are known).
   */
  static async open(projectId, sessionId) {
    const sessions = api.sessions(projectId);
    const first = sessions.then((list) => {
      const target = sessionId || newest(list)?.id;
      return target ? api.messages(target).then((page) => ({ target, page })) : null;
    }).catch(() => null);
    const [project, tasks, sessionList, nodes, latest] = await Promise.all([
      api.project(projectId), api.tasks(projectId), sessions, api.nodes(), first,
    ]);
    const page = new ProjectPage(project);
    page.state.applyLists(tasks, sessionList, nodes);
    if (latest) page.state.applyLatestPage(latest.target, latest.page);
    serverSupportsNewChat().then((yes) => page.chat.enableNewChat(yes ? () => page.newChat() : null));
    return page;
  }

  constructor(project) {
    this.state = new ProjectState(project);
    this.view = null;
    /** view → [[scroller, scrollLeft, scrollTop]] when it was last hidden. */
    this.scrolls = new Map();
    const state = this.state;
    const goSession = (id) => { navigate(`#/p/${project.id}/s/${id}`); };
    const onEditTask = (task) => editTask(state, task);

    this.composer = createComposer({ state, onCreated: (task) => { if (task.sessionId) goSession(task.sessionId); } });
    this.chat = new ChatView({
      state, composer: this.composer, onEditTask,
      onSelect: (id) => { this.lastSession = id; },
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
  }

  tab(name, label, key, iconEl) {
    return h('a', {
      class: 'tab', role: 'tab', href: `#/p/${this.state.project.id}/${name === 'chat' ? '' : name}`.replace(/\/$/, ''),
      dataset: { view: name }, 'aria-keyshortcuts': key, title: `${label} (${key})`,
    }, iconEl, h('span', { text: label }), h('kbd', { text: key }));
  }

  /** Shows `view`; in the chat view, selects `sessionId` (or keeps the current one). */
  async show(view, sessionId) {
    if (this.view && this.view !== view) this.scrolls.set(this.view, scrollsOf(this.panes[this.view]));
    const saved = this.view !== view ? this.scrolls.get(view) : undefined;
    this.view = view;
    for (const [name, el] of Object.entries(this.panes)) el.hidden = name !== view;
    if (view === 'board') this.board.shown();
    if (view === 'nodes') this.nodes.shown();
    for (const t of this.tabs.children) {
      const on = t.dataset.view === view;
      t.setAttribute('aria-selected', String(on));
      t.classList.toggle('active', on);
    }
    if (view === 'chat') {
      const target = sessionId || this.chat.selectedId || this.lastSession || null;
      if (target !== this.chat.selectedId || !this.chat.selectedId) await this.chat.select(target);
    }
    // Browsers may drop the offsets of scrollers inside a hidden view: put back any that moved,
    // before the first frame of the view is painted.
    if (saved) requestAnimationFrame(() => restoreScrolls(saved));
  }

  async newChat() {
    const session = await newChatDialog(this.state);
    if (session?.id) { this.state.upsertSession(session); navigate(`#/p/${this.state.project.id}/s/${session.id}`); }
  }

  /** Keys of this page (not typed into a field). */
  key(e) {
    const base = `#/p/${this.state.project.id}`;
    switch (e.key) {
      case 'c': navigate(base); return true;
      case 'b': navigate(`${base}/board`); return true;
      case 'n': navigate(`${base}/nodes`); return true;
      case 'j': if (this.view === 'chat') { this.chat.step(1); return true; } return false;
      case 'k': if (this.view === 'chat') { this.chat.step(-1); return true; } return false;
      case '/': if (this.view === 'chat') { this.composer.focus(); return true; } return false;
      default: return false;
    }
  }

  close() { this.live.close(); }
}
