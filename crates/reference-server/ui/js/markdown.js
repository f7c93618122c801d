// A small, safe Markdown renderer for agent text: it builds DOM nodes directly, so the text
// can never become markup. Supports fenced code blocks, headings, lists, block quotes,
// horizontal rules, paragraphs, and inline code, bold, italics and http(s) links.

import { h } from './dom.js';

/** Renders `text` into a DocumentFragment. */
export function renderMarkdown(text) {
  const frag = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, '\n').split('\n');
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+#.-]*)/);
    if (fence) {
      const close = fence[1];
      const body = [];
      i++;
      while (i < lines.length && !lines[i].trimStart().startsWith(close)) body.push(lines[i++]);
      i++; // the closing fence (or the end of an unfinished, still-streaming block)
      frag.append(codeBlock(body.join('\n'), fence[2]));
      continue;
    }
    if (!line.trim()) { i++; continue; }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      const level = Math.min(6, heading[1].length + 2); // h3..h6: inside a message
      frag.append(h(`h${Math.min(level, 6)}`, {}, inline(heading[2])));
      i++;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) { frag.append(h('hr')); i++; continue; }
    if (/^\s*>/.test(line)) {
      const body = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) body.push(lines[i++].replace(/^\s*>\s?/, ''));
      frag.append(h('blockquote', {}, renderMarkdown(body.join('\n'))));
      continue;
    }
    const bullet = /^\s*(?:[-*+]|\d+[.)])\s+/;
    if (bullet.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = h(ordered ? 'ol' : 'ul');
      while (i < lines.length && bullet.test(lines[i])) {
        let item = lines[i++].replace(bullet, '');
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !bullet.test(lines[i])) item += ' ' + lines[i++].trim();
        const task = item.match(/^\[([ xX~])\]\s+(.*)$/);
        list.append(task
          ? h('li', { class: `check check-${task[1] === ' ' ? 'todo' : task[1] === '~' ? 'doing' : 'done'}` }, inline(task[2]))
          : h('li', {}, inline(item)));
      }
      frag.append(list);
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() && !/^\s*(```|~~~|#{1,6}\s|>)/.test(lines[i]) && !bullet.test(lines[i])) para.push(lines[i++]);
    const p = h('p');
    para.forEach((l, n) => { if (n) p.append(h('br')); p.append(inline(l)); });
    frag.append(p);
  }
  return frag;
}

function codeBlock(code, lang) {
  const copy = h('button', { class: 'copy', type: 'button', text: 'Copy', 'aria-label': 'Copy code' });
  copy.addEventListener('click', async () => {
    try { await navigator.clipboard.writeText(code); copy.textContent = 'Copied'; } catch { copy.textContent = 'Select & copy'; }
    setTimeout(() => { copy.textContent = 'Copy'; }, 1500);
  });
  return h('div', { class: 'code' },
    h('div', { class: 'code-bar' }, h('span', { text: lang || 'text' }), copy),
    h('pre', {}, h('code', { text: code })));
}

const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*]+)\*\*|(?<!\w)__([^_]+)__(?!\w)|\*([^*\s][^*]*)\*|(?<!\w)_([^_\s][^_]*)_(?!\w)|\[([^\]]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/g;

/** Inline spans of one line, as a fragment. */
export function inline(text) {
  const frag = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) frag.append(text.slice(last, m.index));
    if (m[1]) frag.append(h('code', { text: m[2].trim() === '' ? m[2] : m[2].replace(/^ (.*) $/, '$1') }));
    else if (m[3] || m[4]) frag.append(h('strong', {}, inline(m[3] || m[4])));
    else if (m[5] || m[6]) frag.append(h('em', {}, inline(m[5] || m[6])));
    else if (m[7]) frag.append(link(m[8], m[7]));
    else if (m[9]) frag.append(link(m[9], m[9]));
    last = m.index + m[0].length;
  }
  if (last < text.length) frag.append(text.slice(last));
  return frag;
}

function link(href, label) {
  let url;
  try { url = new URL(href, location.href); } catch { return document.createTextNode(label); }
  if (!['http:', 'https:', 'mailto:'].includes(url.protocol)) return document.createTextNode(label);
  return h('a', { href: url.href, target: '_blank', rel: 'noopener noreferrer', text: label });
}
