// The chat view: the sidebar of sessions (newest first), the selected session's header and
// messages (live, following the bottom unless the reader scrolled up), the submit bar, and
// the workspace panel ("Open workspace": a live tail and a follow-up prompt box).

import { api } from './api.js';
import {
  confirmDialog, h, icon, navigate, replace, shortId, statusBadge, syncChildren,
} from './dom.js';
import { inline } from './markdown.js';
import { oneLine, renderItem, renderItems } from './messages.js';
import { timeAgo } from './time.js';

const NEAR_BOTTOM_PX = 48;

export class ChatView {
  constructor({ state, composer, onSelect, onEditTask }) {
    this.state = state;
    this.onSelect = onSelect;
    this.onEditTask = onEditTask;
    this.selectedId = null;
    this.workspaceOpen = false;

    this.list = h('nav', { class: 'session-list', 'aria-label': 'Chat sessions' });
    this.newChat = h('button', { class: 'btn ghost small', type: 'button', hidden: true, dataset: { action: 'new-chat' } }, icon('plus'), 'New chat');
    this.sidebar = h('aside', { class: 'sidebar' },
      h('div', { class: 'sidebar-head' }, h('span', { text: 'Sessions' }), h('span', { class: 'count' }), this.newChat),
      this.list);

    this.header = h('header', { class: 'session-header' });
    this.messageList = h('div', { class: 'message-list', role: 'log', 'aria-live': 'polite', 'aria-relevant': 'additions' });
    this.older = h('button', { class: 'btn ghost small load-older', type: 'button', hidden: true, text: 'Load earlier messages', on: { click: () => this.loadOlder() } });
    this.scroller = h('div', { class: 'messages', tabindex: '0', 'aria-label': 'Messages' }, this.older, this.messageList);
    this.pill = h('button', { class: 'new-pill', type: 'button', hidden: true, on: { click: () => this.scrollToBottom(true) } }, icon('arrowDown'), 'New messages');
    this.emptyTitle = h('h2');
    this.emptyText = h('p');
    this.empty = h('div', { class: 'empty', hidden: true }, this.emptyTitle, this.emptyText);
    this.drawer = h('aside', { class: 'workspace-panel', hidden: true, 'aria-label': 'Workspace' });
    this.composer = composer;
    this.reply = this.replyForm();
    this.closedNote = h('p', { class: 'chat-closed chat-note muted', hidden: true, text: 'This chat is closed: its workspace was removed. Start a new chat to go on.' });
    // After "New task instead", the way back to the chat's reply box.
    this.taskNote = h('p', { class: 'chat-writing-task chat-note muted', hidden: true },
      'Writing a new task instead of a message to this chat. ',
      h('button', {
        type: 'button', class: 'btn ghost small', dataset: { action: 'back-to-chat' },
        on: { click: () => { this.writingTask = false; this.renderBars(this.state.sessions.get(this.selectedId)); this.reply.querySelector('textarea').focus(); } },
      }, 'Back to the chat'));
    this.main = h('section', { class: 'chat-main' },
      this.header, this.empty,
      h('div', { class: 'messages-wrap' }, this.scroller, this.pill),
      this.closedNote, this.taskNote, composer.el, this.reply);
    this.el = h('div', { class: 'chat-view' }, this.sidebar, this.main, this.drawer);

    this.scroller.addEventListener('scroll', () => {
      if (this.atBottom()) this.pill.hidden = true;
      if (this.scroller.scrollTop < 60) this.loadOlder();
    });

    state.on('sessions', () => { this.renderSidebar(); this.renderHeader(); });
    state.on('activity', () => this.renderSidebar());
    state.on('tasks', () => { this.renderSidebar(); this.renderHeader(); });
    state.on('workspaces', () => { this.renderHeader(); this.renderDrawer(); });
    state.on('nodes', () => this.renderDrawer());
    state.on('messages-reset', (sessionId) => {
      if (sessionId !== this.selectedId) return;
      this.messageList.replaceChildren();
      this.messageList._keyed = null;
      state.loadLatest(sessionId);
    });
    state.on('messages', (sessionId) => {
      if (sessionId === this.selectedId) { this.renderMessages(); this.renderDrawer(); }
    });
  }

  /** Shows "New chat" (a chat without a task) when the server supports it. */
  enableNewChat(start) {
    this.newChat.hidden = !start;
    this.newChat.onclick = start;
  }

