// The nodes panel: every node of the user with its state, size, claim and the live
// countdown of its warm period.

import { h, shortId, syncChildren } from './dom.js';
import { countdownEl, timeAgo } from './time.js';

export class NodesView {
  constructor({ state }) {
    this.state = state;
    this.showGone = false;
    this.list = h('div', { class: 'node-list' });
    const toggle = h('label', { class: 'toggle' },
      h('input', { type: 'checkbox', on: { change: (e) => { this.showGone = e.target.checked; this.render(); } } }),
      'Show destroyed');
    this.summary = h('p', { class: 'muted' });
    this.el = h('section', { class: 'nodes-view', 'aria-label': 'Nodes' },
      h('header', { class: 'nodes-head' }, h('div', {}, h('h1', { text: 'Nodes' }), this.summary), toggle),
      this.list);
    state.on('nodes', () => this.render());
    // A claim's label follows its task's status and its chat's topic.
    state.on('tasks', () => this.render());
    state.on('sessions', () => this.render());
  }

  render() {
    if (this.el.hidden) { this.dirty = true; return; }
    this.dirty = false;
    this.renderNow();
  }

  shown() { if (this.dirty !== false) this.render(); }

  renderNow() {
    const nodes = [...this.state.nodes.values()]
      .filter((n) => this.showGone || n.state !== 'destroyed')
      .sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
    const counts = {};
    for (const n of this.state.nodes.values()) counts[n.state] = (counts[n.state] || 0) + 1;
    this.summary.textContent = Object.keys(counts).length
      ? Object.entries(counts).map(([s, c]) => `${c} ${s}`).join(' · ')
      : 'No nodes yet: one is provisioned when a task runs, then kept warm for the next.';
    syncChildren(this.list, nodes, {
      key: (n) => n.id,
      version: (n) => {
        const claim = this.claim(n);
        return `${n.updatedAt}|${n.state}|${claim?.text}|${claim?.href}`;
      },
      render: (n) => this.row(n),
    });
  }

  /**
   * What holds a node: a task that runs on it, a task that ended without finishing (its
   * stopped workspace is kept for inspection), or a chat without a task; null when unclaimed.
   */
  claim(n) {
    if (!n.claimedBy) return null;
    const base = `#/p/${this.state.project.id}/s/`;
    const task = this.state.tasks.get(n.claimedBy);
    if (task) {
      const running = ['queued', 'delegated', 'in_progress'].includes(task.status);
      return {
        href: task.sessionId ? base + task.sessionId : null,
        text: running ? `running: ${task.title}` : `workspace kept (${task.status.replace('_', ' ')}): ${task.title}`,
      };
    }
    const chat = this.state.sessions.get(n.claimedBy);
    if (chat) return { href: base + chat.id, text: `chat: ${chat.topic || 'Untitled chat'}` };
    return { href: null, text: `claimed by ${shortId(n.claimedBy)}` };
  }

  row(n) {
    const claim = this.claim(n);
    const warm = n.state === 'warm' && n.warmUntil;
    let bar = null;
    if (warm) {
      // The share of the warm period left, from when the node was released (its last update).
      const total = Date.parse(n.warmUntil) - Date.parse(n.updatedAt);
      const left = Date.parse(n.warmUntil) - Date.now();
      bar = h('span', { class: 'warm-bar', 'aria-hidden': 'true' },
        h('span', { class: 'warm-fill', dataset: { from: n.updatedAt, until: n.warmUntil } }));
      bar.firstChild.style.width = `${Math.max(0, Math.min(100, total > 0 ? (100 * left) / total : 0))}%`;
    }
    return h('article', { class: `node-row state-${n.state}`, dataset: { nodeId: n.id, state: n.state } },
      h('div', { class: 'node-main' },
        h('span', { class: `dot state-${n.state}` }),
        h('code', { class: 'node-id', text: shortId(n.id), title: n.id }),
        h('span', { class: `badge node-${n.state}`, text: n.state })),
      h('span', { class: 'chip node-size', text: n.size }),
      h('div', { class: 'node-facts' },
        h('span', { class: 'muted', text: n.provider + (n.location ? ` · ${n.location}` : '') }),
        claim?.href ? h('a', { class: 'node-claim', href: claim.href, text: claim.text })
          : claim ? h('span', { class: 'node-claim muted', text: claim.text }) : null,
        n.lastHeartbeatAt ? h('span', { class: 'muted' }, 'heartbeat ', timeAgo(n.lastHeartbeatAt)) : null,
        n.errorMessage ? h('span', { class: 'node-error', text: n.errorMessage }) : null),
      h('div', { class: 'node-warm' },
        warm ? [h('span', { class: 'warm' }, 'warm for ', countdownEl(n.warmUntil)), bar]
          : h('span', { class: 'muted', text: n.state === 'active' ? 'in use' : '' })));
  }

}
