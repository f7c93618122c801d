// Kiln's web UI: routing (by URL hash), the top bar, the theme, and global keys.
//
// Routes: #/ projects · #/new · #/p/:id (chat, latest session) · #/p/:id/s/:session ·
// #/p/:id/board · #/p/:id/nodes · #/p/:id/edit · #/account · #/signin

import { api, onUnauthorized, signOut } from './api.js';
import { h, icon, navigate, replace } from './dom.js';
import { ProjectPage } from './project.js';
import { projectForm, projectsPage } from './projects.js';
import { accountPage } from './account.js';
import { signInPage } from './signin.js';

const app = document.getElementById('app');
let me = null;
let projectPage = null;

// ---- theme: the system's by default, or the one the user picked -------------------------
const THEME_KEY = 'kiln.theme';
function applyTheme() {
  const chosen = localStorage.getItem(THEME_KEY);
  if (chosen) document.documentElement.dataset.theme = chosen;
  else delete document.documentElement.dataset.theme;
}
function currentTheme() {
  return document.documentElement.dataset.theme
    || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light');
}
function toggleTheme() {
  localStorage.setItem(THEME_KEY, currentTheme() === 'dark' ? 'light' : 'dark');
  applyTheme();
  renderTopbar();
}
applyTheme();

// ---- top bar --------------------------------------------------------------------------
const topbar = h('header', { class: 'topbar' });
const content = h('div', { class: 'content' });
replace(app, topbar, content);

function renderTopbar() {
  const dark = currentTheme() === 'dark';
  replace(topbar,
    h('a', { class: 'brand', href: '#/' }, h('img', { src: '/assets/favicon.svg', alt: '', width: 22, height: 22 }), h('span', { text: 'Kiln' })),
    h('div', { class: 'topbar-slot' }, projectPage?.bar || null),
    h('div', { class: 'topbar-end' },
      h('button', {
        class: 'icon-btn', type: 'button', dataset: { action: 'toggle-theme' },
        'aria-label': dark ? 'Switch to light theme' : 'Switch to dark theme', title: 'Theme (t)',
        on: { click: toggleTheme },
      }, icon(dark ? 'sun' : 'moon')),
      me ? h('a', {
        class: 'account-link', href: '#/account', title: `Account: signed in as ${me.name}`, 'aria-label': `Account (${me.name})`,
        'aria-current': parse(location.hash).name === 'account' ? 'page' : undefined,
      }, icon('user'), h('span', { class: 'user', text: me.name })) : null,
      me ? h('button', {
        class: 'btn ghost small', type: 'button', text: 'Sign out',
        on: { click: async () => { await signOut(); me = null; navigate('#/signin'); } },
      }) : null));
}

// ---- routing --------------------------------------------------------------------------
function parse(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  if (parts[0] === 'signin') return { name: 'signin' };
  if (parts[0] === 'new') return { name: 'new-project' };
  if (parts[0] === 'account') return { name: 'account' };
  if (parts[0] === 'p' && parts[1]) {
    const id = parts[1];
    if (parts[2] === 'edit') return { name: 'edit-project', id };
    if (parts[2] === 'board' || parts[2] === 'nodes') return { name: 'project', id, view: parts[2] };
    if (parts[2] === 's' && parts[3]) return { name: 'project', id, view: 'chat', session: parts[3] };
    return { name: 'project', id, view: 'chat' };
  }
  return { name: 'projects' };
}

function closeProject() {
  projectPage?.close();
  projectPage = null;
  document.body.classList.remove('in-project');
}

let routing = 0;
async function route() {
  const ticket = ++routing;
  const r = parse(location.hash);
  // Who is signed in, asked alongside the page's own data (a 401 anywhere leads to sign-in).
  const who = !me && r.name !== 'signin' ? api.me().then((u) => { me = u; renderTopbar(); }) : null;
  if (who && r.name !== 'project') {
    try { await who; } catch { navigate('#/signin'); return; }
  }
  try {
    if (r.name === 'signin') {
      closeProject();
      me = null;
      renderTopbar();
      replace(content, signInPage((user) => { me = user; navigate('#/'); }));
      return;
    }
    if (r.name === 'project') {
      if (projectPage?.state.project.id !== r.id) {
        closeProject();
        replace(content, h('div', { class: 'loading', text: 'Loading project…' }));
        const [page] = await Promise.all([ProjectPage.open(r.id, r.session), who]);
        if (ticket !== routing) { page.close(); return; }
        projectPage = page;
        document.body.classList.add('in-project');
        replace(content, page.el);
        renderTopbar();
      }
      await projectPage.show(r.view, r.session);
      document.title = `${projectPage.state.project.name} · Kiln`;
      return;
    }
    closeProject();
    renderTopbar();
    const page = r.name === 'new-project' ? await projectForm()
      : r.name === 'edit-project' ? await projectForm(r.id)
        : r.name === 'account' ? await accountPage(me)
          : await projectsPage();
    if (ticket !== routing) return;
    replace(content, page);
    document.title = r.name === 'account' ? 'Account · Kiln' : 'Kiln';
  } catch (err) {
    if (ticket !== routing || err.status === 401) return;
    closeProject();
    renderTopbar();
    replace(content, h('main', { class: 'page narrow-page' },
      h('div', { class: 'empty' },
        h('h2', { text: err.status === 404 ? 'Not found' : 'Something went wrong' }),
        h('p', { text: err.message }),
        h('a', { class: 'btn', href: '#/', text: 'Back to projects' }))));
  }
}

onUnauthorized(() => { me = null; if (parse(location.hash).name !== 'signin') navigate('#/signin'); });
window.addEventListener('hashchange', route);
window.addEventListener('kiln:navigate', route);
// In-app links switch at once (no wait for the browser's hashchange).
document.addEventListener('click', (e) => {
  if (e.defaultPrevented || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return;
  const a = e.target.closest?.('a[href^="#/"]');
  if (!a || a.target) return;
  e.preventDefault();
  navigate(a.getAttribute('href'));
});

// ---- keys -----------------------------------------------------------------------------
document.addEventListener('keydown', (e) => {
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t.closest?.('input, textarea, select, [contenteditable], dialog')) {
    if (e.key === 'Escape' && t.blur && !t.closest('dialog')) t.blur();
    return;
  }
  if (e.key === 't') { toggleTheme(); e.preventDefault(); return; }
  if (e.key === '?') { showKeys(); e.preventDefault(); return; }
  if (projectPage && projectPage.key(e)) e.preventDefault();
});

function showKeys() {
  const rows = [['c', 'Chat view'], ['b', 'Board view'], ['n', 'Nodes panel'], ['j / k', 'Next / previous session'],
    ['/', 'Write a task'], ['Ctrl+Enter', 'Run Now'], ['t', 'Light / dark theme'], ['Esc', 'Leave a text box'], ['?', 'This help']];
  const dialog = h('dialog', { class: 'dialog keys', 'aria-label': 'Keyboard shortcuts' },
    h('h2', { text: 'Keyboard' }),
    h('dl', {}, rows.map(([k, v]) => [h('dt', {}, h('kbd', { text: k })), h('dd', { text: v })])),
    h('form', { method: 'dialog', class: 'dialog-actions' }, h('button', { class: 'btn', text: 'Close' })));
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
}

renderTopbar();
route();