  /**
   * Selects a session (or the newest one when `id` is null). A linked session that does not
   * exist (or is not the user's) is said so, rather than quietly showing another one under
   * its address; one of another project opens in that project.
   */
  async select(id) {
    let missing = null;
    if (id && !this.state.sessions.has(id)) {
      // Just created (its session.updated frame may still be on its way), or linked to.
      let session = null;
      try { session = await api.session(id); } catch { /* not found, or not the user's */ }
      if (session && session.projectId !== this.state.project.id) {
        navigate(`#/p/${session.projectId}/s/${id}`, { replace: true });
        return;
      }
      if (session) this.state.upsertSession(session); else missing = id;
    }
    const sessions = this.state.sortedSessions();
    if (missing) id = null;
    else if (!id) id = sessions[0]?.id || null;
    this.missing = missing;
    const changed = id !== this.selectedId;
    this.selectedId = id;
    if (changed) {
      this.workspaceOpen = false;
      this.writingTask = false;
      this.messageList.replaceChildren();
      this.messageList._keyed = null;
      this.pill.hidden = true;
    }
    this.renderSidebar();
    this.renderHeader();
    this.renderDrawer();
    this.renderEmpty();
    this.scroller.hidden = !id;
    if (!id) return;
    this.onSelect(id);
    const session = this.state.sessions.get(id);
    const task = this.state.taskOfSession(session);
    this.state.loadWorkspace(task?.workspaceId || session?.workspaceId);
    await this.state.loadLatest(id);
    if (changed && this.selectedId === id) {
      this.renderMessages();
      this.scrollToBottom(false);
    }
  }

  /** The note in place of a conversation: none selected yet, or the linked one not found. */
  renderEmpty() {
    this.empty.hidden = Boolean(this.selectedId);
    this.empty.dataset.missing = this.missing ? 'true' : 'false';
    this.emptyTitle.textContent = this.missing ? 'Session not found' : 'Start with a task';
    this.emptyText.textContent = this.missing
      ? 'This address names a session that does not exist or is not yours. Pick one from the list, or start a task below.'
      : 'Describe what you want done below. Run Now starts an agent on a fresh workspace; Save to Backlog keeps it as a draft for the board.';
  }

  renderSidebar() {
    const sessions = this.state.sortedSessions();
    this.sidebar.querySelector('.count').textContent = String(sessions.length);
    syncChildren(this.list, sessions, {
      key: (s) => s.id,
      version: (s) => {
        const t = this.state.taskOfSession(s);
        return `${this.state.lastActivity(s)}|${s.status}|${t?.status}|${t?.title}|${s.id === this.selectedId}`;
      },
      render: (s) => this.sessionItem(s),
    });
  }

  sessionItem(s) {
    const task = this.state.taskOfSession(s);
    const topic = s.topic || task?.title || 'Untitled chat';
    const selected = s.id === this.selectedId;
    return h('a', {
      class: `session-item${selected ? ' selected' : ''}`,
      href: `#/p/${this.state.project.id}/s/${s.id}`,
      dataset: { sessionId: s.id },
      'aria-current': selected ? 'page' : null,
    },
    h('div', { class: 'session-topic' }, inline(topic)),
    task && task.title !== topic ? h('div', { class: 'session-task', text: task.title }) : null,
    h('div', { class: 'session-meta' },
      task ? statusBadge(task.status) : h('span', { class: `badge session-${s.status}`, text: s.status }),
      timeAgo(new Date(this.state.lastActivity(s)).toISOString())));
  }

  /** The bottom bar: the task composer, or for a chat without a task its reply box. */
  renderBars(session) {
    const chat = Boolean(session && !session.taskId);
    const replying = chat && session.status !== 'closed' && !this.writingTask;
    this.composer.el.hidden = replying;
    this.reply.hidden = !replying;
    this.closedNote.hidden = !chat || session.status !== 'closed';
    this.taskNote.hidden = !chat || session.status === 'closed' || !this.writingTask;
  }

