// Rendering of a session's messages: user and assistant bubbles (Markdown), thoughts and
// plans, notices, tool calls as compact cards (consecutive updates of one call merge into
// one card showing its latest status), and the text an agent is streaming right now.

import { h, icon } from './dom.js';
import { renderMarkdown } from './markdown.js';
import { clock } from './time.js';

const ROLE_LABEL = { user: 'You', assistant: 'Agent', system: 'Kiln', tool: 'Tool' };

/** Groups stored messages and deltas into render items, each with a stable key. */
export function renderItems(messages, deltas) {
  const items = [];
  for (const m of messages) {
    const prev = items[items.length - 1];
    if (m.role === 'tool' && prev?.kind === 'tool' && sameCall(prev.messages[prev.messages.length - 1], m)) {
      prev.messages.push(m);
      prev.version += `|${m.id}`;
      continue;
    }
    if (m.role === 'tool') items.push({ kind: 'tool', key: m.id, messages: [m], version: m.id });
    else items.push({ kind: 'message', key: m.id, message: m, version: `${m.content.length}:${m.content.slice(-24)}` });
  }
  for (const d of deltas) {
    items.push({ kind: 'delta', key: d.segmentId, delta: d, version: `delta:${d.textSoFar.length}` });
  }
  return items;
}

function sameCall(a, b) {
  return a.tool && b.tool && a.tool.tool === b.tool.tool && (a.tool.target || '') === (b.tool.target || '');
}

export function renderItem(item) {
  if (item.kind === 'tool') return toolCard(item.messages);
  if (item.kind === 'delta') return streaming(item.delta);
  return message(item.message);
}

function meta(role, iso) {
  return h('div', { class: 'msg-meta' },
    h('span', { class: 'msg-role', text: ROLE_LABEL[role] || role }),
    iso ? h('time', { dateTime: iso, title: new Date(iso).toLocaleString(), text: clock(iso) }) : null);
}

function message(m) {
  const data = { role: m.role, messageId: m.id, cursor: String(m.cursor) };
  const kind = m.tool?.tool;
  if (m.role === 'system' && kind === 'thought') {
    return h('div', { class: 'msg thought', dataset: data },
      h('details', {}, h('summary', {}, h('span', { text: 'Thought' }), h('span', { class: 'muted', text: ` · ${firstLine(m.content)}` })),
        h('div', { class: 'md' }, renderMarkdown(m.content))));
  }
  if (m.role === 'system' && kind === 'plan') return plan(m, data);
  if (m.role === 'system') {
    return h('div', { class: 'msg notice', dataset: data }, h('div', { class: 'md' }, renderMarkdown(m.content)),
      h('time', { dateTime: m.createdAt, text: clock(m.createdAt) }));
  }
  return h('article', { class: `msg ${m.role}`, dataset: data },
    meta(m.role, m.createdAt),
    h('div', { class: 'msg-body md' }, renderMarkdown(m.content)));
}

function streaming(d) {
  const body = h('div', { class: 'msg-body md' }, renderMarkdown(d.textSoFar));
  // The caret goes at the end of the text, inside its last paragraph, item or code block.
  let tail = body;
  while (tail.lastElementChild && !tail.lastElementChild.matches('br, .code-bar')) {
    tail = tail.lastElementChild.matches('.code') ? tail.lastElementChild.querySelector('code') : tail.lastElementChild;
  }
  tail.append(h('span', { class: 'caret', 'aria-hidden': 'true' }));
  return h('article', { class: 'msg assistant streaming', dataset: { role: 'assistant', segmentId: d.segmentId }, 'aria-busy': 'true' },
    h('div', { class: 'msg-meta' }, h('span', { class: 'msg-role', text: 'Agent' }), h('span', { class: 'typing', text: 'writing…' })),
    body);
}

function plan(m, data) {
  const lines = m.content.split('\n').filter((l) => l.trim() && !/^plan:?$/i.test(l.trim()));
  return h('div', { class: 'msg plan', dataset: data },
    h('div', { class: 'plan-title' }, h('span', { text: 'Plan' }), h('time', { dateTime: m.createdAt, text: clock(m.createdAt) })),
    h('ul', {}, lines.map((line) => {
      const mark = line.match(/^\s*(?:[-*]\s*)?\[([ xX~])\]\s*(.*)$/);
      const state = !mark ? 'todo' : mark[1] === ' ' ? 'todo' : mark[1] === '~' ? 'doing' : 'done';
      return h('li', { class: `check check-${state}`, text: mark ? mark[2] : line.trim() });
    })));
}

function toolCard(messages) {
  const last = messages[messages.length - 1];
  const status = (last.tool?.status || 'pending').toLowerCase();
  const name = last.tool?.tool || 'tool';
  const target = last.tool?.target;
  const contents = messages.map((m) => m.content).filter((c, i, all) => c.trim() && all.indexOf(c) === i);
  return h('div', { class: `msg tool-card tool-${status}`, dataset: { role: 'tool', messageId: messages[0].id, toolStatus: status } },
    h('details', {},
      h('summary', {},
        icon('tool'),
        h('span', { class: 'tool-name', text: name }),
        target ? h('code', { class: 'tool-target', text: target, title: target }) : null,
        h('span', { class: `tool-status ${status}`, text: status.replace('_', ' ') }),
        h('time', { dateTime: last.createdAt, text: clock(last.createdAt) })),
      h('div', { class: 'tool-output' }, contents.map((c) => h('pre', { text: c })))));
}

function firstLine(text) {
  const line = text.trim().split('\n')[0];
  return line.length > 90 ? `${line.slice(0, 90)}…` : line;
}

/** A one-line summary of a message for compact feeds (the workspace panel). */
export function oneLine(m) {
  if (m.role === 'tool') return `${m.tool?.tool || 'tool'} ${m.tool?.target || ''} · ${m.tool?.status || ''}`.trim();
  if (m.tool?.tool === 'plan') {
    const doing = m.content.split('\n').find((l) => l.includes('[~]'));
    return `Plan: ${doing ? doing.replace(/^.*\[~\]\s*/, '') : `${m.content.split('\n').length - 1} steps`}`;
  }
  if (m.tool?.tool === 'thought') return `Thought: ${firstLine(m.content)}`;
  return `${ROLE_LABEL[m.role] || m.role}: ${firstLine(m.content)}`;
}
