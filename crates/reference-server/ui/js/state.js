// One project's data as the page knows it: tasks, sessions, the loaded messages of each
// session, streaming text (deltas), nodes and workspaces. Everything is merged by id (a
// stale copy never overwrites a newer one), and views subscribe to what changed.

import { api } from './api.js';

/** Newer of two versions of an object with `updatedAt`. */
function newer(old, next) {
  if (!old) return true;
  return !old.updatedAt || !next.updatedAt || Date.parse(next.updatedAt) >= Date.parse(old.updatedAt);
}

export class ProjectState {
  constructor(project) {
    this.project = project;
    this.tasks = new Map();
    this.sessions = new Map();
    /** sessionId → {list: stored messages by cursor, byId, hasMoreBefore, loaded} */
    this.messages = new Map();
    /** segmentId → {sessionId, segmentId, textSoFar, at} */
    this.deltas = new Map();
    this.nodes = new Map();
    this.workspaces = new Map();
    /** sessionId → the newest message time seen (a session's own updatedAt may lag). */
    this.activity = new Map();
    this.fetchingSessions = new Set();
    this.fetchingWorkspaces = new Set();
    this.listeners = new Map();
  }

  on(topic, fn) {
    if (!this.listeners.has(topic)) this.listeners.set(topic, new Set());
    this.listeners.get(topic).add(fn);
    return () => this.listeners.get(topic).delete(fn);
  }

  emit(topic, detail) {
    for (const fn of this.listeners.get(topic) || []) fn(detail);
  }

  // ---- merging -------------------------------------------------------------------------

  upsertTask(task) {
    const old = this.tasks.get(task.id);
    if (task.projectId !== this.project.id || !newer(old, task)) return;
    this.tasks.set(task.id, task);
    if (old && old.description !== task.description && task.sessionId) this.editPrompt(task.sessionId, task.description);
    this.emit('tasks', task);
  }

  /** A task deleted (its session, if any, stays: still readable, now without a task). */
  removeTask(id) {
    if (!this.tasks.delete(id)) return;
    this.emit('tasks', { id, deleted: true });
  }

  /** Fetches a session the page has not heard of yet (a new task's, or a message's). */
  async ensureSession(id) {
    if (this.sessions.has(id) || this.fetchingSessions.has(id)) return;
    this.fetchingSessions.add(id);
    try { this.upsertSession(await api.session(id)); } catch { /* not ours, or gone */ } finally {
      this.fetchingSessions.delete(id);
    }
  }

  upsertSession(session) {
    if (session.projectId !== this.project.id || !newer(this.sessions.get(session.id), session)) return;
    this.sessions.set(session.id, session);
    this.emit('sessions', session);
  }

  upsertNode(node) {
    if (!newer(this.nodes.get(node.id), node)) return;
    this.nodes.set(node.id, node);
    this.emit('nodes', node);
  }

  upsertWorkspace(ws) {
    if (!newer(this.workspaces.get(ws.id), ws)) return;
    this.workspaces.set(ws.id, ws);
    this.emit('workspaces', ws);
  }

  /** Adds stored messages of a session (any order, duplicates ignored). */
  addMessages(sessionId, messages, { olderPageHasMore } = {}) {
    const entry = this.messageEntry(sessionId);
    let changed = false;
    for (const m of messages) {
      if (!(Date.parse(m.createdAt) <= (this.activity.get(sessionId) || 0))) {
        this.activity.set(sessionId, Date.parse(m.createdAt));
        if (this.sessions.has(sessionId)) this.emit('activity', sessionId);
      }
      const old = entry.byId.get(m.id);
      if (old && old.content === m.content && old.cursor === m.cursor) continue;
      entry.byId.set(m.id, m);
      changed = true;
      if (this.deltas.delete(m.id)) changed = true;
    }
    if (olderPageHasMore !== undefined) entry.hasMoreBefore = olderPageHasMore;
    if (changed) {
      entry.list = [...entry.byId.values()].sort((a, b) => a.cursor - b.cursor);
      this.emit('messages', sessionId);
    }
  }

  /** A draft's edited description is its session's first message (the prompt). */
  editPrompt(sessionId, description) {
    const entry = this.messages.get(sessionId);
    if (!entry) return;
    const prompt = entry.list[0];
    if (!prompt || prompt.cursor !== 1) {
      // Not loaded yet (or a load is on its way with the old text): start over.
      this.messages.delete(sessionId);
      this.emit('messages-reset', sessionId);
      return;
    }
    if (prompt.role !== 'user' || prompt.content === description) return;
    const updated = { ...prompt, content: description };
    entry.byId.set(prompt.id, updated);
    entry.list = [updated, ...entry.list.slice(1)];
    this.emit('messages', sessionId);
  }