  /** The reply box of a chat without a task: each message goes to the chat's running agent. */
  replyForm() {
    const text = h('textarea', { class: 'reply-text', rows: 1, name: 'reply', placeholder: 'Message the agent…', 'aria-label': 'Message to the agent' });
    const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
    const send = h('button', { type: 'submit', class: 'btn primary', dataset: { action: 'send-chat' } }, icon('play'), h('span', { text: 'Send' }));
    const form = h('form', {
      class: 'chat-reply', hidden: true,
      on: {
        submit: async (e) => {
          e.preventDefault();
          const sessionId = this.selectedId;
          const message = text.value.trim();
          if (!message || !sessionId) return;
          send.disabled = true;
          try {
            await api.prompt(sessionId, message);
            if (text.value.trim() === message) text.value = '';
            error.hidden = true;
          } catch (err) { error.textContent = err.message; error.hidden = false; }
          finally { send.disabled = false; }
        },
      },
    }, error, h('div', { class: 'composer-row' }, text, send),
    h('div', { class: 'composer-foot' },
      h('button', {
        type: 'button', class: 'btn ghost small', dataset: { action: 'new-task' },
        on: { click: () => { this.writingTask = true; this.renderBars(this.state.sessions.get(this.selectedId)); this.composer.focus(); } },
      }, icon('plus'), 'New task instead'),
      h('span', { class: 'composer-hint' }, h('kbd', { text: 'Ctrl' }), '+', h('kbd', { text: 'Enter' }), ' sends')));
    text.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });
    return form;
  }

  renderHeader() {
    const session = this.state.sessions.get(this.selectedId);
    this.renderBars(session);
    if (!session) { replace(this.header, h('h1', { class: 'session-title', text: this.state.project.name })); return; }
    const task = this.state.taskOfSession(session);
    const wsId = task?.workspaceId || session.workspaceId;
    const ws = wsId ? this.state.workspaces.get(wsId) : undefined;
    if (wsId && !ws) this.state.loadWorkspace(wsId);
    const branch = task?.outputBranch || ws?.branch;
    const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
    const act = (label, fn, cls = 'btn small') => h('button', {
      type: 'button', class: cls, dataset: { action: label.toLowerCase().replace(/\s+/g, '-') },
      on: {
        click: async (e) => {
          const button = e.currentTarget;
          button.disabled = true;
          try { await fn(); error.hidden = true; } catch (err) { error.textContent = err.message; error.hidden = false; }
          finally { button.disabled = false; }
        },
      },
    }, label);
    const actions = [];
    if (task) {
      if (task.status === 'draft' || task.status === 'ready') {
        actions.push(act('Edit', async () => this.onEditTask(task)));
        actions.push(act('Run', async () => this.state.upsertTask(await api.runTask(task.id)), 'btn small primary'));
      }
      if (['queued', 'delegated', 'in_progress'].includes(task.status)) {
        actions.push(act('Cancel', async () => this.state.upsertTask(await api.cancelTask(task.id))));
      }
      if (task.status === 'failed' || task.status === 'cancelled') {
        actions.push(act('Re-run', async () => this.state.upsertTask(await api.rerunTask(task.id))));
        // The kept workspace holds its node until discarded (or re-run, or its retention ends).
        if (ws && ws.taskId === task.id && ['creating', 'running', 'stopped'].includes(ws.status)) {
          actions.push(act('Discard workspace', async () => {
            const question = 'Discard this task\'s workspace? Its files are removed from the node, which goes back to the pool. The task, its branch and its conversation stay.';
            if (!(await confirmDialog('Discard workspace', question, 'Discard'))) return;
            this.state.upsertWorkspace(await api.discardWorkspace(ws.id));
          }));
        }
      }
    }
    // A task's session whose task was deleted has no task here, and is still no chat to close.
    const taskGone = Boolean(session.taskId && !task);
    if (!session.taskId && session.status !== 'closed') {
      actions.push(act('Close chat', async () => this.state.upsertSession(await api.closeChat(session.id))));
    }
    const canOpenWorkspace = ws?.status === 'running' || (!session.taskId && session.status === 'active');
    if (this.workspaceOpen && !canOpenWorkspace) {
      // The agent is gone (the task ended, the chat was closed or stopped): a follow-up box
      // left open would only answer 409, so the panel closes with its button.
      this.workspaceOpen = false;
      this.renderDrawer();
    }
    if (canOpenWorkspace) {
      actions.push(h('button', {
        type: 'button', class: `btn small${this.workspaceOpen ? ' pressed' : ''}`, dataset: { action: 'open-workspace' },
        'aria-pressed': String(this.workspaceOpen),
        on: { click: () => this.toggleWorkspace() },
      }, icon('terminal'), 'Open workspace'));
    }
    replace(this.header,
      h('div', { class: 'session-heading' },
        h('h1', { class: 'session-title' }, inline(task?.title || session.topic || 'Chat')),
        h('div', { class: 'session-actions' }, actions)),
      h('div', { class: 'session-facts' },
        task ? statusBadge(task.status) : h('span', { class: `badge session-${session.status}`, text: session.status }),
        taskGone ? h('span', { class: 'fact task-gone', text: 'its task was deleted' }) : null,
        task?.attempt > 1 ? h('span', { class: 'fact', text: `attempt ${task.attempt}` }) : null,
        branch ? h('span', { class: 'fact' }, icon('branch'), h('code', { text: branch })) : null,
        task?.prUrl ? h('a', { class: 'fact link', href: task.prUrl, target: '_blank', rel: 'noopener noreferrer' }, icon('link'), 'Pull request') : null,
        ws ? h('span', { class: `fact ws ws-${ws.status}`, dataset: { workspaceStatus: ws.status } }, icon('box'),
          ws.status === 'destroyed' ? 'workspace destroyed' : `workspace ${ws.status}`) : null,
        task?.vmSizeOverride ? h('span', { class: 'fact', text: task.vmSizeOverride }) : null),
      task?.errorMessage ? h('p', { class: 'task-error', text: task.errorMessage }) : null,
      task?.summary ? h('p', { class: 'task-summary' }, inline(task.summary)) : null,
      error);
  }

  toggleWorkspace(open = !this.workspaceOpen) {
    this.workspaceOpen = open;
    this.renderHeader();
    this.renderDrawer();
    if (open) this.followupForm().querySelector('textarea').focus();
  }

  /** The follow-up form of the workspace panel, built once so a half-written prompt survives live updates. */
  followupForm() {
    if (this.followup) return this.followup;
    const text = h('textarea', { class: 'input', rows: 3, placeholder: 'Send a follow-up prompt to the agent…', 'aria-label': 'Follow-up prompt' });
    const error = h('div', { class: 'form-error', role: 'alert', hidden: true });
    const send = h('button', { type: 'submit', class: 'btn primary small', text: 'Send' });
    const form = h('form', {
      class: 'followup',
      on: {
        submit: async (e) => {
          e.preventDefault();
          const sessionId = this.selectedId;
          const prompt = text.value.trim();
          if (!prompt || !sessionId) return;
          send.disabled = true;
          try {
            await api.prompt(sessionId, prompt);
            if (text.value.trim() === prompt) text.value = '';
            error.hidden = true;
          } catch (err) { error.textContent = err.message; error.hidden = false; }
          finally { send.disabled = false; }
        },
      },
    }, text, error, h('div', { class: 'followup-actions' }, h('small', { class: 'muted', text: 'Ctrl+Enter to send' }), send));
    text.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });
    this.followup = form;
    return form;
  }

  renderDrawer() {
    const session = this.state.sessions.get(this.selectedId);
    const task = this.state.taskOfSession(session);
    const ws = this.state.workspaces.get(task?.workspaceId || session?.workspaceId);
    this.drawer.hidden = !this.workspaceOpen || !session;
    this.el.classList.toggle('with-drawer', !this.drawer.hidden);
    if (this.drawer.hidden) return;
    const node = ws ? this.state.nodes.get(ws.nodeId) : undefined;
    const tail = (this.state.messages.get(session.id)?.list || []).slice(-8);
    const deltas = this.state.deltasOf(session.id);
    const form = this.followupForm();
    const focused = form.contains(document.activeElement) ? document.activeElement : null;
    replace(this.drawer,
      h('div', { class: 'drawer-head' }, h('h2', {}, icon('terminal'), 'Workspace'),
        h('button', { class: 'icon-btn', type: 'button', 'aria-label': 'Close workspace panel', on: { click: () => this.toggleWorkspace(false) } }, icon('x'))),
      h('dl', { class: 'facts' },
        h('dt', { text: 'Status' }), h('dd', {}, ws ? h('span', { class: `badge ws-${ws.status}`, text: ws.status }) : '—'),
        h('dt', { text: 'Node' }), h('dd', { text: node ? `${shortId(node.id)} · ${node.size} · ${node.state}` : ws ? shortId(ws.nodeId) : '—' }),
        h('dt', { text: 'Branch' }), h('dd', {}, ws?.branch ? h('code', { text: ws.branch }) : '—')),
      h('h3', { text: 'Live' }),
      h('ol', { class: 'tail' },
        tail.map((m) => h('li', { class: `tail-${m.role}`, text: oneLine(m) })),
        deltas.map((d) => h('li', { class: 'tail-streaming', text: `Agent: ${d.textSoFar.slice(-120)}` }))),
      form);
    focused?.focus();
  }

  renderMessages() {
    const entry = this.state.messages.get(this.selectedId);
    if (!entry) return;
    const follow = this.atBottom();
    const items = renderItems(entry.list, this.state.deltasOf(this.selectedId));
    const added = syncChildren(this.messageList, items, { key: (i) => i.key, version: (i) => i.version, render: renderItem });
    this.older.hidden = !entry.hasMoreBefore;
    if (follow) this.scrollToBottom(false);
    else if (added) this.pill.hidden = false;
  }

  async loadOlder() {
    const entry = this.state.messages.get(this.selectedId);
    if (!entry?.hasMoreBefore || this.loadingOlder) return;
    this.loadingOlder = true;
    const before = this.scroller.scrollHeight - this.scroller.scrollTop;
    try {
      await this.state.loadOlder(this.selectedId);
      this.scroller.scrollTop = this.scroller.scrollHeight - before;
    } finally { this.loadingOlder = false; }
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  scrollToBottom(smooth) {
    this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: smooth ? 'smooth' : 'instant' });
    this.pill.hidden = true;
  }

  /** Moves the selection up or down the sidebar. */
  step(delta) {
    const sessions = this.state.sortedSessions();
    const i = sessions.findIndex((s) => s.id === this.selectedId);
    const next = sessions[Math.max(0, Math.min(sessions.length - 1, i + delta))];
    if (next) navigate(`#/p/${this.state.project.id}/s/${next.id}`);
  }
}
