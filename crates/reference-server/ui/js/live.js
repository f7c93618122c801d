// The project's WebSocket: applies every frame to the state, reconnects with exponential
// backoff (with jitter), and after a reconnect catches up through the REST API by cursor,
// merging what it missed into what the page already has.

const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 15000;

export class LiveConnection {
  /** `onStatus(status)`: 'connecting' | 'live' | 'offline'. */
  constructor(state, onStatus) {
    this.state = state;
    this.onStatus = onStatus;
    this.delay = MIN_DELAY_MS;
    this.closed = false;
    this.connect();
  }

  connect() {
    if (this.closed) return;
    this.onStatus('connecting');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${proto}//${location.host}/api/projects/${encodeURIComponent(this.state.project.id)}/ws`);
    this.ws = ws;
    ws.addEventListener('open', () => {
      this.delay = MIN_DELAY_MS;
      this.onStatus('live');
      // Whatever happened while disconnected, or between the first load and now.
      this.catchUp();
    });
    ws.addEventListener('message', (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      this.apply(frame);
    });
    ws.addEventListener('close', () => {
      if (this.ws !== ws || this.closed) return;
      this.onStatus('offline');
      const wait = Math.min(MAX_DELAY_MS, this.delay) * (0.75 + Math.random() * 0.5);
      this.delay = Math.min(MAX_DELAY_MS, this.delay * 2);
      this.timer = setTimeout(() => this.connect(), wait);
    });
  }

  apply({ type, data }) {
    const s = this.state;
    switch (type) {
      case 'message.new': s.ensureSession(data.sessionId); s.addMessages(data.sessionId, [data]); break;
      case 'message.delta': s.ensureSession(data.sessionId); s.applyDelta(data); break;
      case 'session.updated': s.upsertSession(data); break;
      case 'task.updated': if (data.sessionId) s.ensureSession(data.sessionId); s.upsertTask(data); break;
      case 'task.deleted': s.removeTask(data.id); break;
      case 'node.updated': s.upsertNode(data); break;
      case 'workspace.updated': s.upsertWorkspace(data); break;
      default: break;
    }
  }

  async catchUp() {
    try {
      await this.state.loadAll();
      await Promise.all([...this.state.messages.keys()].map((id) => this.state.catchUp(id)));
    } catch (err) {
      console.warn('catch-up failed; the next reconnect retries', err);
    }
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.ws?.close();
  }
}