  messageEntry(sessionId) {
    let entry = this.messages.get(sessionId);
    if (!entry) {
      entry = { list: [], byId: new Map(), hasMoreBefore: false, loaded: false };
      this.messages.set(sessionId, entry);
    }
    return entry;
  }

  /** Streaming text of a segment not stored yet. */
  applyDelta(delta) {
    const entry = this.messages.get(delta.sessionId);
    if (entry?.byId.has(delta.segmentId)) return; // the stored message already replaced it
    this.deltas.set(delta.segmentId, { ...delta, at: Date.now() });
    this.emit('messages', delta.sessionId);
  }

  deltasOf(sessionId) {
    return [...this.deltas.values()].filter((d) => d.sessionId === sessionId).sort((a, b) => a.at - b.at);
  }

  // ---- loading -------------------------------------------------------------------------

  /** Everything of the project; sessions first, so tasks find theirs. */
  async loadAll() {
    const [tasks, sessions, nodes] = await Promise.all([
      api.tasks(this.project.id), api.sessions(this.project.id), api.nodes(),
    ]);
    this.applyLists(tasks, sessions, nodes);
  }

  applyLists(tasks, sessions, nodes) {
    sessions.forEach((s) => this.upsertSession(s));
    const present = new Set(tasks.map((t) => t.id));
    for (const id of [...this.tasks.keys()]) {
      if (!present.has(id)) this.removeTask(id);
    }
    tasks.forEach((t) => this.upsertTask(t));
    nodes.forEach((n) => this.upsertNode(n));
  }

  /** A first page of a session's messages fetched before the page was built. */
  applyLatestPage(sessionId, page) {
    const entry = this.messageEntry(sessionId);
    entry.loaded = true;
    this.addMessages(sessionId, page.messages, { olderPageHasMore: page.hasMore });
  }

  /** The latest page of a session, once (a reset entry is loaded again). */
  loadLatest(sessionId) {
    const entry = this.messageEntry(sessionId);
    if (entry.loaded) return Promise.resolve();
    entry.loading ||= api.messages(sessionId).then((page) => {
      if (this.messages.get(sessionId) !== entry) return; // reset meanwhile: this page is stale
      entry.loaded = true;
      this.addMessages(sessionId, page.messages, { olderPageHasMore: page.hasMore });
      this.emit('messages', sessionId);
    }).finally(() => { entry.loading = null; });
    return entry.loading;
  }

  /** The page before the oldest loaded message. */
  async loadOlder(sessionId) {
    const entry = this.messageEntry(sessionId);
    const first = entry.list[0];
    if (!first || !entry.hasMoreBefore) return;
    const page = await api.messages(sessionId, { before: first.cursor });
    this.addMessages(sessionId, page.messages, { olderPageHasMore: page.hasMore });
  }

  /** Every message after the newest loaded one (after a reconnect), page by page. */
  async catchUp(sessionId) {
    const entry = this.messageEntry(sessionId);
    if (!entry.loaded) return;
    for (;;) {
      const last = entry.list[entry.list.length - 1];
      const page = await api.messages(sessionId, { after: last ? last.cursor : 0 }, 500);
      this.addMessages(sessionId, page.messages);
      if (!page.hasMore || !page.messages.length) return;
    }
  }

  /** Every workspace of the user, once (the board's workspace indicators). */
  loadWorkspaces() {
    if (!this.workspacesLoading) {
      this.workspacesLoading = api.workspaces()
        .then((list) => list.forEach((w) => this.upsertWorkspace(w)))
        .catch(() => { this.workspacesLoading = null; });
    }
    return this.workspacesLoading;
  }

  async loadWorkspace(id) {
    if (!id || this.workspaces.has(id) || this.fetchingWorkspaces.has(id)) return;
    this.fetchingWorkspaces.add(id);
    try { this.upsertWorkspace(await api.workspace(id)); } catch { /* shown as unknown */ } finally {
      this.fetchingWorkspaces.delete(id);
    }
  }

  // ---- queries -------------------------------------------------------------------------

  /** Sessions newest first. */
  sortedSessions() {
    return [...this.sessions.values()].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt) || (a.id < b.id ? 1 : -1));
  }

  /** When a session last changed, as far as the page knows. */
  lastActivity(session) {
    return Math.max(Date.parse(session.updatedAt), this.activity.get(session.id) || 0);
  }

  taskOfSession(session) {
    return session?.taskId ? this.tasks.get(session.taskId) : undefined;
  }
}
