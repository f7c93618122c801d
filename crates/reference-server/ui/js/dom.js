// Tiny DOM helpers. Untrusted text only ever reaches the page through textContent and
// attribute setters: nothing here (or anywhere in the UI) assigns innerHTML.

/**
 * Creates an element. `props`: `class`, `text`, `dataset`, `on` (event map), `attrs`,
 * and any other key is set as a property (e.g. `type`, `value`, `hidden`, `disabled`).
 * Children may be nodes, strings (as text), arrays, or null/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'on') for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (key === 'attrs') for (const [a, v] of Object.entries(value)) { if (v !== null && v !== undefined && v !== false) el.setAttribute(a, v === true ? '' : String(v)); }
    else if (key.startsWith('aria-') || key === 'role' || key === 'for' || key === 'tabindex') el.setAttribute(key, String(value));
    else el[key] = value;
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An inline SVG icon from the sprite-free set below (paths are static, never user text). */
const ICONS = {
  chat: 'M4 5h16v10H8l-4 4z',
  board: 'M4 4h4v16H4zM10 4h4v10h-4zM16 4h4v13h-4z',
  nodes: 'M4 5h16v5H4zM4 14h16v5H4zM7 7.5h.01M7 16.5h.01',
  sun: 'M12 7a5 5 0 100 10 5 5 0 000-10zM12 1v3M12 20v3M4.2 4.2l2.1 2.1M17.7 17.7l2.1 2.1M1 12h3M20 12h3M4.2 19.8l2.1-2.1M17.7 6.3l2.1-2.1',
  moon: 'M21 12.8A9 9 0 1111.2 3a7 7 0 009.8 9.8z',
  chevron: 'M6 9l6 6 6-6',
  plus: 'M12 5v14M5 12h14',
  gear: 'M12 15a3 3 0 100-6 3 3 0 000 6zM19.4 15a1.7 1.7 0 00.3 1.8l.1.1a2 2 0 11-2.8 2.8l-.1-.1a1.7 1.7 0 00-1.8-.3 1.7 1.7 0 00-1 1.5V21a2 2 0 11-4 0v-.1a1.7 1.7 0 00-1.1-1.5 1.7 1.7 0 00-1.8.3l-.1.1a2 2 0 11-2.8-2.8l.1-.1a1.7 1.7 0 00.3-1.8 1.7 1.7 0 00-1.5-1H3a2 2 0 110-4h.1a1.7 1.7 0 001.5-1.1 1.7 1.7 0 00-.3-1.8l-.1-.1a2 2 0 112.8-2.8l.1.1a1.7 1.7 0 001.8.3H9a1.7 1.7 0 001-1.5V3a2 2 0 114 0v.1a1.7 1.7 0 001 1.5 1.7 1.7 0 001.8-.3l.1-.1a2 2 0 112.8 2.8l-.1.1a1.7 1.7 0 00-.3 1.8V9a1.7 1.7 0 001.5 1H21a2 2 0 110 4h-.1a1.7 1.7 0 00-1.5 1z',
  tool: 'M14.7 6.3a4 4 0 00-5.4 5.4L3 18l3 3 6.3-6.3a4 4 0 005.4-5.4l-2.5 2.5-2.4-.6-.6-2.4z',
  box: 'M21 8l-9-5-9 5v8l9 5 9-5zM3 8l9 5 9-5M12 13v8',
  branch: 'M6 3v12M18 9a3 3 0 100-6 3 3 0 000 6zM6 21a3 3 0 100-6 3 3 0 000 6zM18 9a9 9 0 01-9 9',
  link: 'M10 13a5 5 0 007.5.5l3-3a5 5 0 00-7-7l-1.7 1.7M14 11a5 5 0 00-7.5-.5l-3 3a5 5 0 007 7l1.7-1.7',
  x: 'M18 6L6 18M6 6l12 12',
  arrowDown: 'M12 5v14M5 12l7 7 7-7',
  menu: 'M3 6h18M3 12h18M3 18h18',
  play: 'M6 4l14 8-14 8z',
  edit: 'M12 20h9M16.5 3.5a2.1 2.1 0 013 3L7 19l-4 1 1-4z',
  terminal: 'M4 17l6-6-6-6M12 19h8',
  user: 'M20 21v-2a4 4 0 00-4-4H8a4 4 0 00-4 4v2M12 11a4 4 0 100-8 4 4 0 000 8z',
};

export function icon(name, label) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', `icon icon-${name}`);
  if (label) { svg.setAttribute('role', 'img'); svg.setAttribute('aria-label', label); }
  else svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', ICONS[name] || '');
  svg.append(path);
  return svg;
}

/**
 * Keeps `container`'s children in the order of `items`, reusing the element of each key and
 * re-rendering it only when its version changed. Returns the number of new elements.
 */
export function syncChildren(container, items, { key, version, render }) {
  const old = container._keyed || new Map();
  const next = new Map();
  let added = 0;
  items.forEach((item, i) => {
    const k = key(item);
    const v = version(item);
    let entry = old.get(k);
    if (!entry || entry.v !== v) {
      const el = render(item);
      el.dataset.key = k;
      if (entry) entry.el.replaceWith(el); else added++;
      entry = { el, v };
    }
    next.set(k, entry);
    const at = container.children[i];
    if (at !== entry.el) container.insertBefore(entry.el, at || null);
  });
  for (const [k, entry] of old) if (!next.has(k)) entry.el.remove();
  container._keyed = next;
  return added;
}

/** The status badge of a task (queued/delegated/in_progress spin). */
export function statusBadge(status) {
  const busy = status === 'queued' || status === 'delegated' || status === 'in_progress';
  return h('span', { class: `badge status-${status}`, dataset: { status } },
    busy ? h('span', { class: 'spinner', 'aria-hidden': 'true' }) : null,
    status.replace('_', ' '));
}

export function shortId(id) { return String(id).slice(-8); }

/**
 * Goes to an in-app address (`#/…`) at once: the history entry is pushed and the router runs
 * synchronously (a `location.hash` change would wait for the browser's hashchange task).
 */
export function navigate(hash, { replace: replaceEntry = false } = {}) {
  if (location.hash === hash) return;
  if (replaceEntry) history.replaceState(null, '', hash); else history.pushState(null, '', hash);
  window.dispatchEvent(new Event('kiln:navigate'));
}

/** A modal yes/no question; resolves true when confirmed (Esc or Cancel: false). */
export function confirmDialog(title, question, action) {
  return new Promise((resolve) => {
    let confirmed = false;
    const ok = h('button', { type: 'submit', class: 'btn primary danger', text: action, dataset: { action: 'confirm' } });
    const dialog = h('dialog', { class: 'dialog confirm', 'aria-label': title },
      h('form', { method: 'dialog', on: { submit: (e) => { e.preventDefault(); confirmed = true; dialog.close(); } } },
        h('h2', { text: title }),
        h('p', { text: question }),
        h('div', { class: 'dialog-actions' },
          h('button', { type: 'button', class: 'btn ghost', text: 'Cancel', dataset: { action: 'cancel' }, on: { click: () => dialog.close() } }),
          ok)));
    dialog.addEventListener('close', () => { dialog.remove(); resolve(confirmed); });
    document.body.append(dialog);
    dialog.showModal();
    ok.focus();
  });
}
